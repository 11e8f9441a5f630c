"""The one translation from the validated configuration to the settings objects.

Strategy: the master turns a ``Config`` into these frozen values before it
forks a worker (and again after every HUP), so that the worker, its
connections and the protocol code read plain values and never the
configuration object. Every value comes from the config schema, which is the
only place defaults live: neither ``WorkerSettings`` nor ``ConnectionSettings``
has defaults of its own, and the translations below are the only code that
maps a config key to a settings field (``0 = unlimited`` becomes None here,
and only here). ``tests/test_worker_settings.py`` checks that every key the
worker runs with reaches its field and that no default disagrees.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from prefork.config.config import Config, LimitsConfig, WebSocketConfig, listener_is_tls
from prefork.process.sockets import parse_bind
from prefork.protocol.forwarded import HeaderSource, TrustedProxies
from prefork.protocol.limits import FormLimits, HttpLimits, WsLimits
from prefork.config.settings import BroadcastSettings, ConnectionSettings, ResumableSettings
from prefork.worker.wsconn import UpgradeSettings, WsSettings

@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """What a worker needs beyond the per-connection settings (see ``worker_settings``)."""

    connection: ConnectionSettings
    app: str
    threads: int
    max_connections: int
    max_requests: int
    max_requests_jitter: int
    max_worker_memory: int
    handler_timeout: float
    graceful_timeout: float
    websocket: UpgradeSettings | None
    uploads_dir: str
    status_path: bytes
    status_allow: tuple[str, ...]
    resumable: ResumableSettings
    streaming_paths: tuple[bytes, ...]  # [streaming] paths: WSGI routes whose bodies are read as they arrive
    max_streams: int
    reload: bool  # --reload: see prefork.apps.reloader
    broadcast: BroadcastSettings


def http_limits(limits: LimitsConfig) -> HttpLimits:
    """Return the limits the pure HTTP parser takes.

    Args:
        limits: the ``[limits]`` section.

    Returns:
        HttpLimits with ``max_body_size`` None when configured as 0 (unlimited).
    """
    return HttpLimits(
        max_request_line=limits.max_request_line,
        max_header_bytes=limits.max_header_bytes,
        max_header_count=limits.max_header_count,
        max_body_size=limits.max_body_size or None,
        max_chunk_line=limits.max_chunk_line,
        max_trailer_bytes=limits.max_trailer_bytes,
    )


def form_limits(limits: LimitsConfig) -> FormLimits:
    """Return the limits the multipart/form-data parser takes.

    Args:
        limits: the ``[limits]`` section.

    Returns:
        FormLimits from the four form keys.
    """
    return FormLimits(
        max_parts=limits.max_parts,
        max_part_header_bytes=limits.max_part_header_bytes,
        max_field_size=limits.max_field_size,
        max_fields_total=limits.max_fields_total,
    )


def ws_limits(ws: WebSocketConfig) -> WsLimits:
    """Return the limits the pure WebSocket code takes.

    Args:
        ws: the ``[websocket]`` section.

    Returns:
        WsLimits whose message and frame limits are both ``max_message_size``.
    """
    return WsLimits(max_message_size=ws.max_message_size, max_frame_size=ws.max_message_size)


def https_redirect_port(cfg: Config) -> int | None:
    """The port plain listeners redirect to under ``[tls] redirect_http``: the first TLS listener's."""
    if not cfg.tls.redirect_http:
        return None
    for entry in cfg.server.bind:
        if listener_is_tls(entry, cfg.tls):
            address = parse_bind(entry).address
            return address[1] if isinstance(address, tuple) else None
    return None


