"""Tests for prefork.protocol.multipart: every input whole, byte by byte, in random splits."""

from __future__ import annotations

import hashlib
import random
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from prefork.protocol.errors import BodyTooLarge, HeadersTooLarge, MultipartError, ProtocolError
from prefork.protocol.limits import FormLimits
from prefork.protocol.mediatype import HeaderValue, parse_header_value
from prefork.protocol.multipart import (
    KEEP_BUFFER,
    MultipartParser,
    PartData,
    PartEnd,
    PartStart,
    parse_boundary,
    parse_options_header,
)
from tests.helpers import Raised, feed_variants

SEED = Path(__file__).parent / "data" / "seed_multipart.http"
B = b"----WebKitFormBoundarycriD3u6M0UuPR1ia"
PNG_SHA256 = "f1a4b28875a4195245c87c7b9d2918ad70c313bc581dbb2b6818151f1bfef695"

Events = list[object]


def _merge(events: list[PartStart | PartData | PartEnd]) -> Events:
    """Join adjacent PartData: how data is sliced depends on the splits."""
    out: Events = []
    for ev in events:
        if isinstance(ev, PartData) and out and isinstance(out[-1], PartData):
            out[-1] = PartData(out[-1].data + ev.data)
        elif not (isinstance(ev, PartData) and not ev.data):
            out.append(ev)
    return out


def _splits(data: bytes) -> Iterator[tuple[str, list[bytes]]]:
    yield "whole", [data]
    yield "bytewise", [data[i : i + 1] for i in range(len(data))]
    for seed in range(8):
        rnd = random.Random(seed)
        cuts = sorted(rnd.sample(range(1, len(data)), min(len(data) - 1, rnd.randint(1, 12))))
        yield f"random{seed}", [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


def _parse(boundary: bytes, pieces: list[bytes], limits: FormLimits = FormLimits()) -> Events:
    """Parse with copies and with zero-copy views; both must give the same events."""
    copied = _parse_mode(boundary, pieces, limits, zero_copy=False)
    assert _parse_mode(boundary, pieces, limits, zero_copy=True) == copied
    return copied


def _parse_mode(boundary: bytes, pieces: list[bytes], limits: FormLimits, *, zero_copy: bool) -> Events:
    parser = MultipartParser(boundary, limits, zero_copy=zero_copy)
    events: list[PartStart | PartData | PartEnd] = []

    def take(batch: list[PartStart | PartData | PartEnd]) -> None:
        for event in batch:
            if isinstance(event, PartData):
                assert isinstance(event.data, memoryview if zero_copy else bytes)
                event = PartData(bytes(event.data))  # a view is valid only until the next feed
            events.append(event)

    for piece in pieces:
        if piece:  # b"" would mean end of input
            take(parser.feed(piece))
    take(parser.feed(b""))
    assert parser.complete
    return _merge(events)


def _feed_variants(boundary: bytes, body: bytes, limits: FormLimits = FormLimits()) -> Events:
    """Parse whole, byte by byte, in seeded random splits and with trailing data
    (an epilogue); require identical events and return them."""
    expected = _parse(boundary, [body], limits)
    for label, pieces in _splits(body):
        assert _parse(boundary, pieces, limits) == expected, label
    assert _parse(boundary, [body, b"trailing junk\r\n--" + boundary + b"\r\n"], limits) == expected
    return expected


def _part(name: str, data: bytes, filename: str | None = None, ctype: str | None = None) -> bytes:
    disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename is not None else "")
    head = f"Content-Disposition: {disp}\r\n" + (f"Content-Type: {ctype}\r\n" if ctype else "")
    return head.encode() + b"\r\n" + data


