"""Tests for prefork.protocol.websocket.protocol: messages, UTF-8, limits, closing."""

from __future__ import annotations

import random
import struct
import zlib
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefork.protocol.limits import WsLimits
from prefork.protocol.websocket.deflate import DeflateParams
from prefork.protocol.websocket.frames import Frame, FrameParser, Opcode, serialize_frame
from prefork.protocol.websocket.protocol import (
    BytesMessage,
    CloseReceived,
    ConnState,
    Event,
    InvalidState,
    Ping,
    Pong,
    TextMessage,
    WebSocketConnection,
)

MASK = b"\x01\x02\x03\x04"


def cf(opcode: Opcode, payload: bytes = b"", *, fin: bool = True, rsv1: bool = False) -> bytes:
    """A masked client frame."""
    return serialize_frame(Frame(opcode, payload, fin=fin, rsv1=rsv1), mask_key=MASK)


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


def chunkings(data: bytes) -> Iterator[list[bytes]]:
    """Whole, byte by byte, and three seeded random splittings."""
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    for seed in range(3):
        rng = random.Random(seed)
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, 6)))
        bounds = [0, *cuts, len(data)]
        yield [data[a:b] for a, b in zip(bounds, bounds[1:])]


def run(data: bytes, **kwargs: object) -> tuple[list[Event], list[Frame], WebSocketConnection]:
    """Feed ``data`` in every chunking; require identical results; return one."""
    results = []
    for chunks in chunkings(data):
        conn = WebSocketConnection(**kwargs)  # type: ignore[arg-type]
        events: list[Event] = []
        for chunk in chunks:
            conn.receive_data(chunk)
            events += conn.events_received()
        results.append((events, server_frames(conn.data_to_send()), conn))
    for events, frames, _ in results[1:]:
        assert (events, frames) == results[0][:2]
    return results[0]


def server_frames(data: bytes) -> list[Frame]:
    parser = FrameParser(max_payload=1 << 24, require_mask=False, allow_rsv1=True)
    parser.feed(data)
    frames = []
    while (frame := parser.next_frame()) is not None:
        frames.append(frame)
    return frames


def closed_with(code: int) -> Frame:
    return Frame(Opcode.CLOSE, struct.pack("!H", code))


# -- messages ----------------------------------------------------------------------


def test_text_and_binary_messages() -> None:
    events, frames, conn = run(cf(Opcode.TEXT, "κόσμε".encode()) + cf(Opcode.BINARY, b"\x00\xff"))
    assert events == [TextMessage("κόσμε"), BytesMessage(b"\x00\xff")]
    assert frames == [] and conn.state is ConnState.OPEN and not conn.close_expected()


def test_fragmented_message_with_interleaved_ping() -> None:
    data = (cf(Opcode.TEXT, b"frag", fin=False) + cf(Opcode.PING, b"hb")
            + cf(Opcode.CONT, b"men", fin=False) + cf(Opcode.PONG, b"x")
            + cf(Opcode.CONT, b"ted"))
    events, frames, _ = run(data)
    assert events == [Ping(b"hb"), Pong(b"x"), TextMessage("fragmented")]
    assert frames == [Frame(Opcode.PONG, b"hb")]


def test_fragmented_binary_with_empty_fragments() -> None:
    data = cf(Opcode.BINARY, b"", fin=False) + cf(Opcode.CONT, b"ab", fin=False) + cf(Opcode.CONT)
    assert run(data)[0] == [BytesMessage(b"ab")]


def test_trailing_data_is_processed_first() -> None:
    conn = WebSocketConnection(trailing_data=cf(Opcode.TEXT, b"early"))
    conn.receive_data(cf(Opcode.TEXT, b"late"))
    assert conn.events_received() == [TextMessage("early"), TextMessage("late")]
    assert conn.state is ConnState.OPEN


