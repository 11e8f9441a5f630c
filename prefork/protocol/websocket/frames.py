"""WebSocket frame parsing and serialisation (RFC 6455 §5).

Strategy: a buffered, transactional parser in the style of wsproto. Bytes are
appended to one ``bytearray``; a read offset marks what has been consumed, and
the consumed prefix is dropped only once it is large, so many frames in one
feed and one frame split over many feeds both cost O(n) overall. The header is
parsed only when all of its bytes are present (otherwise nothing is consumed:
"rollback"), validated, handed to an optional ``on_header`` hook (the
connection uses it to check message sequencing and cumulative size), and then
committed, so an oversized payload is refused before a byte of it is buffered.
The payload is unmasked with a single big-integer XOR, which avoids a
per-byte Python loop and stays fast for multi-MiB frames. By default frames
are returned whole; with ``stream_data`` data frames come out in pieces as
their bytes arrive (control frames always whole), so the connection can
reject invalid UTF-8 in a frame before the rest of that frame arrives.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

from prefork.protocol.errors import WebSocketError

__all__ = [
    "CloseCode",
    "Frame",
    "FrameHeader",
    "FrameParser",
    "Opcode",
    "apply_mask",
    "frame_head",
    "serialize_frame",
]

#: Control frames carry at most 125 payload bytes (RFC 6455 §5.5).
MAX_CONTROL_PAYLOAD = 125

#: Consumed bytes are dropped from the buffer once they exceed this and half
#: the buffer, which keeps compaction amortised O(1) per byte.
_COMPACT_THRESHOLD = 64 * 1024


class Opcode(IntEnum):
    """Frame opcodes (RFC 6455 §5.2, §11.8)."""

    CONT = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA

    @property
    def is_control(self) -> bool:
        """Whether this is a control opcode (RFC 6455 §5.5: high bit of the nibble)."""
        return self >= 0x8


class CloseCode(IntEnum):
    """Close status codes (RFC 6455 §7.4.1 and the IANA registry)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    UNSUPPORTED_DATA = 1003
    NO_STATUS_RCVD = 1005
    ABNORMAL_CLOSURE = 1006
    INVALID_PAYLOAD = 1007
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009
    MANDATORY_EXTENSION = 1010
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    BAD_GATEWAY = 1014
    TLS_HANDSHAKE = 1015


_OPCODES = {int(op): op for op in Opcode}


@dataclass(frozen=True, slots=True)
class Frame:
    """One WebSocket frame with its payload already unmasked.

    Attributes:
        opcode: the frame's opcode.
        payload: the unmasked payload.
        fin: whether this is the final fragment of a message.
        rsv1: RSV1 bit ("per-message compressed" with permessage-deflate).
        rsv2: RSV2 bit (no extension defines it here).
        rsv3: RSV3 bit (no extension defines it here).
    """

    opcode: Opcode
    payload: bytes
    fin: bool = True
    rsv1: bool = False
    rsv2: bool = False
    rsv3: bool = False


@dataclass(frozen=True, slots=True)
class FrameHeader:
    """A validated frame header, seen before its payload is buffered.

    Attributes:
        opcode: the frame's opcode.
        fin: the FIN bit.
        rsv1: the RSV1 bit.
        length: the payload length in bytes.
        mask: the 4-byte masking key, or None for an unmasked frame.
    """

    opcode: Opcode
    fin: bool
    rsv1: bool
    length: int
    mask: bytes | None


# XOR with a constant byte is a byte-to-byte mapping, so each of the four key
# bytes becomes one bytes.translate() over every fourth byte: C speed, ~4x the
# big-integer XOR. The C helper of the `websockets` package, when installed
# (`pip install prefork[speedups]`), is faster still.
_XOR_TABLES = [bytes(b ^ k for b in range(256)) for k in range(256)]


def _apply_mask_translate(data: bytes | bytearray | memoryview, key: bytes) -> bytes:
    out = bytearray(data)
    for i in range(4):
        out[i::4] = out[i::4].translate(_XOR_TABLES[key[i]])
    return bytes(out)


_apply_mask_c: Callable[[bytes | bytearray | memoryview, bytes], bytes] | None
try:
    from websockets.speedups import apply_mask as _apply_mask_c  # type: ignore[import-not-found,no-redef,unused-ignore]
except ImportError:  # pragma: no cover - depends on the environment
    _apply_mask_c = None


def apply_mask(data: bytes | bytearray | memoryview, key: bytes) -> bytes:
    """Mask or unmask ``data`` with a 4-byte key (RFC 6455 §5.3).

    Args:
        data: the payload.
        key: the 4-byte masking key.

    Returns:
        The payload XORed with the repeated key.
    """
    if not len(data):
        return b""
    if _apply_mask_c is not None:
        return bytes(_apply_mask_c(data, key))
    return _apply_mask_translate(data, key)


