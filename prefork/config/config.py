"""Configuration: ``conf/server.ini`` -> one frozen dataclass per section.

Strategy: each section is a frozen dataclass (``prefork.config.sections``) whose fields carry their default and,
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
from dataclasses import Field, fields
from typing import Any

from prefork.config.sections import (
    AUTO_WORKERS,
    SECTIONS,
    VALUE_TYPE,
    Config,
    LimitsConfig,
    LoggingConfig,
    ProcessConfig,
    ProxyConfig,
    ServerConfig,
    StagingConfig,
    StatusConfig,
    TlsConfig,
    UploadsConfig,
    WebSocketConfig,
)
from prefork.config.values import cpu_count, format_size, parse_bool, parse_duration, parse_list, parse_size, suggest
from prefork.protocol.errors import ConfigError

__all__ = [
    "Config",
    "LimitsConfig",
    "LoggingConfig",
    "ProcessConfig",
    "ProxyConfig",
    "ServerConfig",
    "StagingConfig",
    "StatusConfig",
    "TlsConfig",
    "UploadsConfig",
    "WebSocketConfig",
    "describe_config",
    "load_config",
    "parse_bool",
    "parse_duration",
    "parse_list",
    "parse_size",
]

COMMAND_LINE = "command line"
# The workers default that PaaS platforms set (Heroku and others); gunicorn honours it too.
WEB_CONCURRENCY = "WEB_CONCURRENCY"


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
    cls = SECTIONS.get(name)
    if cls is None:
        raise ConfigError(
            f"{where}: [{name}]: unknown section{suggest(name, list(SECTIONS))} "
            f"(allowed sections: {', '.join(SECTIONS)})"
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
        return fld.metadata[VALUE_TYPE].parse(text)
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


def _check_tls(cfg: Config, origin: Mapping[tuple[str, str], str]) -> None:
    """The ``[tls]`` keys that only mean something together, and HTTPS binds without a certificate."""
    tls = cfg.tls

    def where(section: str, key: str) -> str:
        return origin.get((section, key), "defaults")

    if not tls.certfile:
        https = [entry for entry in cfg.server.bind if entry.startswith("https://")]
        if https:
            raise ConfigError(f"{where('server', 'bind')}: [server] bind = {https[0]!r}: an https:// listener "
                              "needs [tls] certfile (and keyfile, unless the key is in the certfile)")
        for key in ("keyfile", "password_file", "ca_certs", "sni"):
            if getattr(tls, key):
                raise ConfigError(f"{where('tls', key)}: [tls] {key} is set but [tls] certfile is empty: "
                                  "set certfile (the default certificate) or remove it")
    if tls.verify_client != "none" and not tls.ca_certs:
        raise ConfigError(f"{where('tls', 'verify_client')}: [tls] verify_client = {tls.verify_client!r}: "
                          "client certificates are checked against [tls] ca_certs, which is empty")
    if tls.redirect_http and not any(listener_is_tls(entry, tls) for entry in cfg.server.bind):
        raise ConfigError(f"{where('tls', 'redirect_http')}: [tls] redirect_http = on: there is no "
                          "https listener to redirect to")


def _check_proxy_protocol(cfg: Config, origin: Mapping[tuple[str, str], str]) -> None:
    """Every ``[proxy] proxy_protocol`` entry names a listener."""
    for entry in cfg.proxy.proxy_protocol:
        if entry != "*" and entry not in cfg.server.bind:
            raise ConfigError(f"{origin.get(('proxy', 'proxy_protocol'), 'defaults')}: [proxy] proxy_protocol = "
                              f"{entry!r}: not one of the listeners ([server] bind = "
                              f"{', '.join(cfg.server.bind)}); write the bind entry as it is there, or *")


def listener_is_tls(bind: str, tls: TlsConfig) -> bool:
    """Whether a ``bind`` entry serves TLS: ``https://``, or no scheme on TCP while a certificate is set."""
    if bind.startswith("https://"):
        return True
    return not bind.startswith(("http://", "unix:")) and bool(tls.certfile)


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
    values: dict[str, dict[str, object]] = {name: {} for name in SECTIONS}
    origin: dict[tuple[str, str], str] = {}
    source = None if path is None else os.fspath(path)
    if source is not None:
        _load_file(source, values, origin)
    if overrides:
        _apply_overrides(overrides, values, origin)
    _resolve_workers(values, os.environ if environ is None else environ)
    sections = {name: cls(**values[name]) for name, cls in SECTIONS.items()}
    cfg = Config(**sections, source=source)
    _check_consistency(cfg, origin)
    _check_tls(cfg, origin)
    _check_proxy_protocol(cfg, origin)
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
    for name in SECTIONS:
        section = getattr(cfg, name)
        lines += ["", f"[{name}]"]
        for fld in fields(section):
            text = fld.metadata[VALUE_TYPE].show(getattr(section, fld.name))
            lines.append(f"{fld.name} = {text}".rstrip())
    return "\n".join(lines) + "\n"