def connection_settings(cfg: Config) -> ConnectionSettings:
    """Derive what every HTTP connection runs with.

    Args:
        cfg: the validated configuration.

    Returns:
        The connection settings.
    """
    limits = cfg.limits
    return ConnectionSettings(
        http_limits=http_limits(limits),
        header_timeout=limits.header_timeout,
        keepalive_timeout=limits.keepalive_timeout,
        send_timeout=limits.send_timeout,
        body_min_rate=limits.body_min_rate,
        body_rate_window=limits.body_rate_window,
        staging_dir=cfg.staging.dir or None,
        memory_threshold=cfg.staging.memory_threshold,
        min_free_disk=cfg.staging.min_free_disk,
        form_limits=form_limits(limits),
        hsts_max_age=int(cfg.tls.hsts),
        https_redirect_port=https_redirect_port(cfg),
        trusted_proxies=TrustedProxies.parse(cfg.proxy.trusted),
        forwarded_headers=HeaderSource(cfg.proxy.headers),
        max_file_size=cfg.uploads.max_file_size or None,
        checksum=cfg.uploads.checksum == "sha256",
        stream_buffer=cfg.streaming.buffer,
    )


def upgrade_settings(cfg: Config) -> UpgradeSettings:
    """Derive what the WebSocket handshake and sessions run with.

    Args:
        cfg: the validated configuration.

    Returns:
        The upgrade settings, with the session settings inside.
    """
    ws = cfg.websocket
    return UpgradeSettings(
        limits=ws_limits(ws),
        session=WsSettings(ping_interval=ws.ping_interval, ping_timeout=ws.ping_timeout,
                           close_timeout=ws.close_timeout, send_buffer=ws.send_buffer,
                           message_timeout=ws.message_timeout),
        compression=ws.compression,
        allowed_origins=ws.allowed_origins,
        inflate_budget=ws.inflate_budget,
    )


def resumable_settings(cfg: Config) -> ResumableSettings:
    """Derive the resumable-upload settings (``prefix`` empty: turned off).

    The partial uploads live by default under ``[uploads] dir`` (``.partial``), on the
    filesystem uploads are saved to, so that saving a completed one is a link.
    """
    section = cfg.resumable
    prefix = section.path if not section.path or section.path.endswith("/") else section.path + "/"
    return ResumableSettings(
        prefix=prefix,
        dir=section.dir or os.path.join(cfg.uploads.dir, ".partial"),
        max_size=section.max_size or None,
        max_partial_bytes=section.max_partial_bytes or None,
        max_uploads_per_client=section.max_uploads_per_client,
        expire_after=section.expire_after,
        checkpoint=section.checkpoint,
        checkpoint_interval=section.checkpoint_interval,
        instance=section.instance,
    )


def broadcast_settings(cfg: Config) -> BroadcastSettings:
    """Derive how broadcasts travel (``[websocket] broadcast`` and its ``redis_*`` keys)."""
    ws = cfg.websocket
    return BroadcastSettings(backend=ws.broadcast, redis_url=ws.redis_url,
                             redis_password_file=ws.redis_password_file, redis_prefix=ws.redis_prefix,
                             redis_queue=ws.redis_queue, redis_timeout=ws.redis_timeout)


def worker_settings(cfg: Config) -> WorkerSettings:
    """Derive the plain settings a worker runs with from the configuration.

    Args:
        cfg: the validated configuration.

    Returns:
        The worker settings, with the connection and upgrade settings inside.
    """
    server, process = cfg.server, cfg.process
    return WorkerSettings(
        connection=connection_settings(cfg),
        app=server.app,
        threads=server.threads,
        max_connections=server.max_connections,
        max_requests=process.max_requests,
        max_requests_jitter=process.max_requests_jitter,
        max_worker_memory=process.max_worker_memory,
        handler_timeout=process.handler_timeout,
        graceful_timeout=process.graceful_timeout,
        websocket=upgrade_settings(cfg),
        uploads_dir=cfg.uploads.dir,
        status_path=cfg.status.path.encode("latin-1"),
        status_allow=cfg.status.allow,
        resumable=resumable_settings(cfg),
        streaming_paths=tuple(path.encode("latin-1") for path in cfg.streaming.paths),
        max_streams=cfg.streaming.max_streams,
        reload=server.reload,
        broadcast=broadcast_settings(cfg),
    )
