"""Unit tests for ``prefork.staging.body_stream``: the bounded pipe of a streamed body.

Strategy: every read API (``read(n)``, ``readinto``, ``readline`` with and without a
size, ``readall``, ``chunks()``, line iteration) must give the same bytes whatever
the split of the feeds: whole, byte by byte, and random chunk sizes drawn from a
seeded ``random.Random``; ``io.BytesIO`` over the same bytes is the oracle. Each
API runs single-threaded (all fed, then ended) and across two threads, where a
producer plays the event loop: it stops feeding when ``feed`` returns False and
goes on only when ``on_room`` fires. Blocking is checked without sleeps: a helper
thread runs the blocking call, the test waits (with a deadline) until that thread
waits on the stream's condition, then acts, then joins it with a timeout.
"""

from __future__ import annotations

import io
import random
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from prefork.staging.body_stream import DEFAULT_BOUND, BodyStream, ClientDisconnected

pytestmark = pytest.mark.timeout(60)  # a backstop: no test here should ever block

JOIN_TIMEOUT = 10.0  # seconds; generous, only ever reached when something is wrong

#: A body of lines of varied lengths (some empty), ending in a line without a newline.
LINES_BODY = b"".join(b"line %d %s\n" % (i, b"x" * (i * 7 % 23)) for i in range(60)) + b"\n\n" \
    + b"a last line without a newline"
#: Arbitrary bytes, newlines included by chance, for the byte-oriented APIs.
BINARY_BODY = random.Random(1234).randbytes(5000)

SPLITS = ["whole", "bytes", "random0", "random1", "random2", "random3"]


def split(data: bytes, how: str) -> list[bytes]:
    """``data`` cut into feeds: whole, byte by byte, or random sizes (1..97) from a seeded RNG."""
    if how == "whole":
        return [data]
    if how == "bytes":
        return [data[i:i + 1] for i in range(len(data))]
    rng = random.Random(int(how.removeprefix("random")))
    pieces, pos = [], 0
    while pos < len(data):
        n = rng.randint(1, 97)
        pieces.append(data[pos:pos + n])
        pos += n
    return pieces


def fed(data: bytes, how: str = "whole", bound: int = DEFAULT_BOUND) -> BodyStream:
    """A stream with all of ``data`` fed in the ``how`` split, and ended."""
    stream = BodyStream(bound=bound)
    for piece in split(data, how):
        stream.feed(piece)
    stream.end()
    return stream


def deadline_poll(condition: Callable[[], bool], what: str, timeout: float = JOIN_TIMEOUT) -> None:
    """Wait until ``condition()`` holds, polling, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.001)  # a poll interval, not a wait for correctness


def waiters(stream: BodyStream) -> int:
    """Threads waiting on the stream's condition (CPython's ``Condition._waiters``)."""
    return len(stream._cond._waiters)  # type: ignore[attr-defined]


class Call(threading.Thread):
    """Run ``fn()`` on another thread, keeping its result or its exception."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.fn = fn
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.fn()
        except BaseException as exc:  # handed back to the test thread
            self.error = exc

    def finish(self) -> Any:
        """Join with a timeout, then return the result (or re-raise the exception)."""
        self.join(JOIN_TIMEOUT)
        assert not self.is_alive(), "the thread is still blocked"
        if self.error is not None:
            raise self.error
        return self.result


def blocked(stream: BodyStream, fn: Callable[[], Any], *, consumed: int = 0) -> Call:
    """Start ``fn`` on a thread and return once it waits on ``stream`` (having read ``consumed``)."""
    call = Call(fn)
    call.start()
    deadline_poll(lambda: waiters(stream) == 1 and stream.consumed == consumed,
                  "the reader to block")
    assert call.is_alive()
    return call


