"""Property tests: valid requests round-trip in any split; junk never crashes or hangs."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefork.errors import ProtocolError
from prefork.http.events import ConnectionClosed, Data, EndOfMessage, Request, Signal
from prefork.http.parser import ParserState, RequestParser
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