def _body(boundary: bytes, parts: list[bytes], preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    out = preamble + b"".join(b"--" + boundary + b"\r\n" + p + b"\r\n" for p in parts)
    return out + b"--" + boundary + b"--" + epilogue


def _errors(boundary: bytes, body: bytes, limits: FormLimits = FormLimits()) -> ProtocolError:
    parser = MultipartParser(boundary, limits)
    with pytest.raises(ProtocolError) as info:
        parser.feed(body)
        parser.feed(b"")
    return info.value


# -- the seed request -------------------------------------------------------


def test_seed_request_in_every_split() -> None:
    raw = SEED.read_bytes()
    head, _, body = raw.partition(b"\r\n\r\n")
    ctype = next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-type:"))
    boundary = parse_boundary(ctype.split(b":", 1)[1].strip())
    assert boundary == B
    events = _feed_variants(boundary, body)
    assert [type(e) for e in events] == [PartStart, PartData, PartEnd, PartStart, PartData, PartEnd]
    commenter, upload = events[0], events[3]
    assert commenter == PartStart(
        "commenter", None, None, [("content-disposition", 'form-data; name="commenter"')]
    )
    assert events[1] == PartData("Ada Lovelace \u2014 first comment".encode())
    assert isinstance(upload, PartStart)
    assert (upload.name, upload.filename, upload.content_type) == ("upload", "pixel.png", "image/png")
    data = events[4]
    assert isinstance(data, PartData)
    assert data.data.startswith(b"\x89PNG\r\n\x1a\n") and len(data.data) == 93
    assert hashlib.sha256(data.data).hexdigest() == PNG_SHA256


def test_delimiter_split_at_every_offset() -> None:
    body = _body(B, [_part("a", b"x" * 10), _part("f", b"\r\n--\r\n", "f.bin")])
    expected = _parse(B, [body])
    delim = b"\r\n--" + B
    start = body.find(delim)
    while start >= 0:
        for cut in range(start, start + len(delim) + 3):
            assert _parse(B, [body[:cut], body[cut:]]) == expected, cut
            assert _parse(B, [body[:cut], body[cut : cut + 3], body[cut + 3 :]]) == expected, cut
        start = body.find(delim, start + 1)


@pytest.mark.parametrize(
    "content",
    [
        b"\r\n--" + B[:-1],  # partial delimiter at the end of the part
        b"\r\n--" + B[:-1] + b"X\r\nmore",  # partial delimiter followed by other bytes
        b"--" + B + b"\r\n",  # no CRLF before it: not a delimiter
        b"\r\n--" + B + b"X\r\n",  # longer boundary-like token
        b"\r\n--" + B + b"-x",  # one dash is not the close delimiter
        b"\r\n--" + B + b" \tX\r\n",  # padding not followed by CRLF
        b"\r\r\r\n\r\n--\r\n-",
        b"",
    ],
)
def test_boundary_like_content_is_data(content: bytes) -> None:
    body = _body(B, [_part("f", content, "f.bin"), _part("g", content)])
    events = _feed_variants(B, body)
    assert [e for e in events if isinstance(e, PartData)] == ([PartData(content)] * 2 if content else [])


def test_preamble_epilogue_and_padding_ignored() -> None:
    body = (
        b"preamble\r\n--" + B[:5] + b"\r\n--" + B + b" \t \r\n" + _part("a", b"1")
        + b"\r\n--" + B + b"--  \r\nepilogue --" + B + b"\r\n"
    )
    assert _feed_variants(B, body)[1:] == [PartData(b"1"), PartEnd()]


def test_empty_form_and_first_delimiter_after_crlf() -> None:
    assert _feed_variants(B, b"--" + B + b"--\r\n") == []
    assert _feed_variants(B, b"\r\n--" + B + b"\r\n" + _part("a", b"") + b"\r\n--" + B + b"--")[1:] == [PartEnd()]


def test_zero_copy_feeding_reuses_one_buffer() -> None:
    """Steady chunks cost no allocation per feed: the buffer is reused, and the data
    is handed out as views of it (the point of ``zero_copy``)."""
    chunk = bytes(range(256)) * 256  # 64 KiB, a CR every 256 bytes
    parser = MultipartParser(B, zero_copy=True)
    parser.feed(b"--" + B + b"\r\n" + _part("f", b"", "f.bin"))
    for _ in range(4):  # warm up: the buffer grows to fit one chunk plus what is kept
        parser.feed(chunk)
    tracemalloc.start()
    try:
        received = 0
        for _ in range(64):
            for event in parser.feed(chunk):
                assert isinstance(event, PartData) and isinstance(event.data, memoryview)
                received += len(event.data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert received == 64 * len(chunk)
    assert peak < 16 * 1024, f"{peak} bytes allocated while feeding 4 MiB"
    assert parser.feed(b"\r\n--" + B + b"--") == [PartEnd()]


@pytest.mark.parametrize("piece", [KEEP_BUFFER, KEEP_BUFFER + 1, 1 << 20])
def test_a_large_buffer_is_given_up_after_each_feed(piece: int) -> None:
    """Between feeds a parser holds at most KEEP_BUFFER bytes, or twice what it must keep
    (a possible delimiter, a part header block): a large feed's buffer goes once consumed."""
    rng = random.Random(piece)
    data = rng.randbytes(5 * piece + 17).replace(b"\r", b"r")
    cut = b"\r\n--" + B[:10]  # the start of a delimiter at the end of a feed: kept back
    body = b"--" + B + b"\r\n" + _part("f", data + cut + b"x" + data, "f.bin") + b"\r\n--" + B + b"--"
    parser = MultipartParser(B, zero_copy=True)
    received = bytearray()
    held = []
    for offset in range(0, len(body), piece):
        for event in parser.feed(body[offset:offset + piece]):
            if isinstance(event, PartData):
                received += event.data
        held.append(parser.buffer_size)
    assert bytes(received) == data + cut + b"x" + data
    assert max(held) <= KEEP_BUFFER, held
    assert parser.complete


def test_an_unfinished_part_header_block_keeps_only_what_it_needs() -> None:
    limits = FormLimits(max_part_header_bytes=200 * 1024)
    header = f'Content-Disposition: form-data; name="f"; filename="f"\r\nX-Pad: {"p" * 150_000}'.encode()
    parser = MultipartParser(B, limits, zero_copy=True)
    parser.feed(b"--" + B + b"\r\n" + header[:100_000])
    parser.feed(header[100_000:140_000])
    assert parser.buffer_size <= 2 * (140_000 + 2)  # the unconsumed header bytes, not more
    events = parser.feed(header[140_000:] + b"\r\n\r\n" + b"d" * (1 << 20) + b"\r\n--" + B + b"--")
    assert isinstance(events[0], PartStart) and parser.buffer_size <= KEEP_BUFFER
    assert sum(len(e.data) for e in events if isinstance(e, PartData)) == 1 << 20


def test_truncated_body_is_an_error_at_every_length() -> None:
    body = _body(B, [_part("a", b"hello"), _part("f", b"data", "f")])
    for n in range(len(body)):
        parser = MultipartParser(B)
        if n:
            parser.feed(body[:n])
        with pytest.raises(MultipartError) as info:
            parser.feed(b"")
        assert str(info.value).startswith("multipart body ended before the closing delimiter")
        assert info.value.status == 400


def test_close_and_feed_after_error() -> None:
    parser = MultipartParser(B)
    parser.feed(b"--" + B + b"\r\n")
    with pytest.raises(MultipartError, match="ended before the closing delimiter"):
        parser.close()
    with pytest.raises(MultipartError, match="can't feed data in state ERROR"):
        parser.feed(b"x")
    done = MultipartParser(B)
    done.feed(b"--" + B + b"--")
    done.close()
    assert done.complete


# -- boundary and header parsing -------------------------------------------


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("multipart/form-data", "multipart content type without boundary"),
        ("multipart/form-data; boundary=", "invalid multipart boundary: b''"),
        ('multipart/form-data; boundary=""', "invalid multipart boundary: b''"),
        ("multipart/form-data; boundary=" + "a" * 71, "invalid multipart boundary: " + repr(b"a" * 71)),
        ('multipart/form-data; boundary="ab "', "invalid multipart boundary: b'ab '"),
        ("multipart/form-data; boundary=a{b", "invalid multipart boundary: b'a{b'"),
        ("text/plain; boundary=abc", "not a multipart content type: b'text/plain; boundary=abc'"),
    ],
)
def test_parse_boundary_errors(value: str, message: str) -> None:
    with pytest.raises(MultipartError) as info:
        parse_boundary(value)
    assert str(info.value) == message
    assert info.value.status == 400


