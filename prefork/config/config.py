"""Configuration: ``conf/server.ini`` -> one frozen dataclass per section.

Strategy: each section is a frozen dataclass whose fields carry their default and,
in ``field(metadata=...)``, the ``ValueType`` that parses and prints them, so a
setting is declared in exactly one place. ``load_config`` reads the file with
``configparser`` (no interpolation, strict about duplicates, no ``[DEFAULT]``
inheritance), learns each section's and key's line number through a small
``ConfigParser`` subclass, then validates every value and applies command-line
overrides through the same parsers. Unlike gunicorn, which silently ignores
unknown keys, anything unknown or malformed stops start-up with one message that
names the file, line, section, key, bad value, allowed form and a likely fix.
Values are validated here, not in ``__post_init__``: constructing a dataclass by
hand (tests, embedding) trusts the caller. Precedence is defaults < file < flags.
These dataclasses are the only defaults a running server has: the parser limits
take theirs from ``prefork.protocol.limits`` (the one place those numbers are written),
and ``prefork.worker.settings`` is the one translation into the plain settings
the worker, its connections and the protocol code read, which have none.
"""

from __future__ import annotations

import configparser
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from typing import Any

from prefork.config.values import (
    ValueType,
    bool_value,
    checked_value,
    choice_value,
    cpu_count,
    duration_value,
    format_size,
    int_value,
    list_value,
    parse_app,
    parse_bind,
    parse_bool,
    parse_duration,
    parse_list,
    parse_network,
    parse_origin,
    parse_size,
    parse_url_path,
    size_value,
    suggest,
    text_value,
    mode_value,
    umask_value,
)
from prefork.protocol.errors import ConfigError
from prefork.protocol.limits import GiB, FormLimits, HttpLimits, MiB, WsLimits

__all__ = [
    "Config",
    "LimitsConfig",
    "LoggingConfig",
    "ProcessConfig",
    "ServerConfig",
    "StagingConfig",
    "StatusConfig",
    "UploadsConfig",
    "WebSocketConfig",
    "describe_config",
    "load_config",
    "parse_bool",
    "parse_duration",
    "parse_list",
    "parse_size",
]

_VT = "prefork.value_type"
COMMAND_LINE = "command line"
# The workers default that PaaS platforms set (Heroku and others); gunicorn honours it too.
WEB_CONCURRENCY = "WEB_CONCURRENCY"
# What ``workers = auto`` parses to until load_config resolves it (never a valid count).
AUTO_WORKERS = 0
# The protocol layer's defaults, which the parser-limit keys below take as theirs.
_HTTP, _FORM, _WS = HttpLimits(), FormLimits(), WsLimits()


def _setting(value_type: ValueType[Any], default: object = MISSING, *, factory: Any = MISSING) -> Any:
    """Declare a dataclass field together with the ValueType that reads and writes it."""
    return field(default=default, default_factory=factory, metadata={_VT: value_type})


@dataclass(frozen=True)
class ServerConfig:
    """``[server]``: where to listen, what to run, and how many processes and threads."""

    bind: tuple[str, ...] = _setting(list_value(parse_bind, nonempty=True), ("127.0.0.1:8000",))
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

    dir: str = _setting(checked_value(lambda text: _nonempty(text, "expected a directory path")), "uploads")
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
    broadcast: str = _setting(choice_value("local"), "local")


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
    source: str | None = field(default=None, compare=False)


_SECTIONS: dict[str, type[Any]] = {
    "server": ServerConfig,
    "limits": LimitsConfig,
    "staging": StagingConfig,
    "uploads": UploadsConfig,
    "websocket": WebSocketConfig,
    "process": ProcessConfig,
    "logging": LoggingConfig,
    "status": StatusConfig,
}


def _nonempty(text: str, form: str) -> str:
    if not text.strip():
        raise ValueError(form)
    return text.strip()