class Producer(threading.Thread):
    """The event loop's side: feed pieces, pausing when ``feed`` returns False until ``on_room``."""

    def __init__(self, pieces: list[bytes], bound: int) -> None:
        super().__init__(daemon=True)
        self.pieces = pieces
        self.room = threading.Event()
        self.stream = BodyStream(bound=bound, on_room=self._on_room)
        self.pauses = 0
        self.rooms = 0
        self.max_unread = 0
        self.max_feed = max((len(p) for p in pieces), default=0)
        self.error: BaseException | None = None

    def _on_room(self) -> None:
        self.rooms += 1
        self.room.set()

    def run(self) -> None:
        try:
            for piece in self.pieces:
                more = self.stream.feed(piece)
                self.max_unread = max(self.max_unread, self.stream.unread)
                if not more:
                    self.pauses += 1
                    if not self.room.wait(JOIN_TIMEOUT):
                        raise AssertionError("on_room never came")
                    self.room.clear()
            self.stream.end()
        except BaseException as exc:
            self.error = exc
            self.stream.abort(f"producer failed: {exc!r}")

    def finish(self) -> None:
        self.join(JOIN_TIMEOUT)
        assert not self.is_alive(), "the producer is still blocked"
        if self.error is not None:
            raise self.error


def piped(data: bytes, how: str, bound: int, consume: Callable[[BodyStream], bytes]) -> bytes:
    """Run ``consume`` on this thread while a ``Producer`` feeds ``data``; check the pipe's books."""
    producer = Producer(split(data, how), bound)
    producer.start()
    try:
        got = consume(producer.stream)
    finally:
        producer.stream.abort("test reader done")  # never leave the producer waiting
        producer.finish()
    assert producer.pauses >= (len(data) >= bound)  # the bound was reached, and paused the loop
    assert producer.rooms == producer.pauses  # exactly one on_room per pause
    assert producer.max_unread < bound + max(producer.max_feed, 1)
    assert producer.stream.received == len(data)
    assert producer.stream.consumed == len(data)
    return got


# --- the read APIs, all fed then ended --------------------------------------------------------
@pytest.mark.parametrize("how", SPLITS)
@pytest.mark.parametrize("size", [1, 3, 64, 4096, 100_000])
def test_read_n(how: str, size: int) -> None:
    stream = fed(BINARY_BODY, how)
    pieces = list(iter(lambda: stream.read(size), b""))
    assert all(0 < len(p) <= size for p in pieces)
    assert all(type(p) is bytes for p in pieces)
    assert b"".join(pieces) == BINARY_BODY
    assert stream.read(size) == b""  # and it stays at the end
    assert stream.consumed == stream.received == len(BINARY_BODY)


def test_read_n_returns_what_is_buffered_without_waiting_for_n() -> None:
    stream = BodyStream()
    stream.feed(b"abc")
    assert stream.read(10) == b"abc"


@pytest.mark.parametrize("how", SPLITS)
@pytest.mark.parametrize("size", [1, 5, 512, 8192])
def test_readinto(how: str, size: int) -> None:
    stream = fed(BINARY_BODY, how)
    out = bytearray()
    buf = bytearray(size)
    while n := stream.readinto(buf):
        assert 0 < n <= size
        out += buf[:n]
    assert bytes(out) == BINARY_BODY
    assert stream.readinto(buf) == 0


def test_readinto_memoryview_slice() -> None:
    stream = fed(b"hello world")
    target = bytearray(b"..........")
    assert stream.readinto(memoryview(target)[2:7]) == 5
    assert target == b"..hello..."
    assert stream.read() == b" world"


def test_readinto_empty_buffer_and_read_zero_do_not_block() -> None:
    stream = BodyStream()  # empty, not ended: any real read would block
    call = Call(lambda: (stream.readinto(bytearray()), stream.read(0)))
    call.start()
    assert call.finish() == (0, b"")
    assert stream.consumed == 0


@pytest.mark.parametrize("how", SPLITS)
def test_readline_matches_bytesio(how: str) -> None:
    stream, oracle = fed(LINES_BODY, how), io.BytesIO(LINES_BODY)
    lines = list(iter(stream.readline, b""))
    assert lines == list(iter(oracle.readline, b""))
    assert lines[-1] == b"a last line without a newline"
    assert lines[-3:-1] == [b"\n", b"\n"]
    assert stream.readline() == b""