def test_trailing_partial_frame_is_completed_by_later_data() -> None:
    frame = cf(Opcode.TEXT, b"split")
    conn = WebSocketConnection(trailing_data=frame[:3])
    conn.receive_data(frame[3:])
    assert conn.events_received() == [TextMessage("split")]


def test_fifty_messages_in_one_feed() -> None:
    conn = WebSocketConnection()
    conn.receive_data(cf(Opcode.TEXT, b"chat message") * 50)
    assert conn.events_received() == [TextMessage("chat message")] * 50


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (cf(Opcode.CONT, b"x"), "continuation frame without a message in progress"),
        (cf(Opcode.TEXT, b"a", fin=False) + cf(Opcode.TEXT, b"b"),
         "TEXT frame while a fragmented message is in progress"),
        (cf(Opcode.BINARY, b"a", fin=False) + cf(Opcode.BINARY, b"b"),
         "BINARY frame while a fragmented message is in progress"),
    ],
)
def test_bad_fragment_sequences_close_1002(data: bytes, message: str) -> None:
    events, frames, conn = run(data)
    assert events == [CloseReceived(1002, message)]
    assert frames == [Frame(Opcode.CLOSE, close_payload(1002, message.encode()))]
    assert conn.state is ConnState.CLOSING and conn.close_expected()
    assert conn.last_error is not None and conn.last_error.close_code == 1002


# -- UTF-8 ----------------------------------------------------------------------------


def test_invalid_utf8_fails_before_the_final_fragment() -> None:
    conn = WebSocketConnection()
    conn.receive_data(cf(Opcode.TEXT, b"valid ", fin=False))
    conn.receive_data(cf(Opcode.CONT, b"\xce\xba\xff", fin=False))  # 0xff never valid
    events = conn.events_received()
    assert [e.code for e in events if isinstance(e, CloseReceived)] == [1007]
    assert server_frames(conn.data_to_send())[0].payload[:2] == b"\x03\xef"
    conn.receive_data(cf(Opcode.CONT, b"end"))  # ignored after failure
    assert conn.events_received() == []


def test_utf8_sequence_split_across_fragments_is_valid() -> None:
    snowman = "☃".encode()
    data = (cf(Opcode.TEXT, snowman[:1], fin=False) + cf(Opcode.CONT, snowman[1:2], fin=False)
            + cf(Opcode.CONT, snowman[2:]))
    assert run(data)[0] == [TextMessage("☃")]


@pytest.mark.parametrize("payload", [b"\xce\xba\xe1", b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80"])
def test_invalid_utf8_in_single_frame_closes_1007(payload: bytes) -> None:
    events, frames, _ = run(cf(Opcode.TEXT, payload))
    assert len(events) == 1 and isinstance(events[0], CloseReceived) and events[0].code == 1007
    assert frames[0].payload[:2] == b"\x03\xef"


def test_truncated_utf8_at_message_end_closes_1007() -> None:
    events = run(cf(Opcode.TEXT, b"ok", fin=False) + cf(Opcode.CONT, b"\xe2\x98"))[0]
    assert isinstance(events[-1], CloseReceived) and events[-1].code == 1007


# -- limits ----------------------------------------------------------------------------


def test_oversized_message_is_refused_at_the_frame_header() -> None:
    conn = WebSocketConnection(WsLimits(max_message_size=100, max_frame_size=1000))
    conn.receive_data(cf(Opcode.BINARY, b"x" * 60, fin=False))
    # Only the header of the second fragment: refused before its payload arrives.
    conn.receive_data(cf(Opcode.CONT, b"y" * 60)[:8])
    (event,) = conn.events_received()
    assert event == CloseReceived(1009, "message of at least 120 bytes exceeds limit of 100 bytes")
    assert server_frames(conn.data_to_send())[0].payload[:2] == b"\x03\xf1"


def test_oversized_frame_is_1009() -> None:
    events = run(cf(Opcode.BINARY, b"x" * 200),
                 limits=WsLimits(max_message_size=1000, max_frame_size=100))[0]
    assert events == [CloseReceived(1009, "frame with 200 bytes exceeds limit of 100 bytes")]


def test_message_exactly_at_the_limit_is_accepted() -> None:
    data = cf(Opcode.BINARY, b"x" * 50, fin=False) + cf(Opcode.CONT, b"x" * 50)
    assert run(data, limits=WsLimits(max_message_size=100))[0] == [BytesMessage(b"x" * 100)]


# -- closing -----------------------------------------------------------------------------


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1007, 1011, 1014, 3000, 4999])
def test_peer_close_is_echoed_and_completes(code: int) -> None:
    events, frames, conn = run(cf(Opcode.CLOSE, close_payload(code, "bye ☃".encode()))
                               + cf(Opcode.TEXT, b"after close is ignored"))
    assert events == [CloseReceived(code, "bye ☃")]
    assert frames == [closed_with(code)]
    assert conn.state is ConnState.CLOSED and conn.close_expected()