class _TrackingParser(configparser.ConfigParser):
    """ConfigParser that records the line of every section header and key.

    configparser keeps no line numbers. It does call ``optionxform`` once per key
    line while reading, and it pulls lines one at a time, so a numbering iterator
    plus that hook give exact lines without re-implementing the INI grammar.
    """

    def __init__(self) -> None:
        super().__init__(
            interpolation=None,
            inline_comment_prefixes=("#", ";"),
            strict=True,
            empty_lines_in_values=False,
            default_section="\0no-default",  # a literal [DEFAULT] is just an unknown section
        )
        self.section_lines: dict[str, int] = {}
        self.key_lines: dict[tuple[str, str], int] = {}
        self._lineno = 0
        self._reading = False

    def optionxform(self, optionstr: str) -> str:
        key = optionstr.lower()
        if self._reading:
            self.key_lines.setdefault((self.sections()[-1], key), self._lineno)
        return key

    def read_lines(self, lines: list[str], source: str) -> None:
        """Parse ``lines`` (from ``source``), recording line numbers."""
        self._reading = True
        try:
            self.read_file(self._numbered(lines), source)
        finally:
            self._reading = False

    def _numbered(self, lines: list[str]) -> Iterator[str]:
        for self._lineno, line in enumerate(lines, start=1):
            before = len(self.sections())
            yield line
            # Resumed: configparser has finished line self._lineno.
            if len(self.sections()) > before:
                self.section_lines[self.sections()[-1]] = self._lineno


