"""The configuration's sections: one frozen dataclass per ``[section]`` of ``conf/server.ini``.

Strategy: a setting is declared in exactly one place, a field of its section's
dataclass, carrying its default and, in ``field(metadata=...)``, the
``ValueType`` that parses and prints it; ``prefork.config.config`` reads the
file and the flags through those types. A key that depends on another (a TLS
listener needs a certificate) is checked there, after every key is read.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from typing import Any

from prefork.config.values import (
    ValueType,
    bool_value,
    checked_value,
    choice_value,
    cpu_count,
    duration_value,
    int_value,
    list_value,
    parse_app,
    parse_bind,
    parse_network,
    parse_origin,
    parse_url_path,
    size_value,
    text_value,
    mode_value,
    umask_value,
)
from prefork.config.deployment_values import parse_instance_name, redis_url_value
from prefork.protocol.forwarded import TrustedProxies
from prefork.protocol.limits import GiB, FormLimits, HttpLimits, MiB, WsLimits

#: The field metadata key under which a setting's ValueType is kept.
VALUE_TYPE = "prefork.value_type"
# What ``workers = auto`` parses to until load_config resolves it (never a valid count).
AUTO_WORKERS = 0
# The protocol layer's defaults, which the parser-limit keys below take as theirs.
_HTTP, _FORM, _WS = HttpLimits(), FormLimits(), WsLimits()
#: Listener schemes a bind entry may start with; without one, a TCP bind is TLS
#: when ``[tls] certfile`` is set (gunicorn's rule), plain otherwise.
LISTEN_SCHEMES = ("http", "https")


def parse_listen(text: str) -> str:
    """Validate one ``bind`` entry: an address, optionally after ``http://`` or ``https://``.

    Args:
        text: e.g. ``127.0.0.1:8000``, ``https://[::]:8443``, ``unix:/run/prefork.sock``.

    Returns:
        The entry with a lowercase scheme (if any) and the port made explicit.

    Raises:
        ValueError: an unknown scheme, a scheme before a unix socket, or a bad address.
    """
    entry = text.strip()
    scheme, sep, address = entry.partition("://")
    if not sep:
        return parse_bind(entry)
    if scheme.lower() not in LISTEN_SCHEMES:
        raise ValueError(f"unknown scheme {scheme!r}: a bind may start with http:// or https://, "
                         "or name the address alone")
    if address.strip().startswith("unix:"):
        raise ValueError("a unix socket is always plain HTTP (the proxy in front terminates TLS); "
                         "write unix:/path without a scheme")
    return f"{scheme.lower()}://{parse_bind(address)}"


def parse_trusted_proxy(text: str) -> str:
    """Validate one ``[proxy] trusted`` entry: an IP address, a CIDR network, ``unix`` or ``*``.

    Raises:
        ValueError: anything else, or a network with host bits set (``10.0.0.1/8``).
    """
    entry = text.strip()
    try:
        TrustedProxies.parse([entry])
    except ValueError:
        raise ValueError("expected an IP address, a CIDR network like 10.0.0.0/8 (no host bits set), "
                         "unix (unix-socket peers) or * (every peer)") from None
    return entry


def parse_proxy_protocol_bind(text: str) -> str:
    """Validate one ``[proxy] proxy_protocol`` entry: a ``bind`` entry, or ``*`` for every listener."""
    entry = text.strip()
    return entry if entry == "*" else parse_listen(entry)


def parse_sni_entry(text: str) -> str:
    """Validate one ``[tls] sni`` entry: ``name certfile [keyfile]``, whitespace-separated.

    Args:
        text: e.g. ``example.org /etc/ssl/example.pem /etc/ssl/example.key``;
            the name may start with ``*.`` for one level of subdomains.

    Returns:
        The entry with single spaces.

    Raises:
        ValueError: not two or three words, or a name that is no DNS name.
    """
    words = text.split()
    if len(words) not in (2, 3):
        raise ValueError("expected 'server-name certfile [keyfile]', e.g. "
                         "'example.org /etc/ssl/example.pem /etc/ssl/example.key'")
    name = words[0].lower()
    bare = name[2:] if name.startswith("*.") else name
    if not bare or not all(label and label.replace("-", "").isalnum() for label in bare.split(".")):
        raise ValueError(f"{words[0]!r} is not a DNS name (a leading *. matches one level of subdomains)")
    return " ".join([name, *words[1:]])


def _setting(value_type: ValueType[Any], default: object = MISSING, *, factory: Any = MISSING) -> Any:
    """Declare a dataclass field together with the ValueType that reads and writes it."""
    return field(default=default, default_factory=factory, metadata={VALUE_TYPE: value_type})


@dataclass(frozen=True)
class ServerConfig:
    """``[server]``: where to listen, what to run, and how many processes and threads."""

    bind: tuple[str, ...] = _setting(list_value(parse_listen, nonempty=True), ("127.0.0.1:8000",))
    app: str = _setting(checked_value(parse_app), "")
    workers: int = _setting(int_value(1, auto=lambda: AUTO_WORKERS), factory=cpu_count)
    threads: int = _setting(int_value(0), 4)
    max_connections: int = _setting(int_value(1), 1000)
    backlog: int = _setting(int_value(1), 2048)
    user: str = _setting(text_value(), "")
    group: str = _setting(text_value(), "")
    pidfile: str = _setting(text_value(), "")
    umask: int | None = _setting(umask_value(), None)
    socket_mode: int = _setting(mode_value(), 0o666)
    socket_owner: str = _setting(text_value(), "")
    reload: bool = _setting(bool_value(), False)


@dataclass(frozen=True)
class LimitsConfig:
    """``[limits]``: HTTP and form parser limits, and per-connection timeouts.

    The parser limits take their defaults from ``HttpLimits`` and ``FormLimits``,
    where each number is written once with its precedent; ``max_body_size = 0``
    means unlimited (``HttpLimits.max_body_size = None``).
    """

    max_request_line: int = _setting(size_value(1), _HTTP.max_request_line)
    max_header_bytes: int = _setting(size_value(1), _HTTP.max_header_bytes)
    max_header_count: int = _setting(int_value(1), _HTTP.max_header_count)
    max_body_size: int = _setting(size_value(), _HTTP.max_body_size or 0)
    max_chunk_line: int = _setting(size_value(1), _HTTP.max_chunk_line)
    max_trailer_bytes: int = _setting(size_value(1), _HTTP.max_trailer_bytes)
    max_parts: int = _setting(int_value(1), _FORM.max_parts)
    max_part_header_bytes: int = _setting(size_value(1), _FORM.max_part_header_bytes)
    max_field_size: int = _setting(size_value(1), _FORM.max_field_size)
    max_fields_total: int = _setting(size_value(1), _FORM.max_fields_total)
    header_timeout: float = _setting(duration_value(), 10.0)
    body_min_rate: int = _setting(size_value(), 1024)
    body_rate_window: float = _setting(duration_value(), 30.0)
    keepalive_timeout: float = _setting(duration_value(), 5.0)
    send_timeout: float = _setting(duration_value(), 60.0)


@dataclass(frozen=True)
class StagingConfig:
    """``[staging]``: where request bodies are spooled while they arrive."""

    dir: str = _setting(text_value(), "")
    memory_threshold: int = _setting(size_value(), 1 * MiB)
    memory_budget: int = _setting(size_value(), 256 * MiB)
    min_free_disk: int = _setting(size_value(), 1 * GiB)


@dataclass(frozen=True)
class UploadsConfig:
    """``[uploads]``: where uploaded files are placed."""

    dir: str = _setting(checked_value(lambda text: nonempty(text, "expected a directory path")), "uploads")
    max_file_size: int = _setting(size_value(), 0)
    checksum: str = _setting(choice_value("sha256", "none"), "sha256")


@dataclass(frozen=True)
class WebSocketConfig:
    """``[websocket]``: message limits, keep-alive pings and broadcast backend."""

    max_message_size: int = _setting(size_value(1), _WS.max_message_size)
    inflate_budget: int = _setting(size_value(1), 64 * MiB)
    message_timeout: float = _setting(duration_value(allow_zero=True), 60.0)
    ping_interval: float = _setting(duration_value(), 20.0)
    ping_timeout: float = _setting(duration_value(), 20.0)
    close_timeout: float = _setting(duration_value(), 10.0)
    compression: bool = _setting(bool_value(), True)
    send_buffer: int = _setting(size_value(1), 16 * MiB)
    allowed_origins: tuple[str, ...] = _setting(list_value(parse_origin), ())
    broadcast: str = _setting(choice_value("local", "redis"), "local")
    redis_url: str = _setting(redis_url_value(), "redis://127.0.0.1:6379/0")
    redis_password_file: str = _setting(text_value(), "")
    redis_prefix: str = _setting(checked_value(lambda text: nonempty(text, "expected a key prefix such as prefork")),
                                 "prefork")
    redis_queue: int = _setting(size_value(64 * 1024), 32 * MiB)
    redis_timeout: float = _setting(duration_value(), 2.0)


@dataclass(frozen=True)
class ProcessConfig:
    """``[process]``: worker supervision and recycling."""

    timeout: float = _setting(duration_value(), 30.0)
    handler_timeout: float = _setting(duration_value(allow_zero=True), 60.0)
    graceful_timeout: float = _setting(duration_value(), 30.0)
    max_requests: int = _setting(int_value(0), 0)
    max_requests_jitter: int = _setting(int_value(0), 0)
    max_worker_memory: int = _setting(size_value(), 0)


@dataclass(frozen=True)
class LoggingConfig:
    """``[logging]``: log destinations and level."""

    access_log: str = _setting(text_value(), "-")
    error_log: str = _setting(text_value(), "-")
    level: str = _setting(choice_value("debug", "info", "warning", "error", "critical"), "info")


@dataclass(frozen=True)
class StatusConfig:
    """``[status]``: the built-in status page and who may see it."""

    path: str = _setting(checked_value(parse_url_path), "/server-status")
    allow: tuple[str, ...] = _setting(list_value(parse_network), ("127.0.0.1", "::1"))


@dataclass(frozen=True)
class TlsConfig:
    """``[tls]``: certificates and TLS settings for the HTTPS listeners (gunicorn's key names)."""

    certfile: str = _setting(text_value(), "")
    keyfile: str = _setting(text_value(), "")
    password_file: str = _setting(text_value(), "")
    ca_certs: str = _setting(text_value(), "")
    verify_client: str = _setting(choice_value("none", "optional", "required"), "none")
    min_version: str = _setting(choice_value("1.2", "1.3"), "1.2")
    ciphers: str = _setting(text_value(), "")
    sni: tuple[str, ...] = _setting(list_value(parse_sni_entry), ())
    hsts: float = _setting(duration_value(allow_zero=True), 0.0)
    redirect_http: bool = _setting(bool_value(), False)


@dataclass(frozen=True)
class ProxyConfig:
    """``[proxy]``: which peers' forwarding headers are believed (gunicorn's forwarded_allow_ips)."""

    trusted: tuple[str, ...] = _setting(list_value(parse_trusted_proxy), ("127.0.0.1", "::1"))
    headers: str = _setting(choice_value("auto", "forwarded", "x-forwarded"), "auto")
    proxy_protocol: tuple[str, ...] = _setting(list_value(parse_proxy_protocol_bind), ())


@dataclass(frozen=True)
class ResumableConfig:
    """``[resumable]``: resumable uploads (the IETF draft and tus 1.0) under one URL prefix."""

    path: str = _setting(checked_value(parse_url_path), "/resumable/")
    instance: str = _setting(checked_value(parse_instance_name), "")
    dir: str = _setting(text_value(), "")
    max_size: int = _setting(size_value(), 10 * GiB)
    max_partial_bytes: int = _setting(size_value(), 0)
    max_uploads_per_client: int = _setting(int_value(1), 16)
    expire_after: float = _setting(duration_value(), 24 * 3600.0)
    checkpoint: int = _setting(size_value(1 * MiB), 64 * MiB)
    checkpoint_interval: float = _setting(duration_value(allow_zero=True), 1.0)


@dataclass(frozen=True)
class StreamingConfig:
    """``[streaming]``: request bodies read by the application while they arrive."""

    paths: tuple[str, ...] = _setting(list_value(parse_url_path), ())
    max_streams: int = _setting(int_value(1), 2)
    buffer: int = _setting(size_value(64 * 1024), 1 * MiB)


@dataclass(frozen=True)
class Config:
    """The whole configuration; ``source`` is the file it came from (not compared)."""

    server: ServerConfig = field(default_factory=ServerConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    staging: StagingConfig = field(default_factory=StagingConfig)
    uploads: UploadsConfig = field(default_factory=UploadsConfig)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    process: ProcessConfig = field(default_factory=ProcessConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    status: StatusConfig = field(default_factory=StatusConfig)
    tls: TlsConfig = field(default_factory=TlsConfig)
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    resumable: ResumableConfig = field(default_factory=ResumableConfig)
    streaming: StreamingConfig = field(default_factory=StreamingConfig)
    source: str | None = field(default=None, compare=False)


SECTIONS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "limits": LimitsConfig,
    "staging": StagingConfig,
    "uploads": UploadsConfig,
    "websocket": WebSocketConfig,
    "process": ProcessConfig,
    "logging": LoggingConfig,
    "status": StatusConfig,
    "tls": TlsConfig,
    "proxy": ProxyConfig,
    "resumable": ResumableConfig,
    "streaming": StreamingConfig,
}


def nonempty(text: str, form: str) -> str:
    if not text.strip():
        raise ValueError(form)
    return text.strip()
