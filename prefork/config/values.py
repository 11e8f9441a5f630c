"""Value syntax for ``conf/server.ini``: sizes, durations, booleans, lists, addresses.

Strategy: every setting is described by a ``ValueType`` that turns INI text into a
typed value (``parse``) and a typed value back into INI text (``show``). Parsers
raise ``ValueError`` whose message is only the allowed form, e.g. "expected a size
like 512KiB, 10MiB, 2GiB"; they never know the file, line, section or key. The
loader in ``prefork.config.config`` knows those and prefixes them, so every message is
built in one place. Writers pick the largest unit that represents a value exactly
and check that the text parses back to the same value, which is what lets
``describe_config()`` output round-trip. Units are binary (K = KiB = 1024) on
purpose: a decimal ``GB`` is rejected with a suggestion rather than silently
meaning 1024**3.
"""

from __future__ import annotations

import decimal
import difflib
import ipaddress
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from prefork.protocol.limits import GiB, KiB, MiB

T = TypeVar("T")

TiB = 1024 * GiB

SIZE_FORM = "expected a size like 512KiB, 10MiB, 2GiB"
DURATION_FORM = "expected a duration like 500ms, 30s, 5m, 1h"
BOOL_FORM = "expected a boolean: on/off, true/false, yes/no or 1/0"
BIND_FORM = (
    "expected host:port, [ipv6]:port or unix:/absolute/path with a port from 0 to 65535"
)
MODE_FORM = "expected an octal file mode like 0660 or 0o666 (at most 0o777)"
UMASK_FORM = (
    "expected an octal mask like 022 or 0o027 (at most 0o777), or empty to keep the process's umask"
)
# gunicorn's default port: "-b localhost" means localhost:8000 there, and here.
DEFAULT_PORT = 8000
APP_FORM = (
    "expected 'module:callable' like myapp.wsgi:application, or empty for the built-in demo app"
)

_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": KiB, "kib": KiB, "m": MiB, "mib": MiB,
    "g": GiB, "gib": GiB, "t": TiB, "tib": TiB,
}
# Decimal and misspelt units people write by habit; we suggest the binary unit.
_SIZE_HINTS = {"kb": "KiB", "mb": "MiB", "gb": "GiB", "tb": "TiB", "bytes": "", "byte": ""}
_SIZE_RE = re.compile(r"([0-9]+)\s*([A-Za-z]*)")

# unit -> (multiplier, divisor); dividing by 1000 keeps "500ms" exactly 0.5.
_DURATION_UNITS = {"": (1, 1), "s": (1, 1), "ms": (1, 1000), "m": (60, 1), "h": (3600, 1)}
_DURATION_HINTS = {
    "sec": "s", "secs": "s", "second": "s", "seconds": "s", "msec": "ms",
    "min": "m", "mins": "m", "minute": "m", "minutes": "m",
    "hr": "h", "hrs": "h", "hour": "h", "hours": "h",
}
_DURATION_RE = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([A-Za-z]*)")

_TRUE = frozenset({"on", "true", "yes", "1"})
_FALSE = frozenset({"off", "false", "no", "0"})

# RFC 1123 host name: dot-separated labels of letters, digits and inner hyphens.
_HOSTNAME_RE = re.compile(
    r"(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?"
)
# RFC 6454 §7 serialised origin: scheme "://" host [":" port], no path.
_ORIGIN_RE = re.compile(r"https?://(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?")


@dataclass(frozen=True)
class ValueType(Generic[T]):
    """How one setting is read from and written back to INI text.

    Attributes:
        parse: turns stripped INI text into the typed value; raises ValueError
            whose message states the allowed form.
        show: turns the typed value back into INI text that ``parse`` accepts.
    """

    parse: Callable[[str], T]
    show: Callable[[T], str]


def suggest(word: str, choices: Sequence[str]) -> str:
    """Return "; did you mean 'x'?" for the closest choice, or "" when none is close.

    Args:
        word: what the user wrote.
        choices: the valid spellings.

    Returns:
        A message suffix, possibly empty.
    """
    match = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {match[0]!r}?" if match else ""


