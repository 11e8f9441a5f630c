"""WebSocket connection events and close-frame payloads (RFC 6455 §5.5.1, §7.4).

Strategy: what ``WebSocketConnection`` hands the I/O layer, as frozen, slotted
dataclasses (like ``prefork.protocol.http.events``), plus the pure helpers that encode
and validate a close frame's payload. ``protocol`` re-exports the events.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass

from prefork.protocol.errors import PreforkError, WebSocketError
from prefork.protocol.websocket.frames import CloseCode

__all__ = [
    "MAX_CLOSE_REASON",
    "BytesMessage",
    "CloseReceived",
    "ConnState",
    "Event",
    "InvalidState",
    "Ping",
    "Pong",
    "TextMessage",
    "close_payload",
    "parse_close",
    "valid_close_code",
]

#: A close reason fits in a control frame after the 2-byte code (§5.5.1).
MAX_CLOSE_REASON = 123


class ConnState(enum.Enum):
    """Connection state (RFC 6455 §7): CLOSING = our close sent, or failed."""

    OPEN = 1
    CLOSING = 2
    CLOSED = 3


@dataclass(frozen=True, slots=True)
class TextMessage:
    """A complete, valid UTF-8 text message."""

    data: str


@dataclass(frozen=True, slots=True)
class BytesMessage:
    """A complete binary message."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Ping:
    """A ping from the peer; the pong has already been queued."""

    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class Pong:
    """A pong from the peer (keep-alive bookkeeping is the I/O layer's)."""

    payload: bytes = b""


@dataclass(frozen=True, slots=True)
class CloseReceived:
    """The connection ended (or is ending); the last event of a connection.

    Attributes:
        code: the peer's close code (1005 if it sent none); 1006 on EOF without
            a close frame; on a protocol error, the code we closed with.
        reason: the peer's reason, or the error message when we failed.
    """

    code: int
    reason: str = ""


Event = TextMessage | BytesMessage | Ping | Pong | CloseReceived


class InvalidState(PreforkError):
    """The application tried to send in a state that forbids it."""


def valid_close_code(code: int) -> bool:
    """Codes a peer may send (§7.4.1-2, IANA registry); 1004-1006 and 1015 never."""
    return code in (1000, 1001, 1002, 1003) or 1007 <= code <= 1014 or 3000 <= code <= 4999


def close_payload(code: int, reason: str) -> bytes:
    """Encode a close frame's payload: 2-byte code, then UTF-8 reason (§5.5.1)."""
    return struct.pack("!H", code) + reason.encode("utf-8")


def parse_close(payload: bytes) -> tuple[int, str]:
    """Decode a close frame's payload (§5.5.1), raising 1002/1007 when invalid."""
    if not payload:
        return CloseCode.NO_STATUS_RCVD, ""
    if len(payload) == 1:
        raise WebSocketError("close frame with a 1-byte payload")
    (code,) = struct.unpack_from("!H", payload)
    if not valid_close_code(code):
        raise WebSocketError(f"invalid close code {code}")
    try:
        reason = payload[2:].decode("utf-8")
    except UnicodeDecodeError:
        raise WebSocketError("close reason is not valid UTF-8", close_code=1007) from None
    return code, reason
