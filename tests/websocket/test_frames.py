"""Tests for prefork.protocol.websocket.frames: every length form, mask and violation.

Every valid input is fed whole, byte by byte and in seeded random splits, and
must give the same frames (STYLE.md "three kinds of parser tests").
"""

from __future__ import annotations

import os
import random
import struct
from collections.abc import Iterator

import pytest

from prefork.protocol.errors import WebSocketError
from prefork.protocol.websocket.frames import (
    CloseCode,
    Frame,
    FrameHeader,
    FrameParser,
    Opcode,
    apply_mask,
    serialize_frame,
)

MASK = b"\x37\xfa\x21\x3d"
MAX_PAYLOAD = 1 << 20  # the limit these tests parse under, unless one says otherwise


def chunkings(data: bytes, seeds: int = 5) -> Iterator[list[bytes]]:
    """Yield ``data`` whole, byte by byte, and split at seeded random points."""
    yield [data]
    yield [data[i : i + 1] for i in range(len(data))]
    for seed in range(seeds):
        rng = random.Random(seed)
        cuts = sorted(rng.sample(range(1, len(data)), min(len(data) - 1, rng.randint(1, 8))))
        bounds = [0, *cuts, len(data)]
        yield [data[a:b] for a, b in zip(bounds, bounds[1:])]


def parse_all(chunks: list[bytes], **kwargs: object) -> list[Frame]:
    """Feed chunks one at a time, draining frames after each."""
    kwargs.setdefault("max_payload", MAX_PAYLOAD)
    parser = FrameParser(**kwargs)  # type: ignore[arg-type]
    frames = []
    for chunk in chunks:
        parser.feed(chunk)
        while (frame := parser.next_frame()) is not None:
            frames.append(frame)
    assert parser.buffered == 0
    return frames


def masked(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0) -> bytes:
    """A client frame with the minimal length form, built by hand."""
    n = len(payload)
    b0 = (0x80 if fin else 0) | rsv | opcode
    if n < 126:
        head = bytes([b0, 0x80 | n])
    elif n < 65536:
        head = bytes([b0, 0x80 | 126]) + struct.pack("!H", n)
    else:
        head = bytes([b0, 0x80 | 127]) + struct.pack("!Q", n)
    return head + MASK + apply_mask(payload, MASK)


def parse_error(data: bytes, **kwargs: object) -> WebSocketError:
    """Parse ``data`` expecting a WebSocketError; also check it byte by byte."""
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        with pytest.raises(WebSocketError) as info:
            parse_all(chunks, **kwargs)
    return info.value


# -- valid frames in every length form --------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_length_forms_round_trip_in_any_chunking(size: int) -> None:
    payload = os.urandom(size)
    data = masked(Opcode.BINARY, payload)
    for chunks in chunkings(data) if size < 200 else [[data], list(_halves(data))]:
        assert parse_all(chunks) == [Frame(Opcode.BINARY, payload)]


def _halves(data: bytes) -> Iterator[bytes]:
    mid = len(data) // 2
    yield data[:3]
    yield data[3:mid]
    yield data[mid:]


@pytest.mark.parametrize(
    ("head", "size"),
    [
        (bytes([0x82, 0x80 | 126]) + struct.pack("!H", 5), 5),
        (bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 5), 5),
        (bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 300), 300),
    ],
)
def test_non_minimal_lengths_are_accepted(head: bytes, size: int) -> None:
    payload = b"x" * size
    data = head + MASK + apply_mask(payload, MASK)
    for chunks in chunkings(data):
        assert parse_all(chunks) == [Frame(Opcode.BINARY, payload)]


def test_fifty_frames_in_one_feed_give_fifty_frames() -> None:
    data = masked(Opcode.TEXT, "héllo wörld".encode()) * 50
    for chunks in chunkings(data):
        frames = parse_all(chunks)
        assert len(frames) == 50
        assert all(f == Frame(Opcode.TEXT, "héllo wörld".encode()) for f in frames)


def test_mixed_frames_keep_their_bits_and_order() -> None:
    data = (
        masked(Opcode.TEXT, b"a", fin=False)
        + masked(Opcode.PING, b"p")
        + masked(Opcode.CONT, b"b")
        + masked(Opcode.CLOSE, b"\x03\xe8")
    )
    expected = [
        Frame(Opcode.TEXT, b"a", fin=False),
        Frame(Opcode.PING, b"p"),
        Frame(Opcode.CONT, b"b"),
        Frame(Opcode.CLOSE, b"\x03\xe8"),
    ]
    for chunks in chunkings(data):
        assert parse_all(chunks) == expected


def test_unmasked_frames_accepted_when_mask_not_required() -> None:
    data = serialize_frame(Frame(Opcode.BINARY, b"abc"))
    assert parse_all([data], require_mask=False) == [Frame(Opcode.BINARY, b"abc")]


