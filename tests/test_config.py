"""Tests for prefork.config.config and prefork.config.values.

Error messages are asserted as exact strings: they are the user interface of
--check-config, and a test that only checks "raises" would let them rot.
"""

from __future__ import annotations

import configparser
import dataclasses
import os
import random
from pathlib import Path

import pytest

from prefork.config.config import (
    Config,
    LimitsConfig,
    ServerConfig,
    WebSocketConfig,
    describe_config,
    load_config,
    parse_bool,
    parse_duration,
    parse_list,
    parse_size,
)
from prefork.config.values import (
    BIND_FORM,
    format_duration,
    format_size,
    parse_app,
    parse_bind,
    parse_network,
    parse_origin,
)
from prefork.protocol.errors import ConfigError
from prefork.protocol.limits import GiB, HttpLimits, KiB, MiB, WsLimits
from prefork.worker.settings import http_limits, ws_limits

SHIPPED = Path(__file__).resolve().parent.parent / "conf" / "server.ini"
SECTIONS = [f.name for f in dataclasses.fields(Config) if f.name != "source"]
SERVER_KEYS = ("bind, app, workers, threads, max_connections, backlog, user, group, pidfile, umask, socket_mode, "
               "socket_owner, reload")
LIMITS_KEYS = (
    "max_request_line, max_header_bytes, max_header_count, max_body_size, max_chunk_line, "
    "max_trailer_bytes, max_parts, max_part_header_bytes, max_field_size, max_fields_total, "
    "header_timeout, body_min_rate, body_rate_window, keepalive_timeout, send_timeout"
)
ALL_SECTIONS = "server, limits, staging, uploads, websocket, process, logging, status, tls, proxy, resumable, streaming"


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "server.ini"
    path.write_text(text, encoding="utf-8")
    return str(path)


def error_of(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value).replace(path, "F")


# --- defaults and the shipped file -------------------------------------------------


def test_defaults() -> None:
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.source is None
    assert cfg.server.bind == ("127.0.0.1:8000",)
    assert cfg.server.workers == (os.cpu_count() or 1)
    assert cfg.server.threads == 4
    assert cfg.limits.max_body_size == 10 * GiB
    assert cfg.limits.header_timeout == 10.0
    assert cfg.staging.dir == ""
    assert cfg.staging.memory_threshold == 1 * MiB
    assert cfg.uploads.dir == "uploads"
    assert cfg.websocket.max_message_size == 16 * MiB
    assert cfg.websocket.inflate_budget == 64 * MiB
    assert cfg.websocket.message_timeout == 60.0
    assert cfg.websocket.compression is True
    assert cfg.logging.level == "info"
    assert cfg.status.allow == ("127.0.0.1", "::1")


def test_limits_objects() -> None:
    assert http_limits(LimitsConfig()) == HttpLimits(max_body_size=10 * GiB)
    assert http_limits(LimitsConfig(max_body_size=0)).max_body_size is None
    assert ws_limits(WebSocketConfig(max_message_size=MiB)) == WsLimits(MiB, MiB)


def test_shipped_file_loads_and_equals_defaults() -> None:
    cfg = load_config(SHIPPED)
    assert cfg == Config()
    assert cfg.source == str(SHIPPED)


def test_shipped_file_lists_every_key() -> None:
    parser = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=("#", ";"))
    parser.read(SHIPPED, encoding="utf-8")
    assert parser.sections() == SECTIONS
    for name in SECTIONS:
        section_type = type(getattr(Config(), name))
        expected = [f.name for f in dataclasses.fields(section_type)]
        assert parser.options(name) == expected, name


def test_shipped_file_comments_every_key() -> None:
    lines = SHIPPED.read_text(encoding="utf-8").splitlines()
    for number, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            above = lines[number - 1]
            assert above.startswith("#") or lines[number - 2].startswith("#"), line
    text = SHIPPED.read_text(encoding="utf-8")
    assert text.count("Default:") >= sum(
        len(dataclasses.fields(getattr(Config(), name))) for name in SECTIONS
    ) - 1  # user and group share one comment


