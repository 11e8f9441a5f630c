"""One exception tree for prefork.

Strategy: every error that can reach a peer carries what the peer should be told.
HTTP protocol errors carry ``.status`` (the response status to answer with);
WebSocket errors carry ``.close_code``. The I/O layer maps them to answers in
exactly one place, so no module needs an isinstance ladder.
"""

from __future__ import annotations


def describe(data: bytes | bytearray | memoryview, limit: int = 60) -> str:
    """Return a short repr of offending bytes for error messages.

    Args:
        data: the bytes to show.
        limit: how many bytes to show before truncating.

    Returns:
        ``repr`` of at most ``limit`` bytes, with ``...`` when truncated.
    """
    raw = bytes(data)
    if len(raw) > limit:
        return repr(raw[:limit]) + "..."
    return repr(raw)


class PreforkError(Exception):
    """Base of every error raised by prefork."""


class ProtocolError(PreforkError):
    """A request the server must answer with an HTTP error status.

    Attributes:
        status: the HTTP status code to answer with.
    """

    status: int = 400

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None:
            self.status = status


class BadRequest(ProtocolError):
    """Malformed syntax or framing (400)."""

    status = 400


class IncompleteBody(BadRequest):
    """The peer closed before the message body was complete (400)."""


class RequestTimeout(ProtocolError):
    """Headers or body did not arrive in time (408)."""

    status = 408


class BodyTooLarge(ProtocolError):
    """The body exceeds the configured maximum (413)."""

    status = 413


class UriTooLong(ProtocolError):
    """The request line exceeds its limit (414)."""

    status = 414


class HeadersTooLarge(ProtocolError):
    """The header block is too large or has too many fields (431)."""

    status = 431


class NotImplementedCoding(ProtocolError):
    """A transfer coding the server does not implement (501)."""

    status = 501


class VersionNotSupported(ProtocolError):
    """An HTTP version other than 1.0 or 1.1 (505)."""

    status = 505


class InsufficientStorage(ProtocolError):
    """Not enough disk space to stage the body (507)."""

    status = 507


class ServiceUnavailable(ProtocolError):
    """The server cannot take the request now (503): the shared staging RAM is taken."""

    status = 503


class MultipartError(BadRequest):
    """A malformed multipart/form-data body (400)."""


class WebSocketError(PreforkError):
    """A WebSocket protocol violation; the connection closes with ``close_code``.

    Attributes:
        close_code: the RFC 6455 §7.4 close code to send.
    """

    close_code: int = 1002

    def __init__(self, message: str, close_code: int | None = None) -> None:
        super().__init__(message)
        if close_code is not None:
            self.close_code = close_code


class ConfigError(PreforkError):
    """An invalid configuration; the message names file, line, key and what is allowed."""
