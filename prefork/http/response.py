"""Sans-IO HTTP/1.1 response serialisation.

Strategy: a response head is built as one ``bytes`` join of pre-encoded
pieces; header names and values given as ``str`` are encoded ISO-8859-1 (as
WSGI does) and every name and value is checked for CR, LF and NUL so that no
handler can split a response (CWE-113). Reason phrases come from
``http.HTTPStatus`` and are cached per status. The ``Date`` value changes once
a second, so it is formatted once per second and cached (DESIGN §10).
"""

from __future__ import annotations

import re
import time
from email.utils import formatdate
from http import HTTPStatus

__all__ = ["LAST_CHUNK", "chunk", "http_date", "simple_error_response", "status_line_and_headers"]

HeaderItem = tuple[bytes | str, bytes | str]

# The chunk that ends a chunked body, with an empty trailer section (RFC 9112 §7.1).
LAST_CHUNK = b"0\r\n\r\n"

# field-name = token (RFC 9110 §5.1); values must not hold CR, LF or NUL (§5.5).
_TOKEN = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_BAD_VALUE = re.compile(rb"[\r\n\x00]")

_status_lines: dict[tuple[int, bytes], bytes] = {}
_date_cache: tuple[int, bytes] = (-1, b"")


def _status_line(status: int, http_version: bytes) -> bytes:
    key = (status, http_version)
    line = _status_lines.get(key)
    if line is None:
        if not 100 <= status <= 999:
            raise ValueError(f"invalid status code: {status!r}")
        try:
            reason = HTTPStatus(status).phrase.encode("ascii")
        except ValueError:
            reason = b""  # RFC 9112 §4: the reason-phrase may be empty
        line = b"HTTP/%s %d %s\r\n" % (http_version, status, reason)
        _status_lines[key] = line
    return line


def _to_bytes(value: bytes | str) -> bytes:
    return value.encode("latin-1") if isinstance(value, str) else bytes(value)


def status_line_and_headers(status: int, headers: list[HeaderItem], http_version: bytes = b"1.1") -> bytes:
    """Serialise a status line and header fields, ending with the blank line.

    Args:
        status: the status code (100-999).
        headers: (name, value) pairs; ``str`` is encoded ISO-8859-1.
        http_version: ``b"1.1"`` or ``b"1.0"``.

    Returns:
        The response head, ready to send.

    Raises:
        ValueError: an invalid status, field name, or a value containing CR,
            LF or NUL (response splitting).
    """
    parts = [_status_line(status, http_version)]
    for name, value in headers:
        bname, bvalue = _to_bytes(name), _to_bytes(value)
        if not _TOKEN.fullmatch(bname):
            raise ValueError(f"invalid header name: {bname!r}")
        if _BAD_VALUE.search(bvalue):
            raise ValueError(f"invalid header value for {bname!r}: {bvalue!r}")
        parts.append(b"%s: %s\r\n" % (bname, bvalue))
    parts.append(b"\r\n")
    return b"".join(parts)


def chunk(data: bytes | bytearray | memoryview) -> bytes:
    """Frame ``data`` as one chunk of a chunked body (RFC 9112 §7.1).

    Args:
        data: the chunk payload; must not be empty (an empty chunk would end
            the body; send ``LAST_CHUNK`` for that).

    Returns:
        ``size-in-hex CRLF data CRLF``.

    Raises:
        ValueError: ``data`` is empty.
    """
    if not len(data):
        raise ValueError("an empty chunk would end the body; use LAST_CHUNK")
    return b"%x\r\n%s\r\n" % (len(data), bytes(data))


def http_date(now: float | None = None) -> bytes:
    """Return an IMF-fixdate for ``now`` (RFC 9110 §5.6.7), cached per second.

    Args:
        now: seconds since the epoch; defaults to ``time.time()``.

    Returns:
        e.g. ``b"Sun, 06 Nov 1994 08:49:37 GMT"``.
    """
    global _date_cache
    second = int(time.time() if now is None else now)
    cached_second, cached = _date_cache
    if second != cached_second:
        cached = formatdate(second, usegmt=True).encode("ascii")
        _date_cache = (second, cached)
    return cached


def simple_error_response(status: int, message: str, *, close: bool = True) -> bytes:
    """Build a complete plain-text error response, e.g. for a ProtocolError.

    Args:
        status: the status code to answer with.
        message: the body text (a newline is appended); encoded UTF-8.
        close: add ``Connection: close`` (every ProtocolError closes).

    Returns:
        Head and body, ready to send.
    """
    body = message.encode("utf-8", "replace") + b"\n"
    headers: list[HeaderItem] = [
        (b"Content-Type", b"text/plain; charset=utf-8"),
        (b"Content-Length", str(len(body))),
        (b"Date", http_date()),
    ]
    if close:
        headers.append((b"Connection", b"close"))
    return status_line_and_headers(status, headers) + body
