"""Sans-IO HTTP/1.1 response serialisation.

Strategy: a response head is built as one ``bytes`` join of pre-encoded
pieces; header names and values given as ``str`` are encoded ISO-8859-1 (as
WSGI does) and every name and value is checked for CR, LF and NUL so that no
handler can split a response (CWE-113). Reason phrases come from
``http.HTTPStatus`` and are cached per status. The ``Date`` value changes once
a second, so it is formatted once per second and cached (DESIGN §10).

``ResponseWriter`` holds every framing rule of an application's response:
Content-Length vs chunked vs close-delimited, no body for HEAD/1xx/204/304,
HTTP/1.0 keep-alive, a body that ends short of its length. The I/O layer
only queues the bytes it returns and closes when it says so.
"""

from __future__ import annotations

import re
import time
from email.utils import formatdate
from http import HTTPStatus
from typing import Protocol

from prefork.protocol.http.events import Request

__all__ = ["CONTINUE", "LAST_CHUNK", "ResponseHead", "ResponseWriter", "chunk", "http_date",
           "simple_error_response", "status_line_and_headers"]

HeaderItem = tuple[bytes | str, bytes | str]

# The chunk that ends a chunked body, with an empty trailer section (RFC 9112 §7.1).
LAST_CHUNK = b"0\r\n\r\n"
# The interim answer to ``Expect: 100-continue`` (RFC 9110 §10.1.1).
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"

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


class ResponseHead(Protocol):
    """What the writer reads of an application's response."""

    status: int
    reason: str
    headers: list[tuple[str, str]]  # already validated, no framing fields but a Content-Length
    content_length: int | None  # the application's own Content-Length, if it gave one
    close_connection: bool  # the application asked for ``Connection: close``


class ResponseWriter:
    """Frames the responses of one connection, one after another (RFC 9112 §6 and §9).

    ``start`` decides the framing and returns the head; ``frame`` turns body
    chunks into wire pieces; ``end`` returns what ends the body. The same writer
    is reused for every response on a connection, so framing allocates nothing
    beyond the bytes it returns.

    Attributes:
        close: the connection must close once this response is sent (set by
            ``start``; ``end`` sets it too when the body ended short).
        no_body: the response has no body (HEAD, 1xx, 204, 304): none is sent, so
            none needs producing.
        chunked: the body goes out as chunks (``Transfer-Encoding: chunked``).
        remaining: body bytes the framing still allows (a Content-Length), or None
            when the body is chunked or delimited by the close.
        body_sent: body bytes framed so far (the access log's size).
    """

    __slots__ = ("close", "no_body", "chunked", "remaining", "body_sent")

    def __init__(self) -> None:
        self.close = False
        self.no_body = False
        self.chunked = False
        self.remaining: int | None = None
        self.body_sent = 0

    def start(self, head: Request, response: ResponseHead, known_length: int | None, may_keep_alive: bool) -> bytes:
        """Decide how a response is framed and build its head.

        Args:
            head: the request being answered (its method, version and keep-alive wish).
            response: the application's status, reason, fields and Content-Length.
            known_length: the body's length when the server knows it (a complete body,
                a file), sent as ``Content-Length``; None for a body still to come.
            may_keep_alive: whether the server lets the connection stay open (it is not
                stopping, the client has not gone); a body of unknown length on
                HTTP/1.0 closes it anyway.

        Returns:
            The status line and header block.
        """
        status = response.status
        http_version = head.http_version
        keep_alive = may_keep_alive and head.keep_alive and not response.close_connection
        # RFC 9112 §6.3 rule 1: a response to HEAD, a 1xx, 204 or 304 never has a body.
        self.no_body = no_body = head.method == b"HEAD" or status in (204, 304) or status < 200
        self.body_sent = 0
        # RFC 9110 §8.6: no Content-Length on 1xx and 204; on 304 it would describe another body.
        may_send_length = not (status in (204, 304) or status < 200)
        lines = [f"HTTP/1.1 {status} {response.reason}\r\nDate: {http_date().decode('latin-1')}\r\n"
                 "Server: prefork\r\n"]
        lines.extend(f"{name}: {value}\r\n" for name, value in response.headers)
        chunked = False
        length: int | None
        if response.content_length is not None:
            length = response.content_length
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
        self.remaining = 0 if no_body else length
        self.chunked = chunked
        self.close = not keep_alive
        return "".join(lines).encode("latin-1")

    def frame(self, chunks: list[bytes]) -> list[bytes]:
        """Frame a batch of body chunks for the wire.

        A batch, not one chunk: a chunked body gets one chunk header per batch
        (not one per tiny application chunk), and the pieces are returned apart
        so that a large chunk is sent as it is, never copied into a joined buffer.

        Args:
            chunks: what the application produced, in order; empty ones are skipped
                (an empty chunk would read as the end of a chunked body).

        Returns:
            The pieces to send. Bytes beyond a Content-Length are dropped, never
            sent, and no body at all goes out when ``no_body``.
        """
        if self.no_body:
            return []
        remaining = self.remaining
        if remaining is not None:
            kept = []
            for piece in chunks:
                if remaining <= 0:
                    break
                piece = piece[:remaining]
                remaining -= len(piece)
                kept.append(piece)
            chunks = kept
            self.remaining = remaining
        chunks = [piece for piece in chunks if piece]
        size = sum(len(piece) for piece in chunks)
        self.body_sent += size
        if self.chunked and size:
            return [b"%x\r\n" % size, *chunks, b"\r\n"]
        return chunks

    def sent_file(self, count: int) -> None:
        """Account for ``count`` body bytes the caller sent from a file itself (sendfile)."""
        self.body_sent += count
        if self.remaining is not None:
            self.remaining -= count

    def end(self) -> bytes:
        """What ends the body: the last chunk of a chunked one, else nothing.

        A body that ended short of its Content-Length (``remaining`` stays above
        0) cannot be delimited any more: the connection must close (``close``).
        """
        if self.remaining:
            self.close = True
        return LAST_CHUNK if self.chunked else b""