def parse_size(text: str) -> int:
    """Parse a byte size: a whole number with an optional binary unit.

    Accepted units (case-insensitive): B, K/KiB, M/MiB, G/GiB, T/TiB; no unit means
    bytes. Decimal units (KB, MB, GB, TB) are rejected with a suggestion.

    Args:
        text: e.g. ``"512KiB"``, ``"10 MiB"``, ``"2G"``, ``"8190"``.

    Returns:
        The size in bytes.

    Raises:
        ValueError: the text is not a size; the message states the allowed form.
    """
    match = _SIZE_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(SIZE_FORM)
    number, unit = match.groups()
    factor = _SIZE_UNITS.get(unit.lower())
    if factor is None:
        hint = _SIZE_HINTS.get(unit.lower())
        extra = f"; did you mean '{number}{hint}'?" if hint is not None else ""
        raise ValueError(SIZE_FORM + extra)
    return int(number) * factor


def format_size(value: int) -> str:
    """Write a byte count in the largest binary unit that represents it exactly.

    Args:
        value: bytes, >= 0.

    Returns:
        e.g. ``"64KiB"``, ``"10GiB"``, ``"8190"`` (plain bytes).
    """
    for unit, factor in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if value and value % factor == 0:
            return f"{value // factor}{unit}"
    return str(value)


def parse_duration(text: str) -> float:
    """Parse a duration in ms, s, m or h; a plain number means seconds.

    Args:
        text: e.g. ``"500ms"``, ``"30s"``, ``"1.5"``, ``"5m"``, ``"1h"``.

    Returns:
        The duration in seconds.

    Raises:
        ValueError: the text is not a duration; the message states the allowed form.
    """
    match = _DURATION_RE.fullmatch(text.strip())
    if match is None:
        raise ValueError(DURATION_FORM)
    number, unit = match.groups()
    scale = _DURATION_UNITS.get(unit.lower())
    if scale is None:
        hint = _DURATION_HINTS.get(unit.lower())
        extra = f"; did you mean '{number}{hint}'?" if hint else ""
        raise ValueError(DURATION_FORM + extra)
    multiplier, divisor = scale
    return float(number) * multiplier / divisor


def format_duration(value: float) -> str:
    """Write seconds in the largest unit that parses back to exactly ``value``.

    Args:
        value: seconds, >= 0.

    Returns:
        e.g. ``"30s"``, ``"500ms"``, ``"5m"``, or ``repr(value) + "s"`` as a fallback.
    """
    if value == 0:
        return "0s"  # not "0h", the largest unit that represents it
    candidates = []
    for unit in ("h", "m", "s"):
        count = value / _DURATION_UNITS[unit][0]
        if count.is_integer():
            candidates.append(f"{int(count)}{unit}")
    candidates.append(_plain(value * 1000) + "ms")
    for candidate in candidates:
        if parse_duration(candidate) == value:
            return candidate
    return _plain(value) + "s"


def _plain(number: float) -> str:
    """Write a float positionally (never ``1e-07``), exactly as ``repr`` rounds it."""
    text = format(decimal.Decimal(repr(number)), "f")
    return text[:-2] if text.endswith(".0") else text


def parse_bool(text: str) -> bool:
    """Parse on/off, true/false, yes/no or 1/0 (case-insensitive).

    Args:
        text: the INI value.

    Returns:
        The boolean.

    Raises:
        ValueError: any other spelling.
    """
    word = text.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(BOOL_FORM + suggest(word, sorted(_TRUE | _FALSE)))


def format_bool(value: bool) -> str:
    """Write a boolean as ``on`` or ``off``."""
    return "on" if value else "off"


def parse_list(text: str) -> tuple[str, ...]:
    """Split a comma- or newline-separated list; blank entries are dropped.

    Args:
        text: e.g. ``"a, b"`` or an indented multi-line INI value.

    Returns:
        The stripped, non-empty entries in order.
    """
    return tuple(item.strip() for item in re.split(r"[,\n]", text) if item.strip())


