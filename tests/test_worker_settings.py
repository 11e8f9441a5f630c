"""Settings are defined once: the config schema holds the defaults, one translation fills the rest.

``prefork.worker.settings`` turns a validated ``Config`` into the plain settings
objects the worker, its connections and the protocol code read. These tests keep
a second set of defaults from creeping back (every default a settings class still
has must be what the schema gives) and keep the translation complete (every key
the worker runs with reaches its field, every field comes from a key).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterator
from pathlib import Path

from prefork.config.config import Config, LimitsConfig, WebSocketConfig, load_config
from prefork.protocol.forwarded import HeaderSource, TrustedProxies
from prefork.protocol.limits import GiB, KiB, MiB, FormLimits, HttpLimits, WsLimits
from prefork.config.settings import BroadcastSettings, ConnectionSettings, ResumableSettings
from prefork.worker.settings import (
    WorkerSettings,
    form_limits,
    http_limits,
    worker_settings,
    ws_limits,
)
from prefork.worker.wsconn import UpgradeSettings, WsSettings

SETTINGS_CLASSES = {WorkerSettings, ConnectionSettings, HttpLimits, FormLimits, UpgradeSettings, WsSettings,
                    WsLimits, TrustedProxies, ResumableSettings, BroadcastSettings}

# Keys the master, the CLI or the logging setup read, not the worker's settings.
NOT_WORKER_SETTINGS = {
    ("server", "bind"), ("server", "workers"), ("server", "backlog"), ("server", "user"), ("server", "group"),
    ("server", "pidfile"), ("server", "umask"), ("server", "socket_mode"), ("server", "socket_owner"),
    ("staging", "memory_budget"), ("process", "timeout"),
    ("logging", "access_log"), ("logging", "error_log"), ("logging", "level"),
    # The master builds the TLS context from these; workers inherit the context, not the keys.
    ("tls", "certfile"), ("tls", "keyfile"), ("tls", "password_file"), ("tls", "ca_certs"),
    ("tls", "verify_client"), ("tls", "min_version"), ("tls", "ciphers"), ("tls", "sni"),
    ("proxy", "proxy_protocol"),  # which listeners: the master passes their descriptors
}

# (section, key, INI text) -> {settings field path: value it must give}; every value differs
# from the default, so the test sees the key arrive rather than the default stay.
REACHES: list[tuple[str, str, str, dict[str, object]]] = [
    ("server", "app", "tests.apps.echo:app", {"app": "tests.apps.echo:app"}),
    ("server", "threads", "7", {"threads": 7}),
    ("server", "max_connections", "33", {"max_connections": 33}),
    ("server", "reload", "on", {"reload": True}),
    ("limits", "max_request_line", "4000", {"connection.http_limits.max_request_line": 4000}),
    ("limits", "max_header_bytes", "20KiB", {"connection.http_limits.max_header_bytes": 20 * KiB}),
    ("limits", "max_header_count", "12", {"connection.http_limits.max_header_count": 12}),
    ("limits", "max_body_size", "3GiB", {"connection.http_limits.max_body_size": 3 * GiB}),
    ("limits", "max_chunk_line", "100", {"connection.http_limits.max_chunk_line": 100}),
    ("limits", "max_trailer_bytes", "2KiB", {"connection.http_limits.max_trailer_bytes": 2 * KiB}),
    ("limits", "max_parts", "9", {"connection.form_limits.max_parts": 9}),
    ("limits", "max_part_header_bytes", "1KiB", {"connection.form_limits.max_part_header_bytes": KiB}),
    ("limits", "max_field_size", "3KiB", {"connection.form_limits.max_field_size": 3 * KiB}),
    ("limits", "max_fields_total", "5KiB", {"connection.form_limits.max_fields_total": 5 * KiB}),
    ("limits", "header_timeout", "3s", {"connection.header_timeout": 3.0}),
    ("limits", "body_min_rate", "10", {"connection.body_min_rate": 10}),
    ("limits", "body_rate_window", "7s", {"connection.body_rate_window": 7.0}),
    ("limits", "keepalive_timeout", "9s", {"connection.keepalive_timeout": 9.0}),
    ("limits", "send_timeout", "11s", {"connection.send_timeout": 11.0}),
    ("staging", "dir", "/srv/staging", {"connection.staging_dir": "/srv/staging"}),
    ("staging", "memory_threshold", "2MiB", {"connection.memory_threshold": 2 * MiB}),
    ("staging", "min_free_disk", "5MiB", {"connection.min_free_disk": 5 * MiB}),
    ("uploads", "dir", "/srv/uploads", {"uploads_dir": "/srv/uploads", "resumable.dir": "/srv/uploads/.partial"}),
    ("uploads", "max_file_size", "4MiB", {"connection.max_file_size": 4 * MiB}),
    ("uploads", "checksum", "none", {"connection.checksum": False}),
    ("websocket", "max_message_size", "2MiB", {"websocket.limits.max_message_size": 2 * MiB,
                                               "websocket.limits.max_frame_size": 2 * MiB}),
    ("websocket", "inflate_budget", "3MiB", {"websocket.inflate_budget": 3 * MiB}),
    ("websocket", "message_timeout", "4s", {"websocket.session.message_timeout": 4.0}),
    ("websocket", "ping_interval", "5s", {"websocket.session.ping_interval": 5.0}),
    ("websocket", "ping_timeout", "6s", {"websocket.session.ping_timeout": 6.0}),
    ("websocket", "close_timeout", "7s", {"websocket.session.close_timeout": 7.0}),
    ("websocket", "compression", "off", {"websocket.compression": False}),
    ("websocket", "send_buffer", "1MiB", {"websocket.session.send_buffer": MiB}),
    ("websocket", "allowed_origins", "https://a.example", {"websocket.allowed_origins": ("https://a.example",)}),
    ("process", "handler_timeout", "8s", {"handler_timeout": 8.0}),
    ("process", "graceful_timeout", "9s", {"graceful_timeout": 9.0}),
    ("process", "max_requests", "100", {"max_requests": 100}),
    ("process", "max_requests_jitter", "10", {"max_requests_jitter": 10}),
    ("process", "max_worker_memory", "1GiB", {"max_worker_memory": GiB}),
    ("status", "path", "/status", {"status_path": b"/status"}),
    ("status", "allow", "10.0.0.0/8", {"status_allow": ("10.0.0.0/8",)}),
    ("proxy", "trusted", "10.0.0.0/8, unix, *",
     {"connection.trusted_proxies.networks": (ipaddress.ip_network("10.0.0.0/8"),),
      "connection.trusted_proxies.unix": True, "connection.trusted_proxies.everyone": True}),
    ("proxy", "headers", "x-forwarded", {"connection.forwarded_headers": HeaderSource.X_FORWARDED}),
    ("tls", "hsts", "1h", {"connection.hsts_max_age": 3600}),
    ("resumable", "path", "/up", {"resumable.prefix": "/up/"}),
    ("resumable", "path", "", {"resumable.prefix": ""}),
    ("resumable", "dir", "/srv/partial", {"resumable.dir": "/srv/partial"}),
    ("resumable", "max_size", "0", {"resumable.max_size": None}),
    ("resumable", "max_partial_bytes", "5GiB", {"resumable.max_partial_bytes": 5 * GiB}),
    ("resumable", "max_uploads_per_client", "3", {"resumable.max_uploads_per_client": 3}),
    ("resumable", "expire_after", "2h", {"resumable.expire_after": 7200.0}),
    ("resumable", "checkpoint", "8MiB", {"resumable.checkpoint": 8 * MiB}),
    ("resumable", "checkpoint_interval", "0", {"resumable.checkpoint_interval": 0.0}),
    ("resumable", "instance", "app7", {"resumable.instance": "app7"}),
    ("websocket", "broadcast", "redis", {"broadcast.backend": "redis"}),
    ("websocket", "redis_url", "unix:///run/redis.sock", {"broadcast.redis_url": "unix:///run/redis.sock"}),
    ("websocket", "redis_password_file", "/etc/prefork/redis.pw", {"broadcast.redis_password_file": "/etc/prefork/redis.pw"}),
    ("websocket", "redis_prefix", "shop", {"broadcast.redis_prefix": "shop"}),
    ("websocket", "redis_queue", "1MiB", {"broadcast.redis_queue": MiB}),
    ("websocket", "redis_timeout", "5s", {"broadcast.redis_timeout": 5.0}),
    ("streaming", "paths", "/ingest, /live/", {"streaming_paths": (b"/ingest", b"/live/")}),
    ("streaming", "max_streams", "5", {"max_streams": 5}),
    ("streaming", "buffer", "256KiB", {"connection.stream_buffer": 256 * KiB}),
    # A redirect needs an HTTPS listener: with a certfile, the default bind 127.0.0.1:8000 is one.
    ("tls", "redirect_http", "on\ncertfile = /nonexistent/cert.pem", {"connection.https_redirect_port": 8000}),
]
# Fields no key sets: constants of the translation, and what the master fills in later
# (the Redis password, which it reads from redis_password_file itself: tests/test_broadcast_instances.py).
CONSTANT_FIELDS: dict[str, object] = {"broadcast.redis_password": None}


def _objects(obj: object, path: str = "") -> Iterator[tuple[str, object]]:
    """Every value in the settings tree with its dotted path, dataclasses recursed into."""
    yield path, obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for fld in dataclasses.fields(obj):
            yield from _objects(getattr(obj, fld.name), f"{path}.{fld.name}".lstrip("."))


def _leaves(settings: WorkerSettings) -> dict[str, object]:
    return {path: value for path, value in _objects(settings)
            if not (dataclasses.is_dataclass(value) and not isinstance(value, type))}


def _at(settings: WorkerSettings, path: str) -> object:
    value: object = settings
    for name in path.split("."):
        value = getattr(value, name)
    return value


def test_every_settings_default_is_the_schema_default() -> None:
    built = worker_settings(Config())
    seen = set()
    for path, obj in _objects(built):
        if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
            continue
        seen.add(type(obj))
        for fld in dataclasses.fields(obj):
            where = f"{type(obj).__name__}.{fld.name} (at {path or 'WorkerSettings'})"
            if fld.default is not dataclasses.MISSING:
                assert fld.default == getattr(obj, fld.name), where
            assert fld.default_factory is dataclasses.MISSING, where
    assert seen == SETTINGS_CLASSES


def test_parsers_built_alone_run_with_the_unconfigured_server_limits() -> None:
    # HttpLimits.max_body_size used to default to None (unlimited) while the config said 10 GiB.
    assert HttpLimits() == http_limits(LimitsConfig())
    assert HttpLimits().max_body_size == 10 * GiB
    assert FormLimits() == form_limits(LimitsConfig())
    assert WsLimits() == ws_limits(WebSocketConfig())


def test_worker_and_connection_settings_have_no_defaults() -> None:
    for cls in (WorkerSettings, ConnectionSettings):
        with_default = [fld.name for fld in dataclasses.fields(cls)
                        if fld.default is not dataclasses.MISSING or fld.default_factory is not dataclasses.MISSING]
        assert with_default == [], cls.__name__


def test_every_key_the_worker_runs_with_reaches_its_field(tmp_path: Path) -> None:
    keys = {(section, fld.name) for section in (f.name for f in dataclasses.fields(Config) if f.name != "source")
            for fld in dataclasses.fields(getattr(Config(), section))}
    assert {(section, key) for section, key, _, _ in REACHES} == keys - NOT_WORKER_SETTINGS
    default = worker_settings(Config())
    for section, key, text, expected in REACHES:
        path = tmp_path / f"{section}-{key}.ini"
        path.write_text(f"[{section}]\n{key} = {text}\n", encoding="utf-8")
        built = worker_settings(load_config(path))
        changed = {name for name, value in _leaves(built).items() if value != _at(default, name)}
        assert changed == set(expected), (section, key)
        for name, value in expected.items():
            assert _at(built, name) == value, (section, key, name)


def test_every_settings_field_comes_from_a_key_or_is_a_named_constant() -> None:
    built = worker_settings(Config())
    reached = {name for _, _, _, expected in REACHES for name in expected}
    assert set(_leaves(built)) == reached | set(CONSTANT_FIELDS)
    for name, value in CONSTANT_FIELDS.items():
        assert _at(built, name) == value


def test_keys_that_are_not_worker_settings_leave_them_alone(tmp_path: Path) -> None:
    path = tmp_path / "server.ini"
    path.write_text("[server]\nbacklog = 10\nworkers = 3\n[staging]\nmemory_budget = 512MiB\n"
                    "[process]\ntimeout = 5s\n[logging]\nlevel = error\n", encoding="utf-8")
    assert worker_settings(load_config(path)) == worker_settings(Config())