@pytest.mark.parametrize("how", SPLITS)
@pytest.mark.parametrize("size", [1, 2, 5, 17, 1000])
def test_readline_with_size_matches_bytesio(how: str, size: int) -> None:
    stream, oracle = fed(LINES_BODY, how), io.BytesIO(LINES_BODY)
    while True:
        expected = oracle.readline(size)
        assert stream.readline(size) == expected
        if not expected:
            break


@pytest.mark.parametrize("size", [None, -1, -5])
def test_readline_no_size(size: int | None) -> None:
    stream = fed(b"one\ntwo\nthree", "bytes")
    assert [stream.readline(size) for _ in range(4)] == [b"one\n", b"two\n", b"three", b""]


def test_readline_size_zero_reads_nothing() -> None:
    stream = fed(b"abc\n")
    assert stream.readline(0) == b""
    assert stream.consumed == 0
    assert stream.readline() == b"abc\n"


def test_readline_mixed_with_read() -> None:
    stream = fed(b"head\nbody bytes\ntail", "bytes")
    assert stream.readline() == b"head\n"
    assert stream.read(4) == b"body"
    assert stream.readline() == b" bytes\n"
    assert stream.readall() == b"tail"


@pytest.mark.parametrize("how", SPLITS)
def test_readall(how: str) -> None:
    stream = fed(BINARY_BODY, how)
    assert stream.read(10) == BINARY_BODY[:10]
    assert stream.readall() == BINARY_BODY[10:]
    assert stream.readall() == b""


@pytest.mark.parametrize("size", [None, -1])
def test_read_without_size_reads_to_the_end(size: int | None) -> None:
    stream = fed(BINARY_BODY, "random0")
    assert stream.read(size) == BINARY_BODY
    assert stream.read(size) == b""


def test_readall_larger_than_bound_and_65536() -> None:
    body = random.Random(5).randbytes(200_000)
    stream = fed(body, "random1", bound=1000)
    assert stream.readall() == body


@pytest.mark.parametrize("how", SPLITS)
@pytest.mark.parametrize("size", [1, 7, 65536])
def test_chunks(how: str, size: int) -> None:
    stream = fed(BINARY_BODY, how)
    pieces = list(stream.chunks(size))
    assert all(0 < len(p) <= size for p in pieces)
    assert b"".join(pieces) == BINARY_BODY
    assert list(stream.chunks(size)) == []


def test_chunks_default_size() -> None:
    body = bytes(200_000)
    pieces = list(fed(body).chunks())
    assert [len(p) for p in pieces] == [65536, 65536, 65536, 200_000 - 3 * 65536]


@pytest.mark.parametrize("how", SPLITS)
def test_iteration_gives_lines(how: str) -> None:
    assert list(fed(LINES_BODY, how)) == io.BytesIO(LINES_BODY).readlines()
    assert fed(LINES_BODY, how).readlines() == io.BytesIO(LINES_BODY).readlines()


def test_empty_body() -> None:
    stream = fed(b"")
    assert stream.read(5) == b""
    assert stream.readline() == b""
    assert stream.readall() == b""
    assert list(stream) == []
    assert list(stream.chunks()) == []
    assert stream.received == stream.consumed == 0


def test_file_like_flags() -> None:
    stream = BodyStream()
    assert stream.readable()
    assert not stream.writable()
    assert not stream.seekable()


# --- the read APIs across threads, through a small bound ---------------------------------
THREADED_READERS: dict[str, Callable[[BodyStream], bytes]] = {
    "read(7)": lambda s: b"".join(iter(lambda: s.read(7), b"")),
    "read(4096)": lambda s: b"".join(iter(lambda: s.read(4096), b"")),
    "readinto(13)": lambda s: _readinto_all(s, 13),
    "readline()": lambda s: b"".join(iter(s.readline, b"")),
    "readline(5)": lambda s: b"".join(iter(lambda: s.readline(5), b"")),
    "readall()": lambda s: s.readall(),
    "chunks(11)": lambda s: b"".join(s.chunks(11)),
    "iteration": lambda s: b"".join(s),
}