def format_list(value: tuple[str, ...]) -> str:
    """Write a list as comma-separated text."""
    return ", ".join(value)


def parse_bind(text: str) -> str:
    """Validate one listen address and return it stripped, with the port made explicit.

    Args:
        text: ``host:port`` (IPv4 or host name), ``[ipv6]:port`` or ``unix:/abs/path``;
            a host alone (``localhost``, ``[::1]``) means port 8000, as in gunicorn.

    Returns:
        The address as written, with ``:8000`` appended to a host given without a port.

    Raises:
        ValueError: malformed address, bad IP, or a port outside 0-65535.
    """
    entry = text.strip()
    if entry.startswith("unix:"):
        if not entry[5:].startswith("/"):
            raise ValueError(BIND_FORM + "; a unix socket path must be absolute")
        return entry
    if entry and ":" not in (entry.rpartition("]")[2] if entry.startswith("[") else entry):
        entry = f"{entry}:{DEFAULT_PORT}"
    host, sep, port = entry.rpartition(":")
    if not sep or not re.fullmatch("[0-9]{1,5}", port) or int(port) > 65535:
        raise ValueError(BIND_FORM)
    if host.startswith("[") and host.endswith("]"):
        _check_ip(host[1:-1], ipaddress.IPv6Address)
    elif ":" in host:
        raise ValueError(BIND_FORM + f"; put IPv6 addresses in brackets: [{host}]:{port}")
    elif re.fullmatch(r"[0-9.]+", host):
        _check_ip(host, ipaddress.IPv4Address)
    elif not _HOSTNAME_RE.fullmatch(host):
        raise ValueError(BIND_FORM)
    return entry