def test_parse_boundary_accepts() -> None:
    assert parse_boundary("multipart/form-data; boundary=" + "a" * 70) == b"a" * 70
    assert parse_boundary(b'Multipart/Form-Data; charset=utf-8; boundary="a b:c=?"') == b"a b:c=?"
    assert parse_boundary("multipart/form-data;boundary=" + B.decode()) == B


def test_parse_options_header() -> None:
    assert parse_options_header('form-data; name="a;b"; filename="x\\"y.txt"') == (
        "form-data",
        {"name": "a;b", "filename": 'x"y.txt'},
    )
    assert parse_options_header('form-data; filename="C:\\dir\\f.txt"')[1] == {"filename": "C:\\dir\\f.txt"}
    value = "attachment; filename*=UTF-8''%E2%82%AC%20rates.txt; filename=\"EUR rates.txt\""
    assert parse_options_header(value) == ("attachment", {"filename": "\u20ac rates.txt"})
    assert parse_options_header("a; filename*=iso-8859-1'en'%A3.txt")[1] == {"filename": "\u00a3.txt"}
    # Malformed extended values are ignored, not fatal.
    assert parse_options_header("a; filename*=UTF-8''%zz; filename=b")[1] == {"filename": "b"}
    assert parse_options_header("a; filename*=koi8-r''x")[1] == {}
    assert parse_options_header('a; x="1"junk; y=2; ;=; z')[1] == {"x": "1", "y": "2", "z": ""}
    assert parse_options_header('a; x="unterminated')[1] == {"x": '"unterminated'}


