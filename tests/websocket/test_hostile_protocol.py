"""Issue 12 in the sans-IO WebSocket connection: pong coalescing (a ping flood from
a peer that does not read), the per-worker inflate budget, failing on the I/O
layer's behalf (message timeout), and the message-in-progress bookkeeping."""

from __future__ import annotations

import struct
import zlib

import pytest

from prefork.protocol.websocket.budget import InflateBudget
from prefork.protocol.websocket.deflate import DeflateParams
from prefork.protocol.websocket.frames import Frame, FrameParser, Opcode, serialize_frame
from prefork.protocol.websocket.protocol import (
    BytesMessage,
    CloseReceived,
    ConnState,
    Ping,
    TextMessage,
    WebSocketConnection,
)
from tests.helpers import feed_variants

KiB = 1024

MASK = b"\x05\x06\x07\x08"


def cf(opcode: Opcode, payload: bytes = b"", *, fin: bool = True, rsv1: bool = False) -> bytes:
    return serialize_frame(Frame(opcode, payload, fin=fin, rsv1=rsv1), mask_key=MASK)


def sent(conn: WebSocketConnection) -> list[Frame]:
    parser = FrameParser(max_payload=1 << 24, require_mask=False, allow_rsv1=True)
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


# -- the inflate budget ------------------------------------------------------------------


def deflated(message: bytes) -> bytes:
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    return (comp.compress(message) + comp.flush(zlib.Z_SYNC_FLUSH))[:-4]


def one_stream(*parts: bytes) -> list[bytes]:
    """The compressed pieces of one message (one compressor; only the last tail stripped)."""
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    out = [comp.compress(part) + comp.flush(zlib.Z_SYNC_FLUSH) for part in parts]
    out[-1] = out[-1][:-4]
    return out


def unfinished(size: int) -> bytes:
    """The first frame (RSV1, no FIN) of a compressed message: ``size`` bytes once inflated."""
    return cf(Opcode.BINARY, one_stream(b"a" * size)[0] + b"\x00\x00\xff\xff", fin=False, rsv1=True)


def connection(budget: InflateBudget) -> WebSocketConnection:
    return WebSocketConnection(deflate=DeflateParams(), inflate_budget=budget)


BUDGET_SPENT = CloseReceived(1009, "unfinished compressed messages would hold over 102400 bytes "
                                   "of this worker's inflate budget")


def test_unfinished_messages_share_the_workers_budget() -> None:
    budget = InflateBudget(100 * KiB)
    first, second = connection(budget), connection(budget)
    first.receive_data(unfinished(80 * KiB))
    assert first.events_received() == [] and budget.used == 80 * KiB
    second.receive_data(unfinished(30 * KiB))
    assert second.events_received() == [BUDGET_SPENT]
    assert sent(second) == [Frame(Opcode.CLOSE, struct.pack("!H", 1009) + BUDGET_SPENT.reason.encode())]
    assert budget.used == 80 * KiB  # the refused message holds nothing
    first.receive_data(cf(Opcode.CONT, one_stream(b"b")[0]))  # the end of the first message
    assert first.events_received() == [BytesMessage(b"a" * 80 * KiB + b"b")]
    assert budget.used == 0


def test_whole_messages_pass_when_the_budget_is_spent() -> None:
    budget = InflateBudget(100 * KiB)
    hog, whole = connection(budget), connection(budget)
    hog.receive_data(unfinished(100 * KiB))
    assert budget.used == 100 * KiB
    whole.receive_data(cf(Opcode.BINARY, deflated(b"z" * 500 * KiB), rsv1=True))
    assert whole.events_received() == [BytesMessage(b"z" * 500 * KiB)]


@pytest.mark.parametrize("end", ["eof", "abort", "peer-close", "protocol-error", "fail"])
def test_an_ended_connection_gives_its_budget_back(end: str) -> None:
    budget = InflateBudget(100 * KiB)
    conn = connection(budget)
    conn.receive_data(unfinished(60 * KiB))
    assert conn.message_in_progress and budget.used == 60 * KiB
    if end == "eof":
        conn.receive_data(b"")
    elif end == "abort":
        conn.abort()
    elif end == "peer-close":
        conn.receive_data(cf(Opcode.CLOSE, struct.pack("!H", 1000)))
    elif end == "protocol-error":
        conn.receive_data(cf(Opcode.TEXT, b"a new message inside the old one"))
    else:
        conn.fail(1008, "message not finished within 1 s")
    assert budget.used == 0 and not conn.message_in_progress


def test_budget_refusal_is_the_same_however_the_bytes_are_split() -> None:
    head, tail = one_stream(b"a" * 60 * KiB, b"b" * 50 * KiB)
    data = cf(Opcode.BINARY, head, fin=False, rsv1=True) + cf(Opcode.CONT, tail, fin=False)

    def drive(chunks: list[bytes]) -> list[object]:
        budget = InflateBudget(100 * KiB)
        conn = connection(budget)
        events: list[object] = []
        for chunk in chunks:
            conn.receive_data(chunk)
            events += conn.events_received()
        return [*events, budget.used]

    assert feed_variants(drive, data, seeds=range(3)) == [BUDGET_SPENT, 0]


def test_fail_closes_on_the_io_layers_behalf() -> None:
    conn = WebSocketConnection()
    conn.receive_data(cf(Opcode.TEXT, b"half a mess", fin=False))
    assert conn.message_in_progress
    conn.fail(1008, "message not finished within 60 s")
    assert conn.events_received() == [CloseReceived(1008, "message not finished within 60 s")]
    assert sent(conn) == [Frame(Opcode.CLOSE, struct.pack("!H", 1008) + b"message not finished within 60 s")]
    assert conn.close_expected() and conn.state is ConnState.CLOSING and not conn.message_in_progress
    conn.receive_data(cf(Opcode.CONT, b"age"))  # nothing is processed after a failure
    conn.fail(1008, "twice")
    assert conn.events_received() == [] and sent(conn) == []