def frame_head(frame: Frame, *, masked: bool = False) -> bytes:
    """The header of ``frame`` in the minimal length form (RFC 6455 §5.2), without a key.

    A server sends it followed by the payload as is: two buffers for a
    scatter-gather write, so a large payload is never copied to be framed.

    Args:
        frame: the frame to encode.
        masked: set the MASK bit (clients; the key follows the header).

    Returns:
        The 2, 4 or 10 header bytes.
    """
    b0 = (
        (0x80 if frame.fin else 0)
        | (0x40 if frame.rsv1 else 0)
        | (0x20 if frame.rsv2 else 0)
        | (0x10 if frame.rsv3 else 0)
        | int(frame.opcode)
    )
    mask_bit = 0x80 if masked else 0
    n = len(frame.payload)
    if n < 126:
        return struct.pack("!BB", b0, mask_bit | n)
    if n < 1 << 16:
        return struct.pack("!BBH", b0, mask_bit | 126, n)
    return struct.pack("!BBQ", b0, mask_bit | 127, n)


def serialize_frame(frame: Frame, *, mask_key: bytes | None = None) -> bytes:
    """Encode a frame for the wire, using the minimal length form (RFC 6455 §5.2).

    Args:
        frame: the frame to encode.
        mask_key: a 4-byte masking key (clients only); servers send unmasked frames.

    Returns:
        The frame's bytes.

    Raises:
        ValueError: if ``mask_key`` is not 4 bytes long.
    """
    head = frame_head(frame, masked=mask_key is not None)
    if mask_key is None:
        return head + frame.payload
    if len(mask_key) != 4:
        raise ValueError(f"mask key must be 4 bytes, got {len(mask_key)}")
    return head + mask_key + apply_mask(frame.payload, mask_key)