def test_filename_star_takes_precedence_in_a_part() -> None:
    head = (
        b"Content-Disposition: form-data; name=\"f\"; filename*=UTF-8''%C3%A9t%C3%A9.txt; "
        b'filename="ete.txt"\r\n\r\n'
    )
    events = _feed_variants(B, _body(B, [head + b"x"]))
    assert isinstance(events[0], PartStart) and events[0].filename == "\u00e9t\u00e9.txt"


def test_raw_utf8_filename_and_empty_filename() -> None:
    events = _feed_variants(B, _body(B, [_part("f", b"", "r\u00e9sum\u00e9.pdf"), _part("g", b"", "")]))
    starts = [e for e in events if isinstance(e, PartStart)]
    assert [s.filename for s in starts] == ["r\u00e9sum\u00e9.pdf", ""]


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (b"Content-Type: text/plain\r\n", "part without Content-Disposition header"),
        (b"", "part without Content-Disposition header"),
        (b"Content-Disposition: attachment; name=a\r\n",
         "part Content-Disposition is not form-data with a name: b'attachment; name=a'"),
        (b"Content-Disposition: form-data\r\n", "part Content-Disposition is not form-data with a name: b'form-data'"),
        (
            b"Content-Disposition: form-data; name=a\nX: y\r\n",
            "bare CR or LF in part header: b'Content-Disposition: form-data; name=a\\nX: y'",
        ),
        (b"Content-Disposition: form-data; name=a\r\n folded\r\n", "invalid part header line: b' folded'"),
        (b"Bad Header: x\r\n", "invalid part header line: b'Bad Header: x'"),
    ],
)
def test_bad_part_headers(head: bytes, message: str) -> None:
    err = _errors(B, _body(B, [head + b"\r\ndata"]))
    assert isinstance(err, MultipartError) and str(err) == message


def test_max_parts_is_413() -> None:
    body = _body(B, [_part(str(i), b"v") for i in range(4)])
    assert len([e for e in _feed_variants(B, body, FormLimits(max_parts=4)) if isinstance(e, PartEnd)]) == 4
    err = _errors(B, body, FormLimits(max_parts=3))
    assert isinstance(err, BodyTooLarge) and err.status == 413
    assert str(err) == "multipart body has more than 3 parts"


