"""Issue 12 in the sans-IO WebSocket connection: pong coalescing (a ping flood from
a peer that does not read), the per-worker inflate budget, failing on the I/O
layer's behalf (message timeout), and the message-in-progress bookkeeping."""

from __future__ import annotations

import struct

from prefork.websocket.frames import Frame, FrameParser, Opcode, serialize_frame
from prefork.websocket.protocol import CloseReceived, Ping, TextMessage, WebSocketConnection

MASK = b"\x05\x06\x07\x08"


def cf(opcode: Opcode, payload: bytes = b"", *, fin: bool = True, rsv1: bool = False) -> bytes:
    return serialize_frame(Frame(opcode, payload, fin=fin, rsv1=rsv1), mask_key=MASK)


def sent(conn: WebSocketConnection) -> list[Frame]:
    parser = FrameParser(require_mask=False, allow_rsv1=True)
    parser.feed(conn.data_to_send())
    frames = []
    while (frame := parser.next_frame()) is not None:
        frames.append(frame)
    return frames


# -- pongs -------------------------------------------------------------------------------


def test_every_ping_is_answered_while_the_peer_reads() -> None:
    # Autobahn 2.10: ten pings in one read get ten pongs, in order.
    conn = WebSocketConnection()
    conn.receive_data(b"".join(cf(Opcode.PING, b"p%d" % i) for i in range(10)))
    assert sent(conn) == [Frame(Opcode.PONG, b"p%d" % i) for i in range(10)]
    assert conn.take_coalesced() == 0


def test_held_pongs_keep_only_the_latest_and_count_the_rest() -> None:
    conn = WebSocketConnection()
    conn.hold_pongs = True  # the I/O layer's socket is blocked
    for n in range(1000):
        conn.receive_data(cf(Opcode.PING, b"%03d" % n))
    assert conn.events_received() == [Ping(b"%03d" % n) for n in range(1000)]
    assert sent(conn) == []  # nothing queued while held
    assert conn.take_coalesced() == 999 * (2 + 3)  # the pongs never sent, as wire bytes
    assert conn.take_coalesced() == 0
    conn.hold_pongs = False
    assert sent(conn) == [Frame(Opcode.PONG, b"999")]  # only the most recent (RFC 6455 §5.5.3)
    assert sent(conn) == []


def test_a_held_pong_goes_out_before_our_close() -> None:
    conn = WebSocketConnection()
    conn.hold_pongs = True
    conn.receive_data(cf(Opcode.PING, b"last"))
    conn.send_close(1001, "bye")
    assert sent(conn) == [Frame(Opcode.PONG, b"last"), Frame(Opcode.CLOSE, struct.pack("!H", 1001) + b"bye")]
    conn.receive_data(cf(Opcode.PING, b"after"))  # §5.5.1: nothing after our close
    assert sent(conn) == []


def test_a_held_pong_precedes_the_echo_of_the_peers_close() -> None:
    conn = WebSocketConnection()
    conn.hold_pongs = True
    conn.receive_data(cf(Opcode.TEXT, b"hi") + cf(Opcode.PING, b"x") + cf(Opcode.CLOSE, struct.pack("!H", 1000)))
    assert conn.events_received() == [TextMessage("hi"), Ping(b"x"), CloseReceived(1000, "")]
    assert sent(conn) == [Frame(Opcode.PONG, b"x"), Frame(Opcode.CLOSE, struct.pack("!H", 1000))]
