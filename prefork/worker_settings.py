"""The plain settings a worker runs with, derived once from the configuration.

Strategy: the master turns a ``Config`` into these frozen values before it
forks a worker (and again after every HUP), so that the worker and its
connections read plain values and never the configuration object.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefork.config import Config
from prefork.settings import ConnectionSettings
from prefork.wsconn import UpgradeSettings, WsSettings


@dataclass(frozen=True, slots=True)
class WorkerSettings:
    """What a worker needs beyond the per-connection settings."""

    connection: ConnectionSettings
    app: str = ""
    threads: int = 4
    max_connections: int = 1000
    max_requests: int = 0
    max_requests_jitter: int = 0
    max_worker_memory: int = 0
    handler_timeout: float = 0.0
    graceful_timeout: float = 30.0
    websocket: UpgradeSettings | None = None
    uploads_dir: str = "uploads"
    status_path: bytes = b""
    status_allow: tuple[str, ...] = ("127.0.0.1", "::1")
    reload: bool = False  # --reload: see prefork.reloader


def worker_settings(cfg: Config) -> WorkerSettings:
    """Derive the plain settings a worker runs with from the configuration."""
    limits = cfg.limits
    connection = ConnectionSettings(
        http_limits=limits.http_limits(),
        header_timeout=limits.header_timeout,
        keepalive_timeout=limits.keepalive_timeout,
        send_timeout=limits.send_timeout,
        body_min_rate=limits.body_min_rate,
        body_rate_window=limits.body_rate_window,
        staging_dir=cfg.staging.dir or None,
        memory_threshold=cfg.staging.memory_threshold,
        min_free_disk=cfg.staging.min_free_disk,
        max_file_size=cfg.uploads.max_file_size or None,
        checksum=cfg.uploads.checksum == "sha256",
    )
    ws = cfg.websocket
    websocket = UpgradeSettings(
        limits=ws.ws_limits(),
        session=WsSettings(ping_interval=ws.ping_interval, ping_timeout=ws.ping_timeout,
                           close_timeout=ws.close_timeout, send_buffer=ws.send_buffer,
                           message_timeout=ws.message_timeout),
        compression=ws.compression,
        allowed_origins=ws.allowed_origins,
        inflate_budget=ws.inflate_budget,
    )
    return WorkerSettings(connection=connection, app=cfg.server.app, threads=cfg.server.threads,
                          max_connections=cfg.server.max_connections,
                          max_requests=cfg.process.max_requests,
                          max_requests_jitter=cfg.process.max_requests_jitter,
                          max_worker_memory=cfg.process.max_worker_memory,
                          handler_timeout=cfg.process.handler_timeout,
                          graceful_timeout=cfg.process.graceful_timeout,
                          websocket=websocket, uploads_dir=cfg.uploads.dir,
                          status_path=cfg.status.path.encode("latin-1"), status_allow=cfg.status.allow,
                          reload=cfg.server.reload)
