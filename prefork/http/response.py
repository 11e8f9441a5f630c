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
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus

__all__ = ["LAST_CHUNK", "ResponseFraming", "chunk", "frame_body", "frame_response", "http_date",
           "simple_error_response", "status_line_and_headers"]

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


@dataclass(frozen=True, slots=True)
class ResponseFraming:
    """How one response is delimited on the wire, and what it does to the connection.

    Attributes:
        head: the status line and header block, ready to send.
        body_length: body bytes to send; None when the body is chunked or ends with the close.
        chunked: the body goes out in chunks (``Transfer-Encoding: chunked``).
        close: the connection closes once this response is sent.
    """

    head: bytes
    body_length: int | None
    chunked: bool
    close: bool


def has_no_body(method: bytes, status: int) -> bool:
    """A response to HEAD, a 1xx, 204 or 304 never has a body (RFC 9112 §6.3 rule 1)."""
    return method == b"HEAD" or status in (204, 304) or status < 200


def frame_response(method: bytes, http_version: bytes, keep_alive: bool, status: int, reason: str,
                   headers: list[tuple[str, str]], declared_length: int | None,
                   known_length: int | None) -> ResponseFraming:
    """Decide how a response is framed and build its head (RFC 9112 §6 and §9).

    Args:
        method: the request's method (HEAD responses have no body).
        http_version: the request's version, ``b"1.1"`` or ``b"1.0"``.
        keep_alive: whether the connection may stay open (the request's and the
            server's wish); a body with no known length on HTTP/1.0 closes it anyway.
        status, reason: the status code and reason phrase.
        headers: the application's fields (already validated, no framing fields
            but its own ``Content-Length``).
        declared_length: the application's ``Content-Length``, if it gave one.
        known_length: the body's length when the server knows it (a complete body,
            a file), added as ``Content-Length``; None for a body still to come.

    Returns:
        The head and the framing decisions.
    """
    no_body = has_no_body(method, status)
    # RFC 9110 §8.6: no Content-Length on 1xx and 204; on 304 it would describe another body.
    may_send_length = not (status in (204, 304) or status < 200)
    lines = [f"HTTP/1.1 {status} {reason}\r\nDate: {http_date().decode('latin-1')}\r\nServer: prefork\r\n"]
    lines.extend(f"{name}: {value}\r\n" for name, value in headers)
    chunked = False
    length: int | None
    if declared_length is not None:
        length = declared_length
    elif known_length is not None:
        length = known_length
        if may_send_length:
            lines.append(f"Content-Length: {known_length}\r\n")
    else:
        length = None
        if http_version == b"1.1" and not no_body:
            chunked = True
            lines.append("Transfer-Encoding: chunked\r\n")
        else:
            keep_alive = False  # no length known: the close delimits the body (§6.3 rule 8)
    if not keep_alive:
        lines.append("Connection: close\r\n")
    elif http_version == b"1.0":
        lines.append("Connection: keep-alive\r\n")
    lines.append("\r\n")
    return ResponseFraming("".join(lines).encode("latin-1"), 0 if no_body else length, chunked, not keep_alive)


def frame_body(chunks: list[bytes], remaining: int | None, chunked: bool) -> tuple[list[bytes], int, int | None]:
    """Frame a batch of body chunks for the wire.

    Args:
        chunks: what the application produced, in order (empty ones are skipped:
            an empty chunk would read as the end of a chunked body).
        remaining: bytes the framing still allows (Content-Length), or None.
        chunked: frame the batch as one chunk (one per batch, not one per tiny
            application chunk).

    Returns:
        The pieces to send, the body bytes among them, and what remains allowed:
        bytes beyond a declared length are dropped, never sent.
    """
    if remaining is not None:
        kept = []
        for piece in chunks:
            if remaining <= 0:
                break
            piece = piece[:remaining]
            remaining -= len(piece)
            kept.append(piece)
        chunks = kept
    chunks = [piece for piece in chunks if piece]
    size = sum(len(piece) for piece in chunks)
    if chunked and size:
        return [b"%x\r\n" % size, *chunks, b"\r\n"], size, remaining
    return chunks, size, remaining
