"""permessage-deflate (RFC 7692): negotiation and per-connection codec.

Strategy: negotiation is a pure function from the client's parsed offers to a
``DeflateParams`` (or None to decline), taking the first offer whose
parameters are all known, unique and in range (§5.1: "the server ... accepts
... the first acceptable offer"). The codec is one ``zlib`` raw-deflate
compressor and decompressor per connection, kept between messages unless the
"no context takeover" parameter for that direction was negotiated (§7.1.1).
Each frame of a compressed message is inflated as it arrives, with
``decompress(data, max_length)`` capped at the bytes the message may still
grow by, so a zip bomb costs at most ``max_message_size`` of output before it
is refused with 1009, never its full inflated size. A message's stream may end
with a BFINAL block (§7.2.3.3) and carry padding after it: that padding is
ignored, and only the next message starts a new decompressor, so where the
TCP reads happen to split a message never changes what it inflates to (a
piece that ends right after BFINAL does not make the next piece of the same
message a new stream). zlib refuses an 8-bit
window for compression, so 9 is used when 8 is negotiated: zlib's deflate never
emits distances beyond ``window - 262`` bytes, so its 9-bit output is readable
with a 256-byte window (the same choice as websockets and Autobahn).
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

from prefork.protocol.errors import WebSocketError

__all__ = [
    "EXTENSION_NAME",
    "DeflateParams",
    "ExtensionOffer",
    "PerMessageDeflate",
    "negotiate",
]

EXTENSION_NAME = "permessage-deflate"

#: Stripped from each compressed message and re-appended on receipt (§7.2.1-2).
_TAIL = b"\x00\x00\xff\xff"

#: zlib memLevel: 8 is zlib's default (128 KiB of hash tables at 15-bit
#: windows); compressor memory is (1 << (wbits + 2)) + (1 << (memLevel + 9)).
DEFAULT_MEM_LEVEL = 8

#: One offer as parsed from Sec-WebSocket-Extensions: name and (param, value) pairs.
ExtensionOffer = tuple[str, list[tuple[str, str | None]]]

_WINDOW_BITS_RE = re.compile(r"(?:8|9|1[0-5])\Z")


@dataclass(frozen=True, slots=True)
class DeflateParams:
    """Negotiated permessage-deflate parameters (RFC 7692 §7.1).

    Attributes:
        server_no_context_takeover: the server resets its compressor per message.
        client_no_context_takeover: the client resets its compressor per message,
            so the server may reset its decompressor too.
        server_max_window_bits: the server's LZ77 window (8-15); None means 15.
        client_max_window_bits: the client's window (8-15); None means 15.
    """

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int | None = None
    client_max_window_bits: int | None = None

    def header_value(self) -> str:
        """Render the Sec-WebSocket-Extensions response value (§7.1).

        Returns:
            e.g. ``"permessage-deflate; server_no_context_takeover"``.
        """
        parts = [EXTENSION_NAME]
        if self.server_no_context_takeover:
            parts.append("server_no_context_takeover")
        if self.client_no_context_takeover:
            parts.append("client_no_context_takeover")
        if self.server_max_window_bits is not None:
            parts.append(f"server_max_window_bits={self.server_max_window_bits}")
        if self.client_max_window_bits is not None:
            parts.append(f"client_max_window_bits={self.client_max_window_bits}")
        return "; ".join(parts)


@dataclass(slots=True)
class _Offer:
    """The parameters of one client offer, before the server's preferences."""

    server_no_context_takeover: bool = False
    client_no_context_takeover: bool = False
    server_max_window_bits: int | None = None
    client_max_window_bits: int | None = None
    client_max_window_bits_offered: bool = False


def _parse_offer(params: Sequence[tuple[str, str | None]]) -> _Offer | None:
    """Validate one offer's parameters (§7.1); None if the offer is unacceptable."""
    offer = _Offer()
    seen: set[str] = set()
    for raw_name, value in params:
        name = raw_name.lower()
        if name in seen:
            return None  # §7.1: a parameter must not appear twice
        seen.add(name)
        if name in ("server_no_context_takeover", "client_no_context_takeover"):
            if value is not None:
                return None
            setattr(offer, name, True)
        elif name == "server_max_window_bits":
            # §7.1.2.1: the value is required and must be 8-15.
            if value is None or not _WINDOW_BITS_RE.match(value):
                return None
            offer.server_max_window_bits = int(value)
        elif name == "client_max_window_bits":
            # §7.1.2.2: the value is optional ("I support the parameter").
            if value is not None and not _WINDOW_BITS_RE.match(value):
                return None
            offer.client_max_window_bits_offered = True
            offer.client_max_window_bits = int(value) if value is not None else None
        else:
            return None
    return offer


def _smaller(a: int | None, b: int | None) -> int | None:
    """The smaller of two optional window sizes (None means unrestricted)."""
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