def test_empty_close_is_answered_with_empty_close() -> None:
    events, frames, conn = run(cf(Opcode.CLOSE))
    assert events == [CloseReceived(1005, "")]
    assert frames == [Frame(Opcode.CLOSE, b"")]
    assert conn.close_expected()


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535])
def test_invalid_close_code_is_1002(code: int) -> None:
    events, frames, _ = run(cf(Opcode.CLOSE, close_payload(code)))
    assert events == [CloseReceived(1002, f"invalid close code {code}")]
    assert frames[0].payload[:2] == b"\x03\xea"


def test_one_byte_close_payload_is_1002() -> None:
    events = run(cf(Opcode.CLOSE, b"\x03"))[0]
    assert events == [CloseReceived(1002, "close frame with a 1-byte payload")]


def test_invalid_utf8_close_reason_is_1007() -> None:
    events = run(cf(Opcode.CLOSE, close_payload(1000, b"\xff")))[0]
    assert events == [CloseReceived(1007, "close reason is not valid UTF-8")]


def test_server_initiated_close_handshake() -> None:
    conn = WebSocketConnection()
    conn.send_close(1001, "going away")
    assert server_frames(conn.data_to_send()) == [
        Frame(Opcode.CLOSE, close_payload(1001, b"going away"))]
    assert conn.state is ConnState.CLOSING and not conn.close_expected()
    with pytest.raises(InvalidState, match="can't send TEXT in state CLOSING"):
        conn.send_text("late")
    conn.send_close()  # idempotent
    # Data still arriving before the peer's close is delivered; pings are not answered.
    conn.receive_data(cf(Opcode.TEXT, b"in flight") + cf(Opcode.PING, b"p"))
    assert conn.data_to_send() == b""
    conn.receive_data(cf(Opcode.CLOSE, close_payload(1001)))
    assert conn.events_received() == [TextMessage("in flight"), Ping(b"p"), CloseReceived(1001)]
    assert conn.data_to_send() == b""  # no second close frame
    assert conn.state.name == "CLOSED" and conn.close_expected()


@pytest.mark.parametrize(("code", "reason"), [(1005, ""), (1006, ""), (999, ""), (1000, "x" * 124)])
def test_send_close_rejects_bad_arguments(code: int, reason: str) -> None:
    with pytest.raises(ValueError):
        WebSocketConnection().send_close(code, reason)


def test_eof_without_close_is_1006() -> None:
    conn = WebSocketConnection()
    conn.receive_data(cf(Opcode.TEXT, b"hi") + cf(Opcode.TEXT, b"partial")[:4])
    conn.receive_data(b"")
    assert conn.events_received() == [TextMessage("hi"), CloseReceived(1006, "")]
    assert conn.state is ConnState.CLOSED and conn.close_expected()
    conn.receive_data(b"")
    assert conn.events_received() == []