def test_16_mib_masked_frame_unmasks_correctly() -> None:
    # Its speed is a benchmark's business (scripts/bench.py), not a unit test's.
    payload = os.urandom(16 * 1024 * 1024)
    data = masked(Opcode.BINARY, payload)
    parser = FrameParser(max_payload=32 * 1024 * 1024)
    frames = []
    for i in range(0, len(data), 65536):  # fed like a 64 KiB recv buffer would
        parser.feed(data[i : i + 65536])
        frame = parser.next_frame()
        if frame is not None:
            frames.append(frame)
    assert len(frames) == 1 and frames[0].payload == payload
    assert parser.next_frame() is None


def test_on_header_sees_header_before_payload_arrives() -> None:
    seen: list[FrameHeader] = []
    parser = FrameParser(max_payload=MAX_PAYLOAD, on_header=seen.append)
    data = masked(Opcode.BINARY, b"x" * 1000)
    parser.feed(data[:8])  # header + mask only
    assert parser.next_frame() is None
    assert seen == [FrameHeader(Opcode.BINARY, True, False, 1000, MASK)]
    parser.feed(data[8:])
    assert parser.next_frame() == Frame(Opcode.BINARY, b"x" * 1000)
    assert len(seen) == 1


# -- serialisation ---------------------------------------------------------------


@pytest.mark.parametrize(("size", "head_len"), [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)])
def test_serialize_uses_minimal_length_and_no_mask(size: int, head_len: int) -> None:
    out = serialize_frame(Frame(Opcode.BINARY, b"z" * size))
    assert len(out) == head_len + size
    assert out[1] & 0x80 == 0
    assert parse_all([out], require_mask=False) == [Frame(Opcode.BINARY, b"z" * size)]


def test_serialize_bits_and_mask() -> None:
    frame = Frame(Opcode.TEXT, b"hi", fin=False, rsv1=True)
    out = serialize_frame(frame, mask_key=MASK)
    assert out[0] == 0x41 and out[1] == 0x82 and out[2:6] == MASK
    assert parse_all([out], allow_rsv1=True) == [frame]
    with pytest.raises(ValueError, match="mask key must be 4 bytes"):
        serialize_frame(frame, mask_key=b"abc")


def test_rfc_example_masked_hello() -> None:
    # RFC 6455 §5.7: a single-frame masked text message "Hello".
    data = bytes.fromhex("818537fa213d7f9f4d5158")
    assert parse_all([data]) == [Frame(Opcode.TEXT, b"Hello")]


# -- violations and their close codes --------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (masked(0x3, b""), "unknown opcode 0x3"),
        (masked(0xB, b""), "unknown opcode 0xB"),
        (masked(Opcode.TEXT, b"x", rsv=0x20), "RSV2/RSV3 set without a negotiated extension"),
        (masked(Opcode.TEXT, b"x", rsv=0x10), "RSV2/RSV3 set without a negotiated extension"),
        (masked(Opcode.TEXT, b"x", rsv=0x40), "RSV1 set without a negotiated extension"),
        (serialize_frame(Frame(Opcode.TEXT, b"x")), "client frame is not masked"),
        (masked(Opcode.PING, b"", fin=False), "fragmented PING frame"),
        (masked(Opcode.CLOSE, b"\x03\xe8", fin=False), "fragmented CLOSE frame"),
        (masked(Opcode.PING, b"x" * 126), "PING frame payload exceeds 125 bytes"),
        (masked(Opcode.PONG, b"x" * 126), "PONG frame payload exceeds 125 bytes"),
        (bytes([0x82, 0xFF]) + struct.pack("!Q", 1 << 63) + MASK,
         "64-bit payload length has its most significant bit set"),
    ],
)
def test_protocol_violations_close_1002(data: bytes, message: str) -> None:
    err = parse_error(data)
    assert err.close_code == CloseCode.PROTOCOL_ERROR
    assert str(err) == message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (masked(Opcode.CONT, b"x", rsv=0x40), "RSV1 set on a CONT frame"),
        (masked(Opcode.PING, b"x", rsv=0x40), "RSV1 set on a PING frame"),
    ],
)
def test_rsv1_only_on_first_data_frame_with_deflate(data: bytes, message: str) -> None:
    err = parse_error(data, allow_rsv1=True)
    assert (err.close_code, str(err)) == (1002, message)


def test_oversized_payload_is_refused_at_the_header() -> None:
    parser = FrameParser(max_payload=1000)
    head = bytes([0x82, 0x80 | 127]) + struct.pack("!Q", 1 << 40) + MASK
    parser.feed(head)  # no payload bytes at all: refused before buffering
    with pytest.raises(WebSocketError) as info:
        parser.next_frame()
    assert info.value.close_code == CloseCode.MESSAGE_TOO_BIG
    assert str(info.value) == "frame with 1099511627776 bytes exceeds limit of 1000 bytes"