def _readinto_all(stream: BodyStream, size: int) -> bytes:
    out, buf = bytearray(), bytearray(size)
    while n := stream.readinto(buf):
        out += buf[:n]
    return bytes(out)


@pytest.mark.parametrize("how", SPLITS)
@pytest.mark.parametrize("reader", list(THREADED_READERS))
def test_threaded_pipe(how: str, reader: str) -> None:
    assert piped(LINES_BODY, how, 32, THREADED_READERS[reader]) == LINES_BODY


@pytest.mark.parametrize("seed", range(4))
def test_threaded_pipe_random_reads(seed: int) -> None:
    rng = random.Random(seed)
    body = rng.randbytes(100_000)

    def consume(stream: BodyStream) -> bytes:
        out = bytearray()
        while piece := stream.read(rng.randint(1, 3000)):
            out += piece
        return bytes(out)

    assert piped(body, f"random{seed}", 1000, consume) == body


def test_threaded_lines_match_bytesio() -> None:
    lines = piped(LINES_BODY, "random2", 16, lambda s: b"|".join(s))
    assert lines.split(b"|") == io.BytesIO(LINES_BODY).readlines()


# --- room() and feed's return value ----------------------------------------------------------
def test_room_and_feed_return_value() -> None:
    stream = BodyStream(bound=10)
    assert stream.room() == 10
    assert stream.feed(b"abcd") is True
    assert stream.room() == 6
    assert stream.feed(b"efghi") is True  # 9 unread
    assert stream.room() == 1
    assert stream.feed(b"j") is False  # 10 unread == bound: full
    assert stream.room() == 0
    assert stream.feed(b"kl") is False  # past the bound: still full, never negative room
    assert stream.room() == 0
    assert stream.unread == 12
    assert stream.read(3) == b"abc"
    assert stream.room() == 1
    assert stream.feed(b"") is True  # 9 unread: not full any more


def test_single_feed_past_the_bound_is_kept_whole() -> None:
    stream = BodyStream(bound=4)
    assert stream.feed(b"0123456789") is False
    assert stream.unread == 10
    assert stream.room() == 0
    stream.end()
    assert stream.read() == b"0123456789"


def test_default_bound() -> None:
    stream = BodyStream()
    assert stream.bound == DEFAULT_BOUND == 1024 * 1024
    assert stream.room() == DEFAULT_BOUND
    assert stream.feed(bytes(DEFAULT_BOUND - 1)) is True
    assert stream.feed(b"x") is False


def test_feed_copies_its_argument() -> None:
    stream = BodyStream()
    source = bytearray(b"abc")
    stream.feed(source)
    stream.feed(memoryview(source)[1:])
    source[:] = b"XYZ"
    stream.end()
    assert stream.read() == b"abcbc"


# --- on_room -----------------------------------------------------------------------------------
def counting_stream(bound: int) -> tuple[BodyStream, list[int]]:
    """A stream whose ``on_room`` records ``unread`` at each call."""
    calls: list[int] = []
    stream = BodyStream(bound=bound, on_room=lambda: calls.append(stream.unread))
    return stream, calls


def test_on_room_not_called_when_never_paused() -> None:
    stream, calls = counting_stream(10)
    for _ in range(20):
        assert stream.feed(b"123456789") is True  # 9 < 10: never full
        assert stream.read(9) == b"123456789"
    stream.feed(b"abc")
    stream.end()
    assert stream.readall() == b"abc"
    assert calls == []


def test_on_room_once_per_pause_at_half_the_bound() -> None:
    stream, calls = counting_stream(10)
    assert stream.feed(bytes(10)) is False
    assert stream.read(4) and calls == []  # 6 unread > 5
    assert stream.read(1) and calls == [5]  # 5 == 10 // 2: room
    assert stream.read(5) and calls == [5]  # no second call for the same pause
    assert stream.feed(bytes(12)) is False  # a second pause
    assert stream.read(6) and calls == [5]  # 6 unread
    assert stream.read(1) and calls == [5, 5]
    assert stream.read(5) and calls == [5, 5]