def test_eof_after_close_handshake_adds_no_event() -> None:
    conn = WebSocketConnection()
    conn.receive_data(cf(Opcode.CLOSE, close_payload(1000)))
    conn.receive_data(b"")
    assert conn.events_received() == [CloseReceived(1000, "")]


def test_eof_after_protocol_error_adds_no_event() -> None:
    conn = WebSocketConnection()
    conn.receive_data(b"\x81\x05hello")  # unmasked
    conn.receive_data(b"")
    assert conn.events_received() == [CloseReceived(1002, "client frame is not masked")]
    assert conn.state is ConnState.CLOSED


# -- sending -----------------------------------------------------------------------------


def test_send_messages_and_pings() -> None:
    conn = WebSocketConnection()
    conn.send_text("héllo")
    conn.send_binary(b"\x00" * 70000)
    conn.send_ping(b"1")
    conn.send_pong(b"2")
    assert server_frames(conn.data_to_send()) == [
        Frame(Opcode.TEXT, "héllo".encode()), Frame(Opcode.BINARY, b"\x00" * 70000),
        Frame(Opcode.PING, b"1"), Frame(Opcode.PONG, b"2")]
    with pytest.raises(ValueError, match="PING payload of 126 bytes exceeds 125"):
        conn.send_ping(b"x" * 126)


def test_send_after_failure_raises_once_the_close_is_flushed() -> None:
    conn = WebSocketConnection()
    conn.receive_data(cf(Opcode.CONT))
    conn.data_to_send()
    with pytest.raises(InvalidState, match="can't send BINARY in state CLOSING"):
        conn.send_binary(b"x")


@pytest.mark.parametrize("bad", [cf(Opcode.TEXT, b"x", rsv1=True), cf(Opcode.CLOSE, b"\x03\xe8")])
def test_replies_to_earlier_events_precede_our_close(bad: bytes) -> None:
    # Autobahn 3.2 / 7.x: a valid message, then a bad frame or a close, in one read.
    conn = WebSocketConnection()
    conn.receive_data(cf(Opcode.TEXT, b"echo me") + cf(Opcode.PING, b"p") + bad)
    events = conn.events_received()
    assert events[:2] == [TextMessage("echo me"), Ping(b"p")]
    assert isinstance(events[2], CloseReceived)
    conn.send_text("echo me")  # still allowed: our close is not flushed yet
    frames = server_frames(conn.data_to_send())
    assert [f.opcode for f in frames] == [Opcode.PONG, Opcode.TEXT, Opcode.CLOSE]
    assert conn.close_expected()
    with pytest.raises(InvalidState):
        conn.send_text("too late")


def test_invalid_utf8_fails_mid_frame_before_the_frame_completes() -> None:
    # Autobahn 6.4.3: one frame delivered in chunks; fail at the bad chunk.
    frame = cf(Opcode.TEXT, "κόσμε".encode() + b"\xf4\x90\x80\x80" + b"more text")
    conn = WebSocketConnection()
    conn.receive_data(frame[:8])
    assert conn.events_received() == []
    conn.receive_data(frame[8:20])  # includes the invalid sequence, not the end
    (event,) = conn.events_received()
    assert isinstance(event, CloseReceived) and event.code == 1007


def test_big_frame_streams_in_pieces_into_one_message() -> None:
    payload = bytes(range(256)) * 1000
    frame = cf(Opcode.BINARY, payload)
    conn = WebSocketConnection()
    for i in range(0, len(frame), 4099):  # odd chunk size: pieces start mid-mask
        conn.receive_data(frame[i : i + 4099])
    assert conn.events_received() == [BytesMessage(payload)]


# -- permessage-deflate --------------------------------------------------------------------