# --- value syntax ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("0", 0), ("8190", 8190), ("12B", 12), ("512KiB", 512 * KiB), ("10 MiB", 10 * MiB),
        ("2GiB", 2 * GiB), ("2G", 2 * GiB), ("1k", KiB), ("3m", 3 * MiB), ("1TiB", 1024 * GiB),
        (" 64kib ", 64 * KiB),
    ],
)
def test_parse_size(text: str, value: int) -> None:
    assert parse_size(text) == value


@pytest.mark.parametrize("text", ["", "GiB", "1.5MiB", "-1", "10 GB", "1KB", "1 mb", "1 PiB", "1e3", "٣"])
def test_parse_size_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="^expected a size like 512KiB, 10MiB, 2GiB"):
        parse_size(text)


def test_parse_size_suggests_binary_unit() -> None:
    with pytest.raises(ValueError) as info:
        parse_size("10 GB")
    assert str(info.value) == "expected a size like 512KiB, 10MiB, 2GiB; did you mean '10GiB'?"


@pytest.mark.parametrize(
    ("text", "value"),
    [("30", 30.0), ("1.5", 1.5), ("30s", 30.0), ("500ms", 0.5), ("5m", 300.0), ("1h", 3600.0),
     ("0.25 s", 0.25), (".5s", 0.5), ("2H", 7200.0)],
)
def test_parse_duration(text: str, value: float) -> None:
    assert parse_duration(text) == value


@pytest.mark.parametrize("text", ["", "s", "-1s", "1d", "nan", "inf", "1e3", "10 sec"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="^expected a duration like 500ms, 30s, 5m, 1h"):
        parse_duration(text)


@pytest.mark.parametrize(("text", "value"), [
    ("on", True), ("TRUE", True), ("yes", True), ("1", True),
    ("off", False), ("false", False), ("No", False), ("0", False),
])
def test_parse_bool(text: str, value: bool) -> None:
    assert parse_bool(text) is value


def test_parse_bool_rejects() -> None:
    with pytest.raises(ValueError, match="^expected a boolean: on/off, true/false, yes/no or 1/0$"):
        parse_bool("maybe")


def test_parse_list() -> None:
    assert parse_list("") == ()
    assert parse_list("a, b,c") == ("a", "b", "c")
    assert parse_list("\na\n  b ,c\n\n") == ("a", "b", "c")


@pytest.mark.parametrize("text", [
    "127.0.0.1:8000", "0.0.0.0:0", "localhost:8000", "example.com:65535", "[::1]:8000",
    "[::]:80", "[fe80::1%eth0]:80", "unix:/run/prefork.sock",
])
def test_parse_bind_accepts(text: str) -> None:
    assert parse_bind(text) == text


@pytest.mark.parametrize("text", [
    "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:http", ":8000", "127.0.0.1:", "[::1]:",
    "[::g]:80", "256.0.0.1:80", "1.2.3:80", "unix:relative.sock", "bad_host!:80", "-x:80",
])
def test_parse_bind_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="^" + BIND_FORM.replace("[", r"\[").replace("]", r"\]")):
        parse_bind(text)


@pytest.mark.parametrize("text, expected", [
    ("localhost", "localhost:8000"), ("127.0.0.1", "127.0.0.1:8000"), ("[::1]", "[::1]:8000"),
    (" example.com ", "example.com:8000"),
])
def test_parse_bind_host_alone_means_port_8000(text: str, expected: str) -> None:
    # gunicorn's rule: "-b localhost" listens on localhost:8000.
    assert parse_bind(text) == expected


def test_bind_list_keeps_the_default_port(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "[server]\nbind = localhost, [::1]:9000\n"))
    assert cfg.server.bind == ("localhost:8000", "[::1]:9000")


def test_parse_bind_hints_brackets_for_ipv6() -> None:
    with pytest.raises(ValueError) as info:
        parse_bind("::1:8000")
    assert str(info.value) == BIND_FORM + "; put IPv6 addresses in brackets: [::1]:8000"