def _read_lines(path: str) -> list[str]:
    """Read the file as UTF-8 lines, turning I/O and decoding errors into ConfigError."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not valid UTF-8 (byte {raw[exc.start]:#04x})") from None
    # Universal newlines, as configparser gets from a text-mode file.
    return [line + "\n" for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]


def _parse_ini(path: str) -> _TrackingParser:
    """Parse the file, turning INI syntax and duplicate errors into ConfigError."""
    lines = _read_lines(path)
    parser = _TrackingParser()
    try:
        parser.read_lines(lines, path)
    except configparser.DuplicateSectionError as exc:
        first = parser.section_lines[exc.section]
        raise ConfigError(
            f"{path}:{exc.lineno}: [{exc.section}]: duplicate section (first opened on line {first})"
        ) from None
    except configparser.DuplicateOptionError as exc:
        first = parser.key_lines[(exc.section, exc.option)]
        raise ConfigError(
            f"{path}:{exc.lineno}: [{exc.section}] {exc.option}: duplicate key (first set on line {first})"
        ) from None
    except configparser.MissingSectionHeaderError as exc:  # before ParsingError: a subclass
        raise ConfigError(
            f"{path}:{exc.lineno}: syntax error: {lines[exc.lineno - 1].strip()!r}: "
            "expected a [section] header before the first key"
        ) from None
    except configparser.ParsingError as exc:
        lineno = exc.errors[0][0]
        raise ConfigError(
            f"{path}:{lineno}: syntax error: {lines[lineno - 1].strip()!r}: expected 'key = value', "
            "a [section] header, a comment, or an indented continuation line"
        ) from None
    return parser


def _section_class(name: str, where: str) -> type[Any]:
    cls = _SECTIONS.get(name)
    if cls is None:
        raise ConfigError(
            f"{where}: [{name}]: unknown section{suggest(name, list(_SECTIONS))} "
            f"(allowed sections: {', '.join(_SECTIONS)})"
        )
    return cls


def _field(cls: type[Any], section: str, key: str, where: str) -> Field[Any]:
    known = {fld.name: fld for fld in fields(cls)}
    if key not in known:
        raise ConfigError(
            f"{where}: [{section}] {key}: unknown key{suggest(key, list(known))} "
            f"(allowed keys: {', '.join(known)})"
        )
    return known[key]


def _convert(fld: Field[Any], section: str, text: str, shown: object, where: str) -> object:
    try:
        return fld.metadata[_VT].parse(text)
    except ValueError as exc:
        raise ConfigError(f"{where}: [{section}] {fld.name} = {shown!r}: {exc}") from None


def _override_text(value: object) -> str | None:
    """Render an already-typed command-line value as INI text, or None if unsupported."""
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (str, int, float)):
        return str(value)
    if isinstance(value, os.PathLike):
        return str(os.fspath(value))
    if isinstance(value, (list, tuple)) and all(isinstance(item, str) for item in value):
        return "\n".join(value)
    return None


def _load_file(path: str, values: dict[str, dict[str, object]], origin: dict[tuple[str, str], str]) -> None:
    parser = _parse_ini(path)
    for section in parser.sections():
        cls = _section_class(section, f"{path}:{parser.section_lines[section]}")
        for key in parser.options(section):
            where = f"{path}:{parser.key_lines[(section, key)]}"
            fld = _field(cls, section, key, where)
            text = parser.get(section, key, raw=True)
            values[section][key] = _convert(fld, section, text, text, where)
            origin[(section, key)] = where


def _apply_overrides(
    overrides: Mapping[str, Mapping[str, object]],
    values: dict[str, dict[str, object]],
    origin: dict[tuple[str, str], str],
) -> None:
    for section, settings in overrides.items():
        cls = _section_class(section, COMMAND_LINE)
        for key, value in settings.items():
            fld = _field(cls, section, key, COMMAND_LINE)
            if value is None:  # flag not given
                continue
            text = _override_text(value)
            if text is None:
                raise ConfigError(
                    f"{COMMAND_LINE}: [{section}] {key} = {value!r}: "
                    f"unsupported type {type(value).__name__}"
                )
            shown = ", ".join(value) if isinstance(value, (list, tuple)) else value
            values[section][key] = _convert(fld, section, text, shown, COMMAND_LINE)
            origin[(section, key)] = COMMAND_LINE


def _resolve_workers(values: dict[str, dict[str, object]], environ: Mapping[str, str]) -> None:
    """Turn ``auto`` (or no setting at all) into WEB_CONCURRENCY if set, else one per CPU.

    So the environment sits between the defaults and the file, as in gunicorn: a number
    in the file or on the command line wins, ``auto`` and "not set" defer to it.
    """
    if values["server"].get("workers", AUTO_WORKERS) != AUTO_WORKERS:
        return
    text = environ.get(WEB_CONCURRENCY, "").strip()
    if not text:  # unset or empty: nothing to honour
        values["server"]["workers"] = cpu_count()
        return
    if not re.fullmatch("[0-9]+", text) or int(text) < 1:
        raise ConfigError(f"environment: {WEB_CONCURRENCY} = {text!r}: expected a whole number >= 1 "
                          "(the number of worker processes), or unset it")
    values["server"]["workers"] = int(text)


def _check_consistency(cfg: Config, origin: Mapping[tuple[str, str], str]) -> None:
    """Checks that involve more than one key; the message points at the key that was set."""
    staging = cfg.staging
    if staging.memory_threshold > staging.memory_budget:
        key = "memory_threshold" if ("staging", "memory_threshold") in origin else "memory_budget"
        shown = format_size(getattr(staging, key))
        raise ConfigError(
            f"{origin.get(('staging', key), 'defaults')}: [staging] {key} = {shown!r}: "
            f"memory_threshold ({format_size(staging.memory_threshold)}) must not exceed "
            f"memory_budget ({format_size(staging.memory_budget)})"
        )


def load_config(
    path: str | os.PathLike[str] | None,
    overrides: Mapping[str, Mapping[str, object]] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Load and validate the configuration.

    Args:
        path: the INI file, or None for defaults only.
        overrides: typed values from command-line flags, e.g.
            ``{"server": {"workers": 2}}``; they win over the file and are validated
            the same way. A value of None means "flag not given" and is skipped.
        environ: where ``WEB_CONCURRENCY`` is read (default ``os.environ``); it sets
            ``workers`` when neither the flags nor the file give a number.

    Returns:
        The validated, frozen configuration.

    Raises:
        ConfigError: missing or unreadable file, INI syntax error, duplicate
            section or key, unknown section or key, or a bad value. The message
            names the file and line (or "command line"), section, key, value, the
            allowed form and a suggestion when a known name is close.
    """
    values: dict[str, dict[str, object]] = {name: {} for name in _SECTIONS}
    origin: dict[tuple[str, str], str] = {}
    source = None if path is None else os.fspath(path)
    if source is not None:
        _load_file(source, values, origin)
    if overrides:
        _apply_overrides(overrides, values, origin)
    _resolve_workers(values, os.environ if environ is None else environ)
    sections = {name: cls(**values[name]) for name, cls in _SECTIONS.items()}
    cfg = Config(**sections, source=source)
    _check_consistency(cfg, origin)
    return cfg


def describe_config(cfg: Config) -> str:
    """Render the effective settings as INI text (for ``--check-config``).

    Sizes and durations are written in the largest exact unit (``64KiB``,
    ``30s``), and ``load_config`` on the output gives back an equal Config.

    Args:
        cfg: the configuration to show.

    Returns:
        INI text with every section and key.
    """
    lines = [f"# prefork effective configuration (from {cfg.source or 'built-in defaults'})"]
    for name in _SECTIONS:
        section = getattr(cfg, name)
        lines += ["", f"[{name}]"]
        for fld in fields(section):
            text = fld.metadata[_VT].show(getattr(section, fld.name))
            lines.append(f"{fld.name} = {text}".rstrip())
    return "\n".join(lines) + "\n"
