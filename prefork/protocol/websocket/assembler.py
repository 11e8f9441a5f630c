"""A data message being reassembled from its frames (RFC 6455 §5.4, §5.6, §8.1).

Strategy: one ``MessageAssembler`` per message in progress, fed each data
frame's payload piece by piece as it arrives (already inflated when the
message is compressed). A TEXT message's bytes go through an incremental
UTF-8 decoder, so invalid UTF-8 fails with 1007 as soon as the bad bytes
arrive, even mid-frame; a BINARY message's pieces are kept and joined once,
at the end. The final piece returns the ``TextMessage`` or ``BytesMessage``.
``size`` counts the bytes added, for the connection's size limits, and
``held`` what the message has reserved from the worker's ``InflateBudget``,
given back with ``release``. Pure: no clocks, sockets or logging.
"""

from __future__ import annotations

import codecs
from dataclasses import dataclass, field

from prefork.protocol.errors import WebSocketError
from prefork.protocol.websocket.budget import InflateBudget
from prefork.protocol.websocket.events import BytesMessage, TextMessage
from prefork.protocol.websocket.frames import CloseCode, Opcode

__all__ = ["MessageAssembler"]


@dataclass(slots=True)
class MessageAssembler:
    """A data message being reassembled."""

    opcode: Opcode
    compressed: bool
    size: int = 0  # wire bytes so far (uncompressed) or inflated bytes (compressed)
    parts: list[bytes] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    decoder: codecs.IncrementalDecoder | None = None
    held: int = 0  # inflated bytes reserved from the inflate budget

    def __post_init__(self) -> None:
        if self.opcode is Opcode.TEXT and self.decoder is None:
            self.decoder = codecs.getincrementaldecoder("utf-8")()

    def add(self, payload: bytes, fin: bool) -> TextMessage | BytesMessage | None:
        """Add the next piece of the message.

        Args:
            payload: the piece's bytes (inflated, for a compressed message).
            fin: whether it is the last piece of the message's final frame.

        Returns:
            The whole message after its last piece, else None.

        Raises:
            WebSocketError: invalid UTF-8 in a text message (1007).
        """
        self.size += len(payload)
        if self.decoder is not None:
            try:
                self.text.append(self.decoder.decode(payload, fin))
            except UnicodeDecodeError as exc:
                raise WebSocketError(f"invalid UTF-8 in text message: {exc.reason}",
                                     close_code=CloseCode.INVALID_PAYLOAD) from None
        else:
            self.parts.append(payload)
        if not fin:
            return None
        if self.decoder is not None:
            return TextMessage("".join(self.text))
        return BytesMessage(self.parts[0] if len(self.parts) == 1 else b"".join(self.parts))

    def release(self, budget: InflateBudget) -> None:
        """Give back to ``budget`` what the message holds of it."""
        budget.release(self.held)
        self.held = 0