def test_other_value_checks() -> None:
    assert parse_app("myapp.wsgi:application") == "myapp.wsgi:application"
    assert parse_app("") == ""
    for bad in ("myapp", "my-app:app", "a:b:c", ":app", "a:"):
        with pytest.raises(ValueError):
            parse_app(bad)
    assert parse_network("10.0.0.0/8") == "10.0.0.0/8"
    assert parse_network("::1") == "::1"
    with pytest.raises(ValueError):
        parse_network("10.0.0.0/33")
    assert parse_origin("https://example.com:8443") == "https://example.com:8443"
    assert parse_origin(" * ") == "*"  # any origin
    with pytest.raises(ValueError):
        parse_origin("https://example.com/path")


def test_formatters_round_trip() -> None:
    assert format_size(64 * KiB) == "64KiB"
    assert format_size(8190) == "8190"
    assert format_size(0) == "0"
    assert format_duration(0.5) == "500ms"
    assert format_duration(300.0) == "5m"
    assert format_duration(1e-7) != "1e-07s"
    rng = random.Random(7)
    for _ in range(2000):
        seconds = rng.random() * 10 ** rng.randint(-6, 6)
        assert parse_duration(format_duration(seconds)) == seconds
        size = rng.randint(0, 2**45)
        assert parse_size(format_size(size)) == size


# --- loading values from a file ------------------------------------------------------


def test_file_values_of_every_type(tmp_path: Path) -> None:
    path = write(tmp_path, """
[server]
bind =
    127.0.0.1:9000
    [::1]:9000, unix:/tmp/prefork.sock
    localhost:9001
workers = 3    ; inline comment
threads = 0
APP = demo.app:application
[limits]
max_body_size = 0
header_timeout = 1500ms
[websocket]
compression = off
allowed_origins = https://a.example, http://localhost:8080
[logging]
level = WARNING
[status]
path =
allow = 10.0.0.0/8
""")
    cfg = load_config(path)
    assert cfg.server.bind == ("127.0.0.1:9000", "[::1]:9000", "unix:/tmp/prefork.sock", "localhost:9001")
    assert cfg.server.workers == 3
    assert cfg.server.threads == 0
    assert cfg.server.app == "demo.app:application"
    assert cfg.limits.max_body_size == 0
    assert http_limits(cfg.limits).max_body_size is None
    assert cfg.limits.header_timeout == 1.5
    assert cfg.websocket.compression is False
    assert cfg.websocket.allowed_origins == ("https://a.example", "http://localhost:8080")
    assert cfg.logging.level == "warning"
    assert cfg.status.path == ""
    assert cfg.status.allow == ("10.0.0.0/8",)


def test_workers_auto(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, "[server]\nworkers = auto\n"))
    assert cfg.server.workers == (os.cpu_count() or 1)


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "# nothing here\n")) == Config()


# --- error messages (exact) -----------------------------------------------------------


def test_error_unknown_key_with_suggestion(tmp_path: Path) -> None:
    text = "[limits]\n# comment\n\nmax_body_sise = 1GiB\n"
    assert error_of(tmp_path, text) == (
        "F:4: [limits] max_body_sise: unknown key; did you mean 'max_body_size'? "
        f"(allowed keys: {LIMITS_KEYS})"
    )


def test_error_unknown_key_without_suggestion(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[server]\nzzz = 1\n") == (
        f"F:2: [server] zzz: unknown key (allowed keys: {SERVER_KEYS})"
    )


def test_error_unknown_section(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[server]\nworkers = 2\n\n[sever]\n") == (
        f"F:4: [sever]: unknown section; did you mean 'server'? (allowed sections: {ALL_SECTIONS})"
    )


def test_error_default_section_is_not_special(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[DEFAULT]\nworkers = 2\n") == (
        f"F:1: [DEFAULT]: unknown section (allowed sections: {ALL_SECTIONS})"
    )