def test_payload_at_the_limit_is_accepted() -> None:
    assert parse_all([masked(Opcode.BINARY, b"x" * 1000)], max_payload=1000) != []
    err = parse_error(masked(Opcode.BINARY, b"x" * 1001), max_payload=1000)
    assert err.close_code == 1009


def test_violation_in_second_frame_after_a_good_one() -> None:
    parser = FrameParser(max_payload=MAX_PAYLOAD)
    parser.feed(masked(Opcode.TEXT, b"ok") + masked(0x5, b""))
    assert parser.next_frame() == Frame(Opcode.TEXT, b"ok")
    with pytest.raises(WebSocketError, match="unknown opcode 0x5"):
        parser.next_frame()


def test_stream_data_returns_pieces_that_reassemble() -> None:
    payload = os.urandom(1000)
    data = masked(Opcode.TEXT, payload, fin=False) + masked(Opcode.PING, b"ping")
    for chunks in chunkings(data):
        frames = parse_all(chunks, stream_data=True)
        assert frames[0].opcode is Opcode.TEXT
        assert all(f.opcode is Opcode.CONT and not f.rsv1 for f in frames[1:-1])
        assert not any(f.fin for f in frames[:-1])  # the data frame had FIN clear
        assert b"".join(f.payload for f in frames[:-1]) == payload
        assert frames[-1] == Frame(Opcode.PING, b"ping")  # control frames stay whole


@pytest.mark.parametrize("drain_each", [True, False])
def test_stream_data_from_a_reused_receive_buffer(drain_each: bool) -> None:
    """Pieces cut straight from fed data (the middle of a frame, nothing buffered)
    must not depend on the caller's buffer afterwards, whether or not frames are
    drained after every feed."""
    big, small = os.urandom(200_000), os.urandom(3000)
    data = masked(Opcode.BINARY, big) + masked(Opcode.TEXT, small, fin=False) + masked(Opcode.CONT, b"end")
    for seed in range(4):
        rng = random.Random(seed)
        receive_buffer = bytearray(70_000)
        parser = FrameParser(stream_data=True, max_payload=1 << 20)
        frames: list[Frame] = []
        pos = 0
        while pos < len(data):
            n = min(rng.choice([1, 7, 4096, 65536, 70_000]), len(data) - pos)
            receive_buffer[:n] = data[pos : pos + n]
            with memoryview(receive_buffer) as view:
                parser.feed(view[:n])
            receive_buffer[:] = bytes(len(receive_buffer))  # the next recv overwrites it
            pos += n
            if drain_each or pos == len(data):
                while (frame := parser.next_frame()) is not None:
                    frames.append(frame)
        assert parser.buffered == 0
        first_end = next(i for i, f in enumerate(frames) if f.fin)
        assert b"".join(f.payload for f in frames[: first_end + 1]) == big
        assert frames[0].opcode is Opcode.BINARY
        assert b"".join(f.payload for f in frames[first_end + 1 :]) == small + b"end"
        assert frames[-1].fin and frames[-1].opcode is Opcode.CONT


def test_stream_data_final_piece_carries_fin_and_rsv1_on_first() -> None:
    data = masked(Opcode.BINARY, b"abcdefgh", rsv=0x40)
    parser = FrameParser(max_payload=MAX_PAYLOAD, stream_data=True, allow_rsv1=True)
    parser.feed(data[:7])  # 2-byte header, 4-byte key, 1 payload byte
    assert parser.next_frame() == Frame(Opcode.BINARY, b"a", fin=False, rsv1=True)
    assert parser.next_frame() is None
    parser.feed(data[7:])
    assert parser.next_frame() == Frame(Opcode.CONT, b"bcdefgh", fin=True)


def test_opcode_helpers() -> None:
    assert Opcode.PING.is_control and Opcode.CLOSE.is_control
    assert not Opcode.CONT.is_control and not Opcode.BINARY.is_control


@pytest.mark.parametrize("size", [1, 3, 4, 5, 125, 126, 65537])
def test_mask_implementations_agree_with_the_rfc_definition(size: int) -> None:
    # RFC 6455 §5.3: j = i MOD 4; transformed-octet-i = original-octet-i XOR masking-key-octet-j
    from prefork.protocol.websocket import frames

    payload = bytes((i * 7 + 3) % 256 for i in range(size))
    key = b"\x01\x80\xfe\x37"
    expected = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    assert frames._apply_mask_translate(payload, key) == expected
    assert frames.apply_mask(payload, key) == expected
    assert frames.apply_mask(memoryview(payload), key) == expected