def test_part_header_limit_is_431() -> None:
    limits = FormLimits(max_part_header_bytes=64)
    ok = b"Content-Disposition: form-data; name=" + b"a" * 27  # exactly 64 bytes
    assert _feed_variants(B, _body(B, [ok + b"\r\n\r\n"]), limits)[0] == PartStart(
        "a" * 27, None, None, [("content-disposition", "form-data; name=" + "a" * 27)]
    )
    big = _body(B, [ok + b"a\r\n\r\n"])
    err = _errors(B, big, limits)
    assert isinstance(err, HeadersTooLarge) and err.status == 431
    assert str(err) == "part header block of 65 bytes exceeds limit of 64 bytes"
    # Without a terminator the limit trips while buffering, naming the bytes.
    parser = MultipartParser(B, limits)
    parser.feed(b"--" + B + b"\r\n")
    with pytest.raises(HeadersTooLarge, match=r"^part header block exceeds limit of 64 bytes: b'xxxx"):
        for _ in range(20):
            parser.feed(b"x" * 10)


def test_transport_padding_limit() -> None:
    err = _errors(B, b"--" + B + b" " * 300 + b"\r\n")
    assert str(err) == "transport padding after delimiter exceeds 256 bytes"


def test_bad_boundary_argument() -> None:
    with pytest.raises(MultipartError, match="invalid multipart boundary"):
        MultipartParser(b"")


# -- properties ---------------------------------------------------------------

_content = st.lists(
    st.sampled_from([b"\r\n", b"--", b"\r", b"\n", b"a", b"\x00\xff", b"\r\n--" + B[:7], b"--" + B, b"-", B[:12]]),
    max_size=12,
).map(b"".join).filter(lambda c: b"\r\n--" + B not in c)  # RFC 2046 §5.1.1: must not occur
_fields = st.lists(
    st.tuples(st.text("abcxyz_ -", min_size=1, max_size=6), st.none() | st.text("fn.é", max_size=5), _content),
    max_size=5,
)


