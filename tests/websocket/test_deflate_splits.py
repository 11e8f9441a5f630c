"""permessage-deflate: what a message inflates to never depends on where TCP splits it.

Issue 12: a read that ended right after a deflate block with BFINAL set made the
next piece of the same message start a new decompressor, so the padding after
the final block (RFC 7692 §7.2.3.3) was inflated as a new stream: 1007 in
pieces, the message whole. Every case is fed whole, byte by byte (so every
split point, the one right after BFINAL included) and in random pieces, with
and without context takeover, and must give the same, explicit events.
"""

from __future__ import annotations

import zlib

import pytest

from prefork.protocol.websocket.deflate import DeflateParams
from prefork.protocol.websocket.frames import Frame, FrameParser, Opcode, serialize_frame
from prefork.protocol.websocket.protocol import BytesMessage, TextMessage, WebSocketConnection
from tests.helpers import feed_variants

MASK = b"\x0a\x0b\x0c\x0d"
HELLO = b"hello, deflate " * 40
SNOW = "snowman \u2603 ".encode() * 30


def cf(opcode: Opcode, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    """A masked client frame."""
    return serialize_frame(Frame(opcode, payload, fin=fin, rsv1=rsv1), mask_key=MASK)


def bfinal(message: bytes) -> bytes:
    """A whole raw-deflate stream: its last block has BFINAL set (zlib's Z_FINISH)."""
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    return comp.compress(message) + comp.flush(zlib.Z_FINISH)


class Client:
    """A client compressor: sync flush, tail stripped; a fresh one per message without takeover."""

    def __init__(self, takeover: bool) -> None:
        self.takeover = takeover
        self._comp = zlib.compressobj(6, zlib.DEFLATED, -15)

    def compress(self, message: bytes) -> bytes:
        if not self.takeover:
            self._comp = zlib.compressobj(6, zlib.DEFLATED, -15)
        data = self._comp.compress(message) + self._comp.flush(zlib.Z_SYNC_FLUSH)
        assert data.endswith(b"\x00\x00\xff\xff")
        return data[:-4]


def fragments(opcode: Opcode, payload: bytes, cuts: list[int]) -> bytes:
    """One compressed message as frames cut at ``cuts`` (RSV1 on the first frame only)."""
    bounds = [0, *cuts, len(payload)]
    out = b""
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        out += cf(opcode if i == 0 else Opcode.CONT, payload[a:b], fin=b == len(payload), rsv1=i == 0)
    return out


def drive(takeover: bool):  # type: ignore[no-untyped-def]
    params = DeflateParams(client_no_context_takeover=not takeover)

    def run(chunks: list[bytes]) -> list[object]:
        conn = WebSocketConnection(deflate=params)
        events: list[object] = []
        for chunk in chunks:
            conn.receive_data(chunk)
            events += conn.events_received()
        parser = FrameParser(max_payload=1 << 24, require_mask=False, allow_rsv1=True)
        parser.feed(conn.data_to_send())
        while (frame := parser.next_frame()) is not None:
            events.append(frame)  # nothing is sent back: a close here would be a failure
        return events

    return run


def cases(takeover: bool) -> dict[str, tuple[bytes, list[object]]]:
    client = Client(takeover)
    stream = bfinal(HELLO)
    first, second = client.compress(HELLO), client.compress(HELLO + b"again")
    return {
        # §7.2.3.3: BFINAL, then a padding byte (and the tail the receiver appends).
        "bfinal-padding": (cf(Opcode.BINARY, stream + b"\x00", rsv1=True), [BytesMessage(HELLO)]),
        "bfinal-junk": (cf(Opcode.BINARY, stream + b"\x00junk after the final block", rsv1=True),
                        [BytesMessage(HELLO)]),
        # The first frame ends exactly at the end of the final block.
        "bfinal-frame-boundary": (fragments(Opcode.TEXT, bfinal(SNOW) + b"\x00\x01\x02", [len(bfinal(SNOW))]),
                                  [TextMessage(SNOW.decode())]),
        "bfinal-then-next-message": (
            cf(Opcode.BINARY, stream + b"\x00", rsv1=True) + cf(Opcode.TEXT, Client(True).compress(SNOW), rsv1=True),
            [BytesMessage(HELLO), TextMessage(SNOW.decode())]),
        # Sync-flushed messages; with takeover the second refers back into the first.
        "sync-fragmented": (fragments(Opcode.BINARY, first, [3, len(first) // 2])
                            + fragments(Opcode.BINARY, second, [1, len(second) - 1]),
                            [BytesMessage(HELLO), BytesMessage(HELLO + b"again")]),
    }


@pytest.mark.parametrize("takeover", [True, False], ids=["takeover", "no-takeover"])
@pytest.mark.parametrize("name", ["bfinal-padding", "bfinal-junk", "bfinal-frame-boundary",
                                  "bfinal-then-next-message", "sync-fragmented"])
def test_message_content_is_independent_of_splits(takeover: bool, name: str) -> None:
    data, expected = cases(takeover)[name]
    got = feed_variants(drive(takeover), data, trailing=cf(Opcode.TEXT, b"plain after"))
    assert got == expected
