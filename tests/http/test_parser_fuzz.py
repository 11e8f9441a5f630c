"""Property tests: valid requests round-trip in any split; junk never crashes or hangs."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefork.protocol.errors import ProtocolError
from prefork.protocol.http.events import ConnectionClosed, Data, EndOfMessage, Request, Signal
from prefork.protocol.http.parser import ParserState, RequestParser
from prefork.protocol.limits import HttpLimits
from tests.helpers import random_splits

TCHARS = "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
token = st.text(alphabet=TCHARS, min_size=1, max_size=12).map(str.encode)
value = st.binary(max_size=30).map(
    lambda b: bytes(c for c in b if c == 9 or 0x20 <= c != 0x7F).strip(b" \t")
)
path = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789/-._~%?=&", max_size=30).map(lambda s: b"/" + s.encode())
reserved = {b"host", b"content-length", b"transfer-encoding", b"connection", b"expect", b"upgrade"}
fields = st.lists(st.tuples(token, value), max_size=8).map(lambda fs: [f for f in fs if f[0].lower() not in reserved])


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, Request, bytes, list[tuple[bytes, bytes]]]:
    method, target, headers = draw(token), draw(path), draw(fields)
    headers = [(b"Host", b"example.com"), *headers]
    body = draw(st.binary(max_size=200))
    chunked = draw(st.booleans())
    trailers = draw(fields) if chunked else []
    if chunked:
        headers.append((b"Transfer-Encoding", b"chunked"))
        sizes = draw(st.lists(st.integers(1, 50), max_size=5))
        framed, pos = [], 0
        for size in sizes:
            piece = body[pos : pos + size]
            if piece:
                framed.append(b"%x\r\n%s\r\n" % (len(piece), piece))
            pos += size
        body = body[:pos]
        wire_body = b"".join(framed) + b"0\r\n" + b"".join(b"%s: %s\r\n" % t for t in trailers) + b"\r\n"
    else:
        headers.append((b"Content-Length", b"%d" % len(body)))
        wire_body = body
    head = b"%s %s HTTP/1.1\r\n" % (method, target) + b"".join(b"%s: %s\r\n" % h for h in headers) + b"\r\n"
    return head + wire_body, (method, target, headers), body, trailers  # type: ignore[return-value]


def parse_all(chunks: list[bytes]) -> list[object]:
    parser = RequestParser()
    events: list[object] = []
    for piece in [*chunks, b""]:
        parser.feed(piece)
        for _ in range(10_000):  # bounded: a hang fails the test instead of stalling it
            event = parser.next_event()
            if event is Signal.NEED_DATA or isinstance(event, ConnectionClosed):
                break
            if event is Signal.PAUSED:
                if parser.state is not ParserState.DONE:
                    break
                parser.start_next_cycle()
                continue
            events.append(event)
        else:
            raise AssertionError("parser did not settle")
    return events


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(requests(), st.integers(0, 2**32))
def test_valid_requests_round_trip(case: tuple, seed: int) -> None:  # type: ignore[type-arg]
    wire, (method, target, headers), body, trailers = case
    events = parse_all(random_splits(wire * 2, random.Random(seed)))
    reqs = [e for e in events if isinstance(e, Request)]
    assert len(reqs) == 2
    for req in reqs:
        assert (req.method, req.target, req.headers.raw) == (method, target, headers)
    data = b"".join(e.data for e in events if isinstance(e, Data))
    assert data == body * 2
    eoms = [e for e in events if isinstance(e, EndOfMessage)]
    assert [e.trailers.raw for e in eoms] == [trailers, trailers]


JUNK_PREFIXES = [b"", b"GET / HTTP/1.1\r\n", b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
                 b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n"]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(JUNK_PREFIXES), st.binary(max_size=300), st.integers(0, 2**32))
def test_junk_parses_or_raises_protocol_error(prefix: bytes, junk: bytes, seed: int) -> None:
    data = prefix + junk
    try:
        parse_all(random_splits(data, random.Random(seed)) if data else [])
    except ProtocolError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200).map(lambda b: b"GET / HTTP/1.1\r\nHost: h\r\n" + b))
def test_junk_outcome_is_split_independent(data: bytes) -> None:
    def outcome(chunks: list[bytes]) -> object:
        try:
            return parse_all(chunks)
        except ProtocolError as exc:
            return type(exc)

    assert outcome([data]) == outcome([data[i : i + 1] for i in range(len(data))])


# --- split invariance on mutated requests ---------------------------------------------

# Valid requests (a few near the small limits below, so that a mutation can push a
# line or block past one), mutated by byte flips, insertions, deletions and
# duplicated lines, and parsed under the default limits and under small ones.
SEEDS = [
    b"GET /abcdefghij/klmnopqrstuvw HTTP/1.1\r\nHost: example.com:8080\r\nAccept: */*\r\n\r\n",
    b"POST /u?x=1 HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\nConnection: keep-alive\r\n\r\nhello"
    b"GET / HTTP/1.1\r\nHost: [::1]\r\n\r\n",
    b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n10\r\n0123456789abcdef\r\n"
    b"0\r\nX-Sum: 1\r\n\r\n",
    b"GET http://user@example.com/p?q HTTP/1.0\r\nHost: other\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: \r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\nok",
]
SMALL = HttpLimits(max_request_line=40, max_header_bytes=60, max_header_count=4, max_body_size=20,
                   max_chunk_line=8, max_trailer_bytes=16)
INTERESTING = b"\r\n\r\n \t:;,@/[]%0aA\x00\x7f\x80\xff"


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        op = draw(st.sampled_from(["flip", "insert", "delete", "repeat", "dup_line"]))
        byte = draw(st.one_of(st.sampled_from(list(INTERESTING)), st.integers(0, 255)))
        if op == "flip" and pos < len(data):
            data[pos] = byte
        elif op == "insert":
            data[pos:pos] = bytes([byte]) * draw(st.integers(1, 50))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 8))]
        elif op == "repeat":
            data[pos:pos] = data[pos : pos + draw(st.integers(1, 60))]
        else:  # duplicate the line around pos (a duplicated header, or request line)
            start = data.rfind(b"\n", 0, pos) + 1
            end = data.find(b"\n", pos)
            if end >= 0:
                data[start:start] = data[start : end + 1]
    return bytes(data)


def outcome(chunks: list[bytes], limits: HttpLimits, eof: bool) -> list[object]:
    """Events (adjacent Data merged, since their boundaries follow the reads) and any error, message included."""
    parser = RequestParser(limits)
    events: list[object] = []
    try:
        for piece in [*chunks, *([b""] if eof else [])]:
            parser.feed(piece)
            for _ in range(10_000):
                event = parser.next_event()
                if event is Signal.NEED_DATA or isinstance(event, ConnectionClosed):
                    break
                if event is Signal.PAUSED:
                    if parser.state is not ParserState.DONE:
                        break
                    parser.start_next_cycle()
                    continue
                if isinstance(event, Data) and events and isinstance(events[-1], Data):
                    events[-1] = Data(events[-1].data + event.data)  # type: ignore[attr-defined]
                else:
                    events.append(event)
            else:
                raise AssertionError("parser did not settle")
    except ProtocolError as exc:
        events.append((type(exc), exc.status, str(exc)))
    return events


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(), st.sampled_from([HttpLimits(), SMALL]), st.booleans(), st.integers(0, 2**32))
def test_mutated_requests_give_the_same_answer_in_every_split(data: bytes, limits: HttpLimits, eof: bool,
                                                              seed: int) -> None:
    whole = outcome([data], limits, eof)
    assert outcome([data[i : i + 1] for i in range(len(data))], limits, eof) == whole
    assert outcome(random_splits(data, random.Random(seed), max_piece=7), limits, eof) == whole