def negotiate(
    offers: Sequence[ExtensionOffer],
    *,
    server_no_context_takeover: bool = False,
    server_max_window_bits: int | None = None,
    client_max_window_bits: int | None = None,
) -> DeflateParams | None:
    """Pick the first acceptable permessage-deflate offer (RFC 7692 §5, §7.1).

    Args:
        offers: parsed Sec-WebSocket-Extensions entries, in the client's order;
            other extensions are skipped.
        server_no_context_takeover: always reset our compressor per message
            (saves its memory between messages; §7.1.1.1 lets the server add it).
        server_max_window_bits: cap our compression window (8-15); the server
            may state it even if not offered (§7.1.2.1).
        client_max_window_bits: cap the client's window (bounds our decompressor's
            memory); only applied when the client offered the parameter (§7.1.2.2).

    Returns:
        The agreed parameters, or None to decline the extension.
    """
    for name, params in offers:
        if name.lower() != EXTENSION_NAME:
            continue
        offer = _parse_offer(params)
        if offer is None:
            continue  # an invalid offer is skipped, not fatal (§5.1)
        client_bits = offer.client_max_window_bits
        if offer.client_max_window_bits_offered:
            client_bits = _smaller(client_bits, client_max_window_bits)
        return DeflateParams(
            server_no_context_takeover=offer.server_no_context_takeover
            or server_no_context_takeover,
            client_no_context_takeover=offer.client_no_context_takeover,
            server_max_window_bits=_smaller(offer.server_max_window_bits, server_max_window_bits),
            client_max_window_bits=client_bits,
        )
    return None


def _zlib_wbits(bits: int | None) -> int:
    """Raw-deflate wbits for a negotiated window (None means 15; 8 becomes 9)."""
    return -max(bits if bits is not None else 15, 9)


class PerMessageDeflate:
    """The server side of one connection's permessage-deflate codec.

    Compresses outgoing messages whole and inflates incoming ones frame by
    frame. Not thread-safe; owned by one ``WebSocketConnection``.
    """

    def __init__(
        self, params: DeflateParams, *, mem_level: int = DEFAULT_MEM_LEVEL, level: int = 6
    ) -> None:
        """Create the codec.

        Args:
            params: the negotiated parameters.
            mem_level: zlib memLevel for the compressor (1-9).
            level: zlib compression level (0-9).
        """
        self.params = params
        self._mem_level = mem_level
        self._level = level
        self._compressor: zlib._Compress | None = None
        self._decompressor: zlib._Decompress | None = None
        self._in_message = False  # a message's first piece was inflated, its last not yet

    def compress(self, data: bytes) -> bytes:
        """Compress one whole message (§7.2.1).

        Args:
            data: the message payload.

        Returns:
            The compressed payload, without the trailing 00 00 ff ff.
        """
        comp = self._compressor
        if comp is None:
            comp = zlib.compressobj(
                self._level, zlib.DEFLATED, _zlib_wbits(self.params.server_max_window_bits),
                self._mem_level,
            )
        out = comp.compress(data) + comp.flush(zlib.Z_SYNC_FLUSH)
        # §7.1.1.1: without context takeover the next message starts afresh;
        # dropping the object also frees its memory between messages.
        self._compressor = None if self.params.server_no_context_takeover else comp
        return out[:-4] if out.endswith(_TAIL) else out

    def decompress(self, payload: bytes, *, fin: bool, limit: int) -> bytes:
        """Inflate one frame, or one piece of a frame, of a compressed message (§7.2.2).

        Args:
            payload: the frame's (compressed) payload, or the next piece of it.
            fin: whether this is the message's last frame; the stripped tail is
                then appended before inflating.
            limit: how many more bytes the message may grow by.

        Returns:
            The inflated bytes of this frame.

        Raises:
            WebSocketError: 1009 if the output would exceed ``limit``;
                1007 if the data is not valid deflate.
        """
        decomp = self._decompressor
        if decomp is None or (decomp.eof and not self._in_message):
            # A stream ended with BFINAL leaves nothing to take over (§7.2.3.3), but
            # only a new message starts a new one: bytes after BFINAL in the same
            # message are padding, whichever piece of the message they arrive in.
            decomp = zlib.decompressobj(_zlib_wbits(self.params.client_max_window_bits))
        self._decompressor = decomp
        self._in_message = not fin
        out = self._inflate(decomp, payload, limit)
        if fin:
            out += self._inflate(decomp, _TAIL, limit - len(out))
            if self.params.client_no_context_takeover:
                self._decompressor = None
        return out

    @staticmethod
    def _inflate(decomp: zlib._Decompress, data: bytes, limit: int) -> bytes:
        """Inflate ``data`` producing at most ``limit`` bytes, else raise 1009."""
        if decomp.eof:
            return b""  # trailing bytes after BFINAL carry no data
        try:
            # Asking for one byte more than allowed tells "exactly at the limit"
            # from "over it" without inflating the rest of a bomb.
            out = decomp.decompress(data, limit + 1)
        except zlib.error as exc:
            raise WebSocketError(f"invalid compressed data: {exc}", close_code=1007) from None
        if len(out) > limit:
            raise WebSocketError(
                f"decompressed message exceeds limit by at least {len(out) - limit} bytes",
                close_code=1009,
            )
        return out