def test_error_bad_whole_number(tmp_path: Path) -> None:
    text = "[server]\nbind = 127.0.0.1:8000\n\n# workers\n\n\nworkers = two\n"
    assert error_of(tmp_path, text) == (
        "F:7: [server] workers = 'two': expected a whole number >= 1 or 'auto'"
    )
    assert error_of(tmp_path, "[server]\nthreads = -1\n") == (
        "F:2: [server] threads = '-1': expected a whole number >= 0"
    )


def test_error_bad_size(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[limits]\nmax_body_size = 10 XB\n") == (
        "F:2: [limits] max_body_size = '10 XB': expected a size like 512KiB, 10MiB, 2GiB"
    )
    assert error_of(tmp_path, "[limits]\nmax_body_size = 10 GB\n") == (
        "F:2: [limits] max_body_size = '10 GB': expected a size like 512KiB, 10MiB, 2GiB; "
        "did you mean '10GiB'?"
    )
    assert error_of(tmp_path, "[limits]\nmax_header_bytes = 0\n") == (
        "F:2: [limits] max_header_bytes = '0': expected a size of at least 1"
    )


def test_error_bad_duration(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[process]\ntimeout = 5 days\n") == (
        "F:2: [process] timeout = '5 days': expected a duration like 500ms, 30s, 5m, 1h"
    )
    assert error_of(tmp_path, "[process]\ntimeout = 10min\n") == (
        "F:2: [process] timeout = '10min': expected a duration like 500ms, 30s, 5m, 1h; "
        "did you mean '10m'?"
    )
    assert error_of(tmp_path, "[limits]\nkeepalive_timeout = 0s\n") == (
        "F:2: [limits] keepalive_timeout = '0s': expected a duration greater than 0, like 500ms, 30s, 5m, 1h"
    )


def test_error_bad_bool(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[websocket]\ncompression = maybe\n") == (
        "F:2: [websocket] compression = 'maybe': expected a boolean: on/off, true/false, yes/no or 1/0"
    )


def test_error_bad_bind(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[server]\nbind = 127.0.0.1:99999\n") == (
        f"F:2: [server] bind = '127.0.0.1:99999': {BIND_FORM}"
    )
    assert error_of(tmp_path, "[server]\nbind = 127.0.0.1:80, 10.0.0.300:80\n") == (
        "F:2: [server] bind = '127.0.0.1:80, 10.0.0.300:80': entry '10.0.0.300:80': "
        f"{BIND_FORM}; '10.0.0.300' is not a valid IP address"
    )
    assert error_of(tmp_path, "[server]\nbind =\n") == (
        "F:2: [server] bind = '': expected at least one entry"
    )


def test_error_bad_level(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[logging]\nlevel = warn\n") == (
        "F:2: [logging] level = 'warn': expected one of: debug, info, warning, error, critical; "
        "did you mean 'warning'?"
    )


def test_error_bad_app(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[server]\napp = myapp.wsgi\n") == (
        "F:2: [server] app = 'myapp.wsgi': expected 'module:callable' like "
        "myapp.wsgi:application, or empty for the built-in demo app"
    )


def test_error_bad_status_allow(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[status]\nallow = localhost\n") == (
        "F:2: [status] allow = 'localhost': expected an IP address or CIDR network like "
        "127.0.0.1, ::1 or 10.0.0.0/8"
    )


def test_error_duplicate_key(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[server]\nworkers = 1\nthreads = 2\nWorkers = 3\n") == (
        "F:4: [server] workers: duplicate key (first set on line 2)"
    )


def test_error_duplicate_section(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[server]\nworkers = 1\n\n[server]\n") == (
        "F:4: [server]: duplicate section (first opened on line 1)"
    )


def test_error_missing_file() -> None:
    with pytest.raises(ConfigError) as info:
        load_config("conf/x.ini")
    assert str(info.value) == "config file not found: conf/x.ini"


def test_error_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="^cannot read config file "):
        load_config(tmp_path)


def test_error_syntax(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[server]\nworkers = 2\nthis is not ini\n") == (
        "F:3: syntax error: 'this is not ini': expected 'key = value', a [section] header, "
        "a comment, or an indented continuation line"
    )