def test_on_room_odd_bound_rounds_down() -> None:
    stream, calls = counting_stream(11)  # 11 // 2 == 5
    stream.feed(bytes(11))
    stream.read(5)
    assert calls == []  # 6 unread
    stream.read(1)
    assert calls == [5]


def test_on_room_bound_one_needs_everything_read() -> None:
    stream, calls = counting_stream(1)
    assert stream.feed(b"ab") is False
    stream.read(1)
    assert calls == []
    stream.read(1)
    assert calls == [0]


def test_on_room_one_read_from_full_to_empty() -> None:
    stream, calls = counting_stream(8)
    stream.feed(bytes(20))
    assert len(stream.read(100)) == 20
    assert calls == [0]


def test_on_room_extra_feed_while_paused_still_one_call() -> None:
    stream, calls = counting_stream(10)
    assert stream.feed(bytes(10)) is False
    assert stream.feed(bytes(5)) is False  # what the loop had already received
    stream.read(9)
    assert calls == []  # 6 unread
    stream.read(1)
    assert calls == [5]
    stream.read(5)
    assert calls == [5]


@pytest.mark.parametrize("api", ["readinto", "readline", "readall", "chunks", "iteration"])
def test_on_room_from_every_read_api(api: str) -> None:
    stream, calls = counting_stream(10)
    stream.feed(b"012345678\n")  # full
    stream.end()
    if api == "readinto":
        stream.readinto(bytearray(10))
    elif api == "readline":
        stream.readline()
    elif api == "readall":
        stream.readall()
    elif api == "chunks":
        list(stream.chunks(3))
    else:
        list(stream)
    assert calls == ([4] if api == "chunks" else [0])  # chunks(3): 7 unread, then 4 <= 5


def test_on_room_none_is_fine() -> None:
    stream = BodyStream(bound=4, on_room=None)
    assert stream.feed(b"abcdef") is False
    assert stream.read(6) == b"abcdef"


def test_on_room_runs_on_the_reader_thread_outside_the_lock() -> None:
    seen: list[tuple[str, int | None]] = []

    def on_room() -> None:
        # Another thread (the loop) must be able to use the stream while on_room runs.
        other = Call(lambda: (stream.room(), stream.feed(b"z")))
        other.start()
        seen.append((threading.current_thread().name, other.finish()[0]))

    stream = BodyStream(bound=4, on_room=on_room)
    stream.feed(b"abcd")
    reader = Call(lambda: stream.read(3))
    reader.name = "the-reader"
    reader.start()
    assert reader.finish() == b"abc"
    assert seen == [("the-reader", 3)]
    assert stream.unread == 2


# --- blocking readers ------------------------------------------------------------------------
BLOCKING_READS: dict[str, Callable[[BodyStream], Any]] = {
    "read(10)": lambda s: s.read(10),
    "read()": lambda s: s.read(),
    "readinto": lambda s: _readinto_once(s),
    "readline()": lambda s: s.readline(),
    "readline(10)": lambda s: s.readline(10),
    "readall()": lambda s: s.readall(),
    "next(chunks())": lambda s: next(s.chunks(), b""),
    "next(iter)": lambda s: next(iter(s), b""),
}


def _readinto_once(stream: BodyStream) -> bytes:
    buf = bytearray(10)
    return bytes(buf[:stream.readinto(buf)])


def test_blocked_read_wakes_on_feed() -> None:
    stream = BodyStream()
    call = blocked(stream, lambda: stream.read(10))
    stream.feed(b"hi")
    assert call.finish() == b"hi"


def test_blocked_readinto_wakes_on_feed() -> None:
    stream = BodyStream()
    call = blocked(stream, lambda: _readinto_once(stream))
    stream.feed(b"0123456789abc")
    assert call.finish() == b"0123456789"
    assert stream.unread == 3


@pytest.mark.parametrize("api", list(BLOCKING_READS))
def test_blocked_reader_gets_end(api: str) -> None:
    stream = BodyStream()
    call = blocked(stream, lambda: BLOCKING_READS[api](stream))
    stream.end()
    assert call.finish() == b""


