"""The plain settings a connection runs with.

Strategy: the worker derives these from the configuration once, so the
per-connection code reads a frozen dataclass of plain values and never the
config object (the same rule as for the protocol layer's limits). The fields
have no defaults: ``prefork.worker.settings.connection_settings`` is the one
place they are filled in, from the validated ``Config``, whose schema holds the
defaults; a second set here could only drift from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prefork.protocol.forwarded import HeaderSource, TrustedProxies
from prefork.protocol.limits import FormLimits, HttpLimits


@dataclass(frozen=True, slots=True)
class ResumableSettings:
    """Resumable uploads (``[resumable]``), plain values only.

    Attributes:
        prefix: the URL path the upload collection is at (e.g. ``/resumable/``); its
            resources are ``prefix + id``. Empty: resumable uploads are off.
        dir: where partial uploads live (data files and records).
        max_size: largest upload (None: no limit of its own).
        max_partial_bytes: bytes all partial uploads together may hold (None: no limit).
        max_uploads_per_client: partial uploads one client address may have open.
        expire_after: seconds a partial upload lives after its creation or last append.
        checkpoint: bytes of a long append between two durable commits.
        checkpoint_interval: seconds at least between two of those commits.
        instance: this server's name, put in front of its upload ids (so a load
            balancer can send an upload's follow-up requests back here); "" none.
    """

    prefix: str
    dir: str
    max_size: int | None
    max_partial_bytes: int | None
    max_uploads_per_client: int
    expire_after: float
    checkpoint: int
    checkpoint_interval: float
    instance: str = ""


@dataclass(frozen=True, slots=True)
class BroadcastSettings:
    """How ``app.broadcast`` reaches every worker (``[websocket] broadcast`` and ``redis_*``).

    Attributes:
        backend: "local" (the master's hub) or "redis".
        redis_url: the Redis server (redis://, rediss:// or unix://).
        redis_password_file: a file whose first line is the password; "" none.
        redis_prefix: names this deployment's channel and keys in Redis.
        redis_queue: bytes of messages a worker holds for Redis before dropping the oldest.
        redis_timeout: seconds a Redis command may take before Redis counts as lost.
        redis_password: the password the master read from ``redis_password_file``
            (so that the file may be readable by root only); None: not read.
    """

    backend: str = "local"
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_password_file: str = ""
    redis_prefix: str = "prefork"
    redis_queue: int = 32 * 1024 * 1024
    redis_timeout: float = 2.0
    redis_password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    """What a connection needs to know of the configuration (plain values only).

    Attributes:
        http_limits: the request parser's limits (``[limits]``).
        header_timeout: seconds for the request line and headers -> 408.
        keepalive_timeout: seconds an idle keep-alive connection stays open.
        send_timeout: seconds a client may accept no response bytes.
        body_min_rate: slowest body upload in bytes per second (0: no minimum).
        body_rate_window: seconds over which ``body_min_rate`` is averaged.
        staging_dir: where bodies go past ``memory_threshold`` (None: system temp).
        memory_threshold: body bytes that may stay in RAM.
        min_free_disk: bytes that must stay free in the staging directory.
        form_limits: the multipart parser's limits (``[limits]``).
        hsts_max_age: ``Strict-Transport-Security`` max-age for HTTPS responses, in
            seconds (0: no header).
        trusted_proxies: the peers whose forwarding headers are believed (``[proxy] trusted``).
        forwarded_headers: which forwarding headers they write (``[proxy] headers``).
        https_redirect_port: with ``[tls] redirect_http``, the HTTPS port that plain
            listeners redirect every request to (308); None: they serve as usual.
        max_file_size: largest uploaded file (None: only ``max_body_size``).
        checksum: SHA-256 of file parts while they arrive.
        stream_buffer: bytes of a streamed body held unread before its socket is not read.
    """

    http_limits: HttpLimits
    header_timeout: float
    keepalive_timeout: float
    send_timeout: float
    body_min_rate: int
    body_rate_window: float
    staging_dir: str | None
    memory_threshold: int
    min_free_disk: int
    form_limits: FormLimits
    hsts_max_age: int
    https_redirect_port: int | None
    trusted_proxies: TrustedProxies
    forwarded_headers: HeaderSource
    max_file_size: int | None
    checksum: bool
    stream_buffer: int