def _random_pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    return [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(fields=_fields, cuts=st.lists(st.integers(0, 10_000), max_size=8))
def test_round_trip_property(fields: list[tuple[str, str | None, bytes]], cuts: list[int]) -> None:
    body = _body(B, [_part(name, data, filename) for name, filename, data in fields], b"pre\r\n", b"\r\nepi")
    expected: Events = []
    for name, filename, data in fields:
        expected.append(PartStart(name, filename, None, []))
        expected += [PartData(data)] if data else []
        expected.append(PartEnd())
    got = _parse(B, _random_pieces(body, cuts))
    strip: Callable[[object], object] = lambda e: (  # noqa: E731 - headers checked elsewhere
        PartStart(e.name, e.filename, e.content_type, []) if isinstance(e, PartStart) else e
    )
    assert [strip(e) for e in got] == expected


@settings(max_examples=200, deadline=None)
@given(junk=st.lists(st.binary(max_size=40) | st.sampled_from([b"--ab\r\n", b"--ab--", b"\r\n\r\n",
       b"Content-Disposition: form-data; name=x\r\n"]), max_size=10))
def test_junk_only_raises_protocol_errors(junk: list[bytes]) -> None:
    parser = MultipartParser(b"ab", FormLimits(max_parts=3, max_part_header_bytes=64))
    try:
        for piece in junk:
            parser.feed(piece)
        parser.feed(b"")
    except ProtocolError:
        pass


# -- no "last one wins" (issue 12) -------------------------------------------------


def _drive(boundary: bytes) -> Callable[[list[bytes]], list[object]]:
    def drive(chunks: list[bytes]) -> list[object]:
        parser = MultipartParser(boundary)
        events: list[PartStart | PartData | PartEnd] = []
        for chunk in chunks:
            events += [PartData(bytes(e.data)) if isinstance(e, PartData) else e for e in parser.feed(chunk)]
        events += parser.feed(b"")
        return _merge(events)
    return drive


def _rejected_in_every_split(body: bytes) -> Raised:
    """The body is refused with the same error whole, byte by byte and in random splits."""
    events = feed_variants(_drive(B), body, trailing=b"--" + B + b"--\r\n")
    assert isinstance(events[-1], Raised) and events[-1].type is MultipartError, events
    return events[-1]


@pytest.mark.parametrize(
    ("head", "message"),
    [
        (b'Content-Disposition: form-data; name="a"\r\nContent-Disposition: form-data; name="b"\r\n',
         "part has 2 content-disposition headers"),
        (b'Content-Disposition: form-data; name="a"\r\nX: 1\r\ncontent-disposition: form-data; name="a"\r\n',
         "part has 2 content-disposition headers"),
        (b'Content-Disposition: form-data; name="a"; name="b"\r\n',
         "repeated parameter 'name' in part Content-Disposition: b'form-data; name=\"a\"; name=\"b\"'"),
        (b'Content-Disposition: form-data; name=a; Name=a\r\n',
         "repeated parameter 'name' in part Content-Disposition: b'form-data; name=a; Name=a'"),
        (b'Content-Disposition: form-data; name="f"; filename="a.txt"; filename="b.exe"\r\n',
         "repeated parameter 'filename' in part Content-Disposition: "
         "b'form-data; name=\"f\"; filename=\"a.txt\"; filename=\"b.exe\"'"),
        (b"Content-Disposition: form-data; name=f; filename*=UTF-8''a; filename*=UTF-8''b\r\n",
         "repeated parameter 'filename*' in part Content-Disposition: "
         "b\"form-data; name=f; filename*=UTF-8''a; filename*=UTF-8''b\""),
        (b'Content-Disposition: form-data; name="f"\r\nContent-Type: text/plain\r\nContent-Type: image/png\r\n',
         "part has 2 content-type headers"),
        (b'Content-Disposition: form-data; name="f"\r\nContent-Type: text/plain; charset=utf-8; charset=koi8-r\r\n',
         "repeated parameter 'charset' in part Content-Type: b'text/plain; charset=utf-8; charset=koi8-r'"),
    ],
)
def test_repeated_headers_and_parameters_are_rejected_in_every_split(head: bytes, message: str) -> None:
    body = _body(B, [_part("ok", b"first"), head + b"\r\ndata", _part("later", b"x")])
    raised = _rejected_in_every_split(body)
    assert raised.message == message
    assert _errors(B, body).status == 400


def test_filename_and_filename_star_together_are_not_a_repeat() -> None:
    head = b"Content-Disposition: form-data; name=f; filename=\"a.txt\"; filename*=UTF-8''%C3%A9.txt\r\n\r\n"
    events = feed_variants(_drive(B), _body(B, [head + b"x"]))
    assert isinstance(events[0], PartStart) and events[0].filename == "\u00e9.txt"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("multipart/form-data; boundary=a; boundary=b",
         "repeated parameter 'boundary' in multipart content type: b'multipart/form-data; boundary=a; boundary=b'"),
        ('multipart/form-data; BOUNDARY="a"; boundary=a',
         "repeated parameter 'boundary' in multipart content type: "
         "b'multipart/form-data; BOUNDARY=\"a\"; boundary=a'"),
        ("multipart/form-data; charset=x; boundary=a; charset=x",
         "repeated parameter 'charset' in multipart content type: "
         "b'multipart/form-data; charset=x; boundary=a; charset=x'"),
    ],
)
def test_repeated_boundary_parameter_is_rejected(value: str, message: str) -> None:
    with pytest.raises(MultipartError) as info:
        parse_boundary(value)
    assert str(info.value) == message and info.value.status == 400


def test_parse_header_value_reports_repeats() -> None:
    assert parse_header_value('form-data; name="a"; filename=x; Name=b; filename*=UTF-8\'\'y; name=c') == HeaderValue(
        "form-data", {"name": "c", "filename": "y"}, ("name", "name"))
    assert parse_header_value("text/plain").repeated == ()
    assert parse_options_header("a; x=1; x=2") == ("a", {"x": "2"})  # the lenient view keeps the last