@pytest.mark.parametrize("api", list(BLOCKING_READS))
def test_blocked_reader_gets_abort(api: str) -> None:
    stream = BodyStream()
    call = blocked(stream, lambda: BLOCKING_READS[api](stream))
    stream.abort("the connection closed after 0 body bytes")
    with pytest.raises(ClientDisconnected) as info:
        call.finish()
    assert str(info.value) == "the connection closed after 0 body bytes"
    assert isinstance(info.value, OSError)


def test_readline_spans_feeds_while_blocked() -> None:
    stream = BodyStream()
    call = blocked(stream, stream.readline)
    stream.feed(b"ab")
    deadline_poll(lambda: stream.consumed == 2 and waiters(stream) == 1, "the reader to wait again")
    stream.feed(b"c")
    deadline_poll(lambda: stream.consumed == 3 and waiters(stream) == 1, "the reader to wait again")
    stream.feed(b"d\nnext")
    assert call.finish() == b"abcd\n"
    assert stream.unread == 4


def test_readline_partial_line_then_end() -> None:
    stream = BodyStream()
    call = blocked(stream, stream.readline)
    stream.feed(b"no newline")
    deadline_poll(lambda: stream.consumed == 10 and waiters(stream) == 1, "the reader to wait again")
    stream.end()
    assert call.finish() == b"no newline"


def test_readline_partial_line_then_abort() -> None:
    stream = BodyStream()
    call = blocked(stream, stream.readline)
    stream.feed(b"half a li")
    deadline_poll(lambda: stream.consumed == 9 and waiters(stream) == 1, "the reader to wait again")
    stream.abort("gone")
    with pytest.raises(ClientDisconnected, match="^gone$"):
        call.finish()


def test_readline_with_size_stops_at_size_without_waiting_for_newline() -> None:
    stream = BodyStream()
    call = blocked(stream, lambda: stream.readline(4))
    stream.feed(b"ab")
    deadline_poll(lambda: stream.consumed == 2 and waiters(stream) == 1, "the reader to wait again")
    stream.feed(b"cdef")
    assert call.finish() == b"abcd"


def test_readall_blocks_until_end() -> None:
    stream = BodyStream()
    call = blocked(stream, stream.readall)
    stream.feed(b"one ")
    deadline_poll(lambda: stream.consumed == 4 and waiters(stream) == 1, "the reader to wait again")
    stream.feed(b"two")
    deadline_poll(lambda: stream.consumed == 7 and waiters(stream) == 1, "the reader to wait again")
    stream.end()
    assert call.finish() == b"one two"


# --- abort and end ---------------------------------------------------------------------------
def test_abort_drops_buffered_bytes() -> None:
    stream = BodyStream(bound=4)
    stream.feed(b"abcdef")
    stream.abort("client went away")
    assert stream.unread == 0
    assert stream.held == 0
    assert stream.room() == 4
    with pytest.raises(ClientDisconnected, match="^client went away$"):
        stream.read(1)


def test_feeds_after_abort_are_dropped() -> None:
    stream = BodyStream()
    stream.feed(b"abc")
    stream.abort("gone")
    stream.feed(b"more bytes")
    assert stream.unread == 0
    assert stream.received == 3
    for read in (lambda: stream.read(1), stream.readline, stream.readall, lambda: list(stream.chunks())):
        with pytest.raises(ClientDisconnected, match="^gone$"):
            read()


def test_error_after_partial_read() -> None:
    stream = BodyStream()
    stream.feed(b"abcdef")
    assert stream.read(2) == b"ab"
    stream.abort("reset by peer")
    with pytest.raises(ClientDisconnected, match="^reset by peer$"):
        stream.read()
    assert stream.consumed == 2


def test_end_after_abort_keeps_the_error() -> None:
    stream = BodyStream()
    stream.feed(b"abc")
    stream.abort("first")
    stream.end()
    assert stream.ended
    for _ in range(2):  # and it keeps raising
        with pytest.raises(ClientDisconnected, match="^first$"):
            stream.read()


def test_second_abort_keeps_the_first_reason() -> None:
    stream = BodyStream()
    stream.abort("first")
    stream.abort("second")
    with pytest.raises(ClientDisconnected, match="^first$"):
        stream.readline()