def deflate_frames(message: bytes, pieces: int = 1) -> bytes:
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    payload = (comp.compress(message) + comp.flush(zlib.Z_SYNC_FLUSH))[:-4]
    size = -(-len(payload) // pieces)
    chunks = [payload[i : i + size] for i in range(0, len(payload), size)]
    out = b""
    for i, chunk in enumerate(chunks):
        opcode = Opcode.TEXT if i == 0 else Opcode.CONT
        out += cf(opcode, chunk, fin=i == len(chunks) - 1, rsv1=i == 0)
    return out


def test_compressed_messages_are_inflated() -> None:
    data = deflate_frames("compressed ☃ ".encode() * 100, pieces=3) + cf(Opcode.TEXT, b"plain")
    events = run(data, deflate=DeflateParams())[0]
    assert events == [TextMessage("compressed ☃ " * 100), TextMessage("plain")]


def test_sent_messages_are_compressed_with_rsv1() -> None:
    conn = WebSocketConnection(deflate=DeflateParams())
    conn.send_text("abc" * 100)
    (frame,) = server_frames(conn.data_to_send())
    assert frame.rsv1 and len(frame.payload) < 30
    assert zlib.decompressobj(-15).decompress(frame.payload + b"\x00\x00\xff\xff") == b"abc" * 100


def test_rsv1_without_deflate_is_1002() -> None:
    events = run(deflate_frames(b"abc"))[0]
    assert events == [CloseReceived(1002, "RSV1 set without a negotiated extension")]


def test_compressed_zip_bomb_is_1009() -> None:
    data = deflate_frames(bytes(8 * 1024 * 1024), pieces=4)
    conn = WebSocketConnection(WsLimits(max_message_size=1024 * 1024), deflate=DeflateParams())
    conn.receive_data(data)
    (event,) = conn.events_received()
    assert isinstance(event, CloseReceived) and event.code == 1009


# -- fuzz invariant ---------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.binary(max_size=40), max_size=8), st.booleans())
def test_junk_never_raises_and_ends_at_most_once(chunks: list[bytes], deflate: bool) -> None:
    conn = WebSocketConnection(WsLimits(max_message_size=64, max_frame_size=64),
                               deflate=DeflateParams() if deflate else None)
    for chunk in [*chunks, b""]:
        conn.receive_data(chunk)  # errors become close frames, never exceptions
    events = conn.events_received()
    closes = [e for e in events if isinstance(e, CloseReceived)]
    assert len(closes) == 1 and events[-1] is closes[0]
    assert conn.state is ConnState.CLOSED and conn.close_expected()


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([Opcode.TEXT, Opcode.BINARY]), st.binary(max_size=300),
       st.binary(min_size=4, max_size=4))
def test_frame_round_trip(opcode: Opcode, payload: bytes, mask: bytes) -> None:
    if opcode is Opcode.TEXT:
        payload = payload.decode("latin-1").encode("utf-8")
    parser = FrameParser(max_payload=1 << 24)
    parser.feed(serialize_frame(Frame(opcode, payload), mask_key=mask))
    assert parser.next_frame() == Frame(opcode, payload)


def test_large_payloads_are_queued_uncopied_after_their_header() -> None:
    """A large payload goes to the transport as its own buffer (scatter-gather), small
    frames as one buffer each; joined, the buffers are the same bytes as data_to_send."""
    conn = WebSocketConnection()
    big, mutable = bytes(range(256)) * 400, bytearray(b"m" * 20_000)
    conn.send_binary(big)
    conn.send_text("hi")
    conn.send_binary(mutable)  # type: ignore[arg-type]
    mutable[:] = b"x" * len(mutable)  # changed after the send: must not change what is sent
    chunks = conn.chunks_to_send()
    assert len(chunks) == 5 and chunks[1] is big  # head, big, head + "hi", head, copy of mutable
    frames = server_frames(b"".join(chunks))
    assert frames == [Frame(Opcode.BINARY, big), Frame(Opcode.TEXT, b"hi"), Frame(Opcode.BINARY, b"m" * 20_000)]
    assert conn.chunks_to_send() == [] and conn.data_to_send() == b""