def test_error_key_before_section(tmp_path: Path) -> None:
    assert error_of(tmp_path, "\nworkers = 2\n") == (
        "F:2: syntax error: 'workers = 2': expected a [section] header before the first key"
    )


def test_error_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bad.ini"
    path.write_bytes(b"[server]\nuser = \xff\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}:2: not valid UTF-8 (byte 0xff)"


def test_error_cross_field(tmp_path: Path) -> None:
    assert error_of(tmp_path, "[staging]\nmemory_budget = 512KiB\n") == (
        "F:2: [staging] memory_budget = '512KiB': memory_threshold (1MiB) must not exceed "
        "memory_budget (512KiB)"
    )


def test_line_numbers_after_multiline_values_and_comments(tmp_path: Path) -> None:
    text = (
        "# header\n[server]\nbind =\n    127.0.0.1:1\n    127.0.0.1:2\n"
        "; comment\nthreads = 1 # inline\n\n[limits]\n\nmax_body_size = nope\n"
    )
    assert error_of(tmp_path, text).startswith("F:11: [limits] max_body_size = 'nope': ")


# --- overrides ---------------------------------------------------------------------------


def test_overrides_win_over_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nworkers = 4\nthreads = 8\n[logging]\nlevel = debug\n")
    cfg = load_config(path, {
        "server": {"bind": ("127.0.0.1:9000", "[::1]:9000"), "workers": 2, "threads": None},
        "limits": {"header_timeout": 2.5, "max_body_size": "1GiB"},
        "websocket": {"compression": False},
    })
    assert cfg.server.bind == ("127.0.0.1:9000", "[::1]:9000")
    assert cfg.server.workers == 2
    assert cfg.server.threads == 8  # None = flag not given, the file value stays
    assert cfg.limits.header_timeout == 2.5
    assert cfg.limits.max_body_size == GiB
    assert cfg.websocket.compression is False
    assert cfg.logging.level == "debug"


def test_overrides_are_validated() -> None:
    cases: list[tuple[dict[str, dict[str, object]], str]] = [
        ({"server": {"workers": 0}},
         "command line: [server] workers = 0: expected a whole number >= 1 or 'auto'"),
        ({"server": {"workers": True}},
         "command line: [server] workers = True: expected a whole number >= 1 or 'auto'"),
        ({"server": {"bind": ("127.0.0.1:70000",)}},
         f"command line: [server] bind = '127.0.0.1:70000': {BIND_FORM}"),
        ({"server": {"bind": ("127.0.0.1:1", "127.0.0.1:70000")}},
         f"command line: [server] bind = '127.0.0.1:1, 127.0.0.1:70000': entry '127.0.0.1:70000': {BIND_FORM}"),
        ({"server": {"wrkers": 2}},
         f"command line: [server] wrkers: unknown key; did you mean 'workers'? (allowed keys: {SERVER_KEYS})"),
        ({"servre": {"workers": 2}},
         f"command line: [servre]: unknown section; did you mean 'server'? (allowed sections: {ALL_SECTIONS})"),
        ({"server": {"workers": 1.5}},
         "command line: [server] workers = 1.5: expected a whole number >= 1 or 'auto'"),
        ({"server": {"workers": {"n": 1}}},
         "command line: [server] workers = {'n': 1}: unsupported type dict"),
    ]
    for overrides, message in cases:
        with pytest.raises(ConfigError) as info:
            load_config(None, overrides)
        assert str(info.value) == message


# --- describe_config -------------------------------------------------------------------------


def test_describe_round_trip_defaults(tmp_path: Path) -> None:
    text = describe_config(load_config(SHIPPED))
    assert "max_body_size = 10GiB\n" in text
    assert "header_timeout = 10s\n" in text
    assert load_config(write(tmp_path, text)) == load_config(SHIPPED)


def test_describe_round_trip_custom(tmp_path: Path) -> None:
    custom = Config(
        server=ServerConfig(bind=("0.0.0.0:80", "[::]:80", "unix:/run/p.sock"), workers=7,
                            app="pkg.mod:make_app", user="www-data", pidfile="/run/p.pid"),
        limits=LimitsConfig(max_body_size=12345, header_timeout=0.25, keepalive_timeout=90.0),
        websocket=WebSocketConfig(allowed_origins=("https://a.example",), compression=False,
                                  ping_interval=1.5),
    )
    text = describe_config(custom)
    assert "header_timeout = 250ms\n" in text
    assert "keepalive_timeout = 90s\n" in text
    assert "compression = off\n" in text
    loaded = load_config(write(tmp_path, text))
    assert loaded == custom
    assert loaded.source is not None


# --- the parser limits under [limits] (settings defined once) ------------------------------------


def test_parser_limit_keys_load_and_show(tmp_path: Path) -> None:
    text = ("[limits]\nmax_chunk_line = 100\nmax_trailer_bytes = 2KiB\nmax_parts = 9\n"
            "max_part_header_bytes = 1KiB\nmax_field_size = 3 KiB\nmax_fields_total = 1MiB\n")
    cfg = load_config(write(tmp_path, text))
    assert cfg.limits == LimitsConfig(max_chunk_line=100, max_trailer_bytes=2 * KiB, max_parts=9,
                                      max_part_header_bytes=KiB, max_field_size=3 * KiB, max_fields_total=MiB)
    shown = describe_config(cfg)
    for line in ("max_chunk_line = 100", "max_trailer_bytes = 2KiB", "max_parts = 9",
                 "max_part_header_bytes = 1KiB", "max_field_size = 3KiB", "max_fields_total = 1MiB"):
        assert line + "\n" in shown


@pytest.mark.parametrize("line, message", [
    ("max_chunk_line = 0", "[limits] max_chunk_line = '0': expected a size of at least 1"),
    ("max_chunk_line = 4KB", "[limits] max_chunk_line = '4KB': expected a size like 512KiB, 10MiB, 2GiB; "
                             "did you mean '4KiB'?"),
    ("max_trailer_bytes = lots", "[limits] max_trailer_bytes = 'lots': expected a size like 512KiB, 10MiB, 2GiB"),
    ("max_parts = 0", "[limits] max_parts = '0': expected a whole number >= 1"),
    ("max_parts = 1KiB", "[limits] max_parts = '1KiB': expected a whole number >= 1"),
    ("max_part_header_bytes = -1", "[limits] max_part_header_bytes = '-1': expected a size like 512KiB, 10MiB, 2GiB"),
    ("max_field_size = 0", "[limits] max_field_size = '0': expected a size of at least 1"),
    ("max_fields_total = 8 MB", "[limits] max_fields_total = '8 MB': expected a size like 512KiB, 10MiB, 2GiB; "
                                "did you mean '8MiB'?"),
])
def test_error_bad_parser_limit(tmp_path: Path, line: str, message: str) -> None:
    assert error_of(tmp_path, f"[limits]\n# comment\n{line}\n") == f"F:3: {message}"


def test_durations_documented_as_zero_for_no_limit_accept_zero(tmp_path: Path) -> None:
    # conf/server.ini says "0 = no limit" for these two, and their consumers treat 0 so,
    # but the validator used to refuse 0 ("expected a duration greater than 0").
    cfg = load_config(write(tmp_path, "[process]\nhandler_timeout = 0\n[websocket]\nmessage_timeout = 0s\n"))
    assert cfg.process.handler_timeout == 0.0
    assert cfg.websocket.message_timeout == 0.0
    assert "handler_timeout = 0s\n" in describe_config(cfg)
    assert load_config(write(tmp_path, describe_config(cfg))) == cfg
    # Other durations still need a positive value.
    assert error_of(tmp_path, "[limits]\nheader_timeout = 0\n") == (
        "F:2: [limits] header_timeout = '0': expected a duration greater than 0, like 500ms, 30s, 5m, 1h"
    )