def _check_ip(text: str, kind: type[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> None:
    try:
        kind(text)
    except ValueError:
        raise ValueError(BIND_FORM + f"; {text!r} is not a valid IP address") from None


def parse_network(text: str) -> str:
    """Validate an IP address or CIDR network and return it stripped.

    Args:
        text: e.g. ``"127.0.0.1"``, ``"::1"``, ``"10.0.0.0/8"``.

    Returns:
        The entry as written.

    Raises:
        ValueError: not an IP address or network.
    """
    entry = text.strip()
    try:
        ipaddress.ip_network(entry, strict=False)
    except ValueError:
        raise ValueError("expected an IP address or CIDR network like 127.0.0.1, ::1 or 10.0.0.0/8") from None
    return entry


def parse_origin(text: str) -> str:
    """Validate a browser Origin (RFC 6454): ``http(s)://host[:port]``, no path; or ``*`` (any).

    Args:
        text: e.g. ``"https://example.com"``.

    Returns:
        The origin as written.

    Raises:
        ValueError: anything else.
    """
    entry = text.strip()
    if entry != "*" and not _ORIGIN_RE.fullmatch(entry):
        raise ValueError("expected * or an origin like https://example.com or http://localhost:8080")
    return entry


def parse_app(text: str) -> str:
    """Validate an application reference ``module:callable`` (empty is allowed).

    Args:
        text: e.g. ``"myapp.wsgi:application"``.

    Returns:
        The reference as written.

    Raises:
        ValueError: not two dotted Python identifiers joined by one colon.
    """
    entry = text.strip()
    if not entry:
        return entry
    module, sep, name = entry.partition(":")
    parts = module.split(".") + name.split(".")
    if not sep or not all(part.isidentifier() for part in parts):
        raise ValueError(APP_FORM)
    return entry


def parse_umask(text: str) -> int | None:
    """Parse a file mode creation mask, always octal (as the shell's ``umask 022``).

    Args:
        text: ``022``, ``0022``, ``0o027`` or ``7``; empty means "keep the process's umask".

    Returns:
        The mask, or None for empty.

    Raises:
        ValueError: not 1-4 octal digits (after an optional ``0o``), or above 0o777.
    """
    word = text.strip().lower()
    if not word:
        return None
    digits = word[2:] if word.startswith("0o") else word
    if not re.fullmatch("[0-7]{1,4}", digits) or int(digits, 8) > 0o777:
        raise ValueError(UMASK_FORM)
    return int(digits, 8)


def format_umask(value: int | None) -> str:
    """Write a umask as ``0o022``, or "" for None."""
    return "" if value is None else f"0o{value:03o}"


def parse_url_path(text: str) -> str:
    """Validate an absolute URL path such as ``/server-status`` (empty is allowed).

    Args:
        text: the INI value.

    Returns:
        The path as written.

    Raises:
        ValueError: a non-empty value that does not start with ``/`` or has spaces.
    """
    entry = text.strip()
    if entry and (not entry.startswith("/") or re.search(r"[\s?#]", entry)):
        raise ValueError("expected an absolute URL path like /server-status, or empty to turn it off")
    return entry


def text_value() -> ValueType[str]:
    """Free text (paths, user names); stored stripped."""
    return ValueType(str.strip, str)


def size_value(minimum: int = 0) -> ValueType[int]:
    """A byte size >= ``minimum``."""

    def parse(text: str) -> int:
        value = parse_size(text)
        if value < minimum:
            raise ValueError(f"expected a size of at least {format_size(minimum)}")
        return value

    return ValueType(parse, format_size)


def duration_value(*, allow_zero: bool = False) -> ValueType[float]:
    """A duration greater than zero, or also 0 with ``allow_zero`` (a key where 0 means "no limit")."""

    def parse(text: str) -> float:
        value = parse_duration(text)
        if value <= 0 and not allow_zero:
            raise ValueError("expected a duration greater than 0, like 500ms, 30s, 5m, 1h")
        return value

    return ValueType(parse, format_duration)


def int_value(minimum: int, auto: Callable[[], int] | None = None) -> ValueType[int]:
    """A whole number >= ``minimum``; with ``auto``, the word ``auto`` calls it."""
    form = f"expected a whole number >= {minimum}" + (" or 'auto'" if auto else "")

    def parse(text: str) -> int:
        word = text.strip()
        if auto is not None and word.lower() == "auto":
            return auto()
        if not re.fullmatch(r"[+-]?[0-9]+", word) or int(word) < minimum:
            raise ValueError(form)
        return int(word)

    return ValueType(parse, str)


def bool_value() -> ValueType[bool]:
    """A boolean."""
    return ValueType(parse_bool, format_bool)


def choice_value(*choices: str) -> ValueType[str]:
    """One word out of ``choices`` (case-insensitive, stored lower-case)."""
    form = "expected one of: " + ", ".join(choices)

    def parse(text: str) -> str:
        word = text.strip().lower()
        if word not in choices:
            raise ValueError(form + suggest(word, choices))
        return word

    return ValueType(parse, str)


def umask_value() -> ValueType[int | None]:
    """An octal umask, or empty for none."""
    return ValueType(parse_umask, format_umask)


def mode_value() -> ValueType[int]:
    """An octal file mode such as ``0660`` (the umask's syntax, but never empty)."""
    def parse(text: str) -> int:
        mode = parse_umask(text)
        if mode is None:
            raise ValueError(MODE_FORM)
        return mode

    return ValueType(parse, lambda mode: f"0o{mode:03o}")


def checked_value(check: Callable[[str], str]) -> ValueType[str]:
    """A single string validated by ``check`` (e.g. ``parse_app``)."""
    return ValueType(check, str)


def list_value(item: Callable[[str], str], *, nonempty: bool = False) -> ValueType[tuple[str, ...]]:
    """A list whose entries are validated by ``item``; messages name the bad entry."""

    def parse(text: str) -> tuple[str, ...]:
        entries = parse_list(text)
        if nonempty and not entries:
            raise ValueError("expected at least one entry")
        checked = []
        for entry in entries:
            try:
                checked.append(item(entry))  # the checker may normalise (a default port)
            except ValueError as exc:
                if len(entries) == 1:
                    raise
                raise ValueError(f"entry {entry!r}: {exc}") from None
        return tuple(checked)

    return ValueType(parse, format_list)


def cpu_count() -> int:
    """Return the number of CPUs, at least 1 (the default for ``workers``)."""
    return os.cpu_count() or 1