class FrameParser:
    """Incremental frame parser: ``feed()`` bytes, then ``next_frame()`` until None.

    Attributes:
        require_mask: reject unmasked frames (a server parsing client frames, §5.1).
        max_payload: largest payload accepted, checked at the header (close 1009).
        allow_rsv1: RSV1 is legal on the first frame of a data message
            (permessage-deflate negotiated, RFC 7692 §6).
    """

    def __init__(
        self,
        *,
        max_payload: int,
        require_mask: bool = True,
        allow_rsv1: bool = False,
        stream_data: bool = False,
        on_header: Callable[[FrameHeader], None] | None = None,
    ) -> None:
        """Create a parser.

        Args:
            require_mask: reject unmasked frames with 1002.
            max_payload: reject larger payloads with 1009 before buffering them.
            allow_rsv1: accept RSV1 on TEXT/BINARY frames (never on CONT or control).
            stream_data: return data frames in pieces as their bytes arrive
                (wsproto-style): the first piece keeps the opcode and RSV1, later
                pieces of the same frame are CONT, and only the last piece carries
                the frame's FIN. Reassembling pieces is then the same as
                reassembling fragments, and a message can be validated (UTF-8)
                before its frame is complete. Control frames are always whole.
            on_header: called with each validated header before its payload is
                buffered; may raise ``WebSocketError`` to refuse the frame.
        """
        self.require_mask = require_mask
        self.max_payload = max_payload
        self.allow_rsv1 = allow_rsv1
        self.stream_data = stream_data
        self._on_header = on_header
        self._buf = bytearray()
        self._pos = 0
        self._header: FrameHeader | None = None
        self._done = 0  # payload bytes of the current frame already returned
        self._ready: Frame | None = None  # a piece cut straight from fed data

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Take received bytes (copied: ``data`` may be reused once this returns).

        Args:
            data: bytes from the transport.
        """
        if (self.stream_data and self._header is not None and self._ready is None
                and self._pos == len(self._buf) and not self._header.opcode.is_control):
            # The middle of a large data frame, nothing buffered: unmask the piece
            # straight from ``data`` instead of copying it into the buffer first.
            with memoryview(data) as view:
                take = min(len(view), self._header.length - self._done)
                self._ready = self._piece(view[:take])
                if take < len(view):
                    self._buf += view[take:]
            return
        self._buf += data

    @property
    def buffered(self) -> int:
        """Number of received bytes not yet returned as frames."""
        return len(self._buf) - self._pos

    def next_frame(self) -> Frame | None:
        """Return the next complete frame (or piece, see ``stream_data``), or None.

        Returns:
            The next frame, or None if more data is needed.

        Raises:
            WebSocketError: on a protocol violation (1002) or an oversized
                payload (1009); the parser must not be used afterwards.
        """
        if self._ready is not None:
            piece, self._ready = self._ready, None
            return piece
        if self._header is None:
            header = self._parse_header()
            if header is None:
                return None
            if self._on_header is not None:
                self._on_header(header)
            self._header, self._done = header, 0  # commit: header bytes consumed
        header = self._header
        remaining = header.length - self._done
        avail = len(self._buf) - self._pos
        if avail >= remaining:
            take = remaining
        elif self.stream_data and avail and not header.opcode.is_control:
            take = avail
        else:
            return None
        end = self._pos + take
        # Slicing a memoryview copies once; exports are released before the
        # buffer is compacted (a bytearray with live exports cannot resize).
        with memoryview(self._buf) as view, view[self._pos : end] as raw:
            frame = self._piece(raw)
        self._pos = end
        self._compact()
        return frame

    def _piece(self, raw: memoryview) -> Frame:
        """Unmask the next ``len(raw)`` payload bytes of the current frame into a Frame (§5.3)."""
        header = self._header
        assert header is not None
        if header.mask is None:
            payload = bytes(raw)
        else:
            shift = self._done % 4  # a piece may start mid-way through the key
            payload = apply_mask(raw, header.mask[shift:] + header.mask[:shift])
        first = self._done == 0
        self._done += len(raw)
        last = self._done == header.length
        if last:
            self._header = None
        if first:
            return Frame(header.opcode, payload, header.fin and last, header.rsv1)
        return Frame(Opcode.CONT, payload, header.fin and last)

    def _compact(self) -> None:
        """Drop consumed bytes when that is cheap relative to what was consumed."""
        if self._pos == len(self._buf):
            self._buf.clear()
            self._pos = 0
        elif self._pos > _COMPACT_THRESHOLD and self._pos * 2 > len(self._buf):
            del self._buf[: self._pos]
            self._pos = 0

    def _parse_header(self) -> FrameHeader | None:
        """Parse and validate a header, consuming it only if complete (§5.2)."""
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if avail < 2:
            return None
        b0, b1 = buf[pos], buf[pos + 1]
        # Validate what the first two bytes tell before waiting for the rest,
        # so a bad frame fails fast.
        opcode = self._check_first_bytes(b0, b1)
        length = b1 & 0x7F
        masked = bool(b1 & 0x80)
        ext = 2 if length == 126 else 8 if length == 127 else 0
        need = 2 + ext + (4 if masked else 0)
        if avail < need:
            return None
        if length == 126:
            (length,) = struct.unpack_from("!H", buf, pos + 2)
        elif length == 127:
            (length,) = struct.unpack_from("!Q", buf, pos + 2)
            if length >> 63:
                # §5.2: "the most significant bit MUST be 0".
                raise WebSocketError("64-bit payload length has its most significant bit set")
        # Non-minimal length encodings are accepted: §5.2's "minimal number of
        # bytes MUST be used" binds the sender, and refusing buys nothing.
        if length > self.max_payload:
            raise WebSocketError(
                f"frame with {length} bytes exceeds limit of {self.max_payload} bytes",
                close_code=CloseCode.MESSAGE_TOO_BIG,
            )
        mask = bytes(buf[pos + 2 + ext : need + pos]) if masked else None
        self._pos = pos + need
        return FrameHeader(opcode, bool(b0 & 0x80), bool(b0 & 0x40), length, mask)

    def _check_first_bytes(self, b0: int, b1: int) -> Opcode:
        """Validate opcode, RSV bits, masking and control-frame rules (§5.2, §5.5)."""
        opcode = _OPCODES.get(b0 & 0x0F)
        if opcode is None:
            raise WebSocketError(f"unknown opcode 0x{b0 & 0x0F:X}")
        if b0 & 0x30:
            raise WebSocketError("RSV2/RSV3 set without a negotiated extension")
        if b0 & 0x40 and not (self.allow_rsv1 and opcode in (Opcode.TEXT, Opcode.BINARY)):
            # RFC 7692 §6.1: RSV1 only on the first frame of a data message.
            if self.allow_rsv1:
                raise WebSocketError(f"RSV1 set on a {opcode.name} frame")
            raise WebSocketError("RSV1 set without a negotiated extension")
        if self.require_mask and not b1 & 0x80:
            raise WebSocketError("client frame is not masked")  # §5.1
        if opcode.is_control:
            if not b0 & 0x80:
                raise WebSocketError(f"fragmented {opcode.name} frame")  # §5.5
            if b1 & 0x7F > MAX_CONTROL_PAYLOAD:
                raise WebSocketError(f"{opcode.name} frame payload exceeds 125 bytes")
        return opcode