def test_abort_after_end_never_truncates_silently() -> None:
    # A body fed whole and ended, then aborted (the connection closed) before the
    # handler read it: the handler must get either the whole body or
    # ClientDisconnected; a clean b"" end after losing "abc" is a silent truncation.
    stream = BodyStream()
    stream.feed(b"abc")
    stream.end()
    stream.abort("the connection closed after 3 body bytes")
    try:
        got = stream.read()
    except ClientDisconnected:
        return
    assert got == b"abc", f"abort after end dropped the body and read as a clean end: {got!r}"


def test_ended_property() -> None:
    stream = BodyStream()
    assert not stream.ended
    stream.feed(b"x")
    assert not stream.ended
    stream.end()
    assert stream.ended
    assert stream.read() == b"x"
    assert stream.ended

    aborted = BodyStream()
    aborted.abort("gone")
    assert aborted.ended


def test_end_is_idempotent_and_bytes_survive_it() -> None:
    stream = BodyStream()
    stream.feed(b"abc")
    stream.end()
    stream.end()
    assert stream.read(2) == b"ab"
    assert stream.read(2) == b"c"
    assert stream.read(2) == b""


# --- counters and the bound ------------------------------------------------------------------
@pytest.mark.parametrize("how", SPLITS)
def test_received_and_consumed(how: str) -> None:
    stream = BodyStream()
    total = 0
    for piece in split(LINES_BODY, how):
        stream.feed(piece)
        total += len(piece)
        assert stream.received == total
        assert stream.unread == total - stream.consumed
    assert stream.consumed == 0
    stream.end()
    first = stream.readline()
    assert stream.consumed == len(first)
    stream.readinto(bytearray(3))
    assert stream.consumed == len(first) + 3
    stream.readall()
    assert stream.consumed == stream.received == len(LINES_BODY)
    assert stream.unread == 0


def loop_simulation(seed: int, bound: int) -> Iterator[tuple[BodyStream, int]]:
    """Single-threaded loop and reader, seeded: the loop feeds random pieces only while the
    stream is not paused; the reader reads random sizes. Yields (stream, largest feed so far)
    after every step."""
    rng = random.Random(seed)
    room = [True]
    stream = BodyStream(bound=bound, on_room=lambda: room.__setitem__(0, True))
    largest = 0
    for _ in range(3000):
        if room[0] and rng.random() < 0.6:
            piece = bytes(rng.randint(1, bound))
            largest = max(largest, len(piece))
            room[0] = stream.feed(piece)
        elif stream.unread:
            stream.read(rng.randint(1, bound))
        yield stream, largest


@pytest.mark.parametrize("seed", range(5))
def test_unread_respects_the_bound(seed: int) -> None:
    for stream, largest in loop_simulation(seed, bound=64):
        assert stream.unread < 64 + largest
        assert stream.room() == max(0, 64 - stream.unread)
        assert stream.unread == stream.received - stream.consumed


def test_memory_bound_random_loop() -> None:
    # The documented bound (prefork/staging/body_stream.py): unread stays below bound + the
    # largest piece fed, and the read part of the first piece is less than one piece more.
    worst = max((stream.held - (64 + 2 * largest), step)
                for step, (stream, largest) in enumerate(loop_simulation(0, bound=64)))
    assert worst[0] < 0, f"held exceeded bound + 2 x largest feed by {worst[0]} bytes at step {worst[1]}"


def test_memory_bound_trickle() -> None:
    # One byte in, one byte out, with 9 of 10 bytes waiting: unread stays at 9 and the
    # largest feed is 1, but the read prefix is kept until it passes half the buffer.
    stream = BodyStream(bound=10)
    for _ in range(9):
        assert stream.feed(b"x")
    sizes = []
    for _ in range(30):
        stream.read(1)
        assert stream.feed(b"x")
        sizes.append(stream.held)
        assert stream.unread == 9
    assert max(sizes) <= 10 + 1, f"held reached {max(sizes)} with bound 10 and 1-byte feeds"
