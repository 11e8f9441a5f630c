"""Tests for prefork.protocol.http.response."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import pytest

from prefork.protocol.http import response
from prefork.protocol.http.events import Request
from prefork.protocol.http.headers import Headers
from prefork.protocol.http.response import (
    CONTINUE,
    LAST_CHUNK,
    ResponseWriter,
    chunk,
    http_date,
    simple_error_response,
    status_line_and_headers,
)


def test_status_line_and_headers() -> None:
    head = status_line_and_headers(200, [(b"Content-Length", b"5"), ("X-Str", "caf\xe9")])
    assert head == b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Str: caf\xe9\r\n\r\n"
    assert status_line_and_headers(404, [], http_version=b"1.0") == b"HTTP/1.0 404 Not Found\r\n\r\n"
    assert status_line_and_headers(599, []) == b"HTTP/1.1 599 \r\n\r\n"


@pytest.mark.parametrize(
    "header",
    [(b"X", b"a\r\nSet-Cookie: x"), (b"X", b"a\nb"), ("X", "a\rb"), (b"X", b"a\x00"), (b"X Y", b"v"),
     (b"X:", b"v"), (b"", b"v"), ("X\r\nY", "v")],
)
def test_response_splitting_rejected(header: tuple[bytes, bytes]) -> None:
    with pytest.raises(ValueError):
        status_line_and_headers(200, [header])


def test_invalid_status() -> None:
    with pytest.raises(ValueError, match="invalid status code: 42"):
        status_line_and_headers(42, [])


def test_chunk() -> None:
    assert chunk(b"hello world!!!!!") == b"10\r\nhello world!!!!!\r\n"
    assert chunk(memoryview(b"ab")) == b"2\r\nab\r\n"
    assert LAST_CHUNK == b"0\r\n\r\n"
    with pytest.raises(ValueError):
        chunk(b"")


def test_http_date_format_and_cache() -> None:
    assert http_date(784111777) == b"Sun, 06 Nov 1994 08:49:37 GMT"
    assert http_date(784111777.9) is http_date(784111777.1)
    assert http_date(784111778) == b"Sun, 06 Nov 1994 08:49:38 GMT"
    assert len(http_date()) == 29


def test_simple_error_response(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(response, "http_date", lambda now=None: b"Sun, 06 Nov 1994 08:49:37 GMT")
    out = simple_error_response(431, "header block too large")
    assert out == (b"HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\n"
                   b"Content-Length: 23\r\nDate: Sun, 06 Nov 1994 08:49:37 GMT\r\nConnection: close\r\n\r\n"
                   b"header block too large\n")
    assert b"Connection" not in simple_error_response(400, "x", close=False)


# --- ResponseWriter: every framing rule, byte for byte --------------------------------------------

DATE = b"Sun, 06 Nov 1994 08:49:37 GMT"
PREFIX = b"Date: Sun, 06 Nov 1994 08:49:37 GMT\r\nServer: prefork\r\n"


@dataclass
class _Resp:
    status: int = 200
    reason: str = "Reason"
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_length: int | None = None
    close_connection: bool = False


def _head(method: bytes = b"GET", version: bytes = b"1.1", keep_alive: bool = True) -> Request:
    return Request(method, b"/", version, Headers([]), keep_alive, False, None, 0, False)


@pytest.fixture(autouse=True)
def _fixed_date(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(response, "http_date", lambda now=None: DATE)


def _start(method: bytes = b"GET", version: bytes = b"1.1", keep_alive: bool = True, status: int = 200,
           headers: list[tuple[str, str]] | None = None, declared: int | None = None, known: int | None = None,
           may_keep_alive: bool = True, close_connection: bool = False,
           writer: ResponseWriter | None = None) -> tuple[ResponseWriter, bytes]:
    writer = writer or ResponseWriter()
    resp = _Resp(status, "Reason", headers or [], declared, close_connection)
    return writer, writer.start(_head(method, version, keep_alive), resp, known, may_keep_alive)


def _state(writer: ResponseWriter) -> tuple[int | None, bool, bool, bool]:
    return writer.remaining, writer.chunked, writer.no_body, writer.close


def test_known_length_is_sent_as_content_length() -> None:
    writer, head = _start(headers=[("Content-Type", "text/plain")], known=5)
    assert head == (b"HTTP/1.1 200 Reason\r\n" + PREFIX + b"Content-Type: text/plain\r\nContent-Length: 5\r\n\r\n")
    assert _state(writer) == (5, False, False, False)


def test_the_applications_content_length_is_kept_and_not_repeated() -> None:
    writer, head = _start(headers=[("Content-Length", "7")], declared=7, known=3)
    assert head == b"HTTP/1.1 200 Reason\r\n" + PREFIX + b"Content-Length: 7\r\n\r\n"
    assert writer.remaining == 7


def test_unknown_length_on_http11_is_chunked() -> None:
    writer, head = _start()
    assert head == b"HTTP/1.1 200 Reason\r\n" + PREFIX + b"Transfer-Encoding: chunked\r\n\r\n"
    assert _state(writer) == (None, True, False, False)


def test_unknown_length_on_http10_is_delimited_by_the_close() -> None:
    writer, head = _start(version=b"1.0")
    assert head == b"HTTP/1.1 200 Reason\r\n" + PREFIX + b"Connection: close\r\n\r\n"
    assert _state(writer) == (None, False, False, True)


def test_http10_keep_alive_is_said_out_loud() -> None:
    writer, head = _start(version=b"1.0", known=0)
    assert head == b"HTTP/1.1 200 Reason\r\n" + PREFIX + b"Content-Length: 0\r\nConnection: keep-alive\r\n\r\n"
    assert not writer.close


def test_http10_without_keep_alive_closes_even_with_a_length() -> None:
    writer, head = _start(version=b"1.0", keep_alive=False, known=3)
    assert head == b"HTTP/1.1 200 Reason\r\n" + PREFIX + b"Content-Length: 3\r\nConnection: close\r\n\r\n"
    assert writer.close


@pytest.mark.parametrize("why", ["client", "server", "application"])
def test_no_keep_alive_says_close(why: str) -> None:
    writer, head = _start(known=2, keep_alive=why != "client", may_keep_alive=why != "server",
                          close_connection=why == "application")
    assert head == b"HTTP/1.1 200 Reason\r\n" + PREFIX + b"Content-Length: 2\r\nConnection: close\r\n\r\n"
    assert writer.close


@pytest.mark.parametrize("status", [101, 103, 204, 304])
def test_no_length_field_and_no_body_on_1xx_204_304(status: int) -> None:
    writer, head = _start(status=status, known=10)
    assert head == b"HTTP/1.1 %d Reason\r\n" % status + PREFIX + b"\r\n"
    assert _state(writer) == (0, False, True, False)
    assert writer.frame([b"body"]) == [] and writer.end() == b"" and writer.body_sent == 0
    assert not writer.close


@pytest.mark.parametrize("status", [204, 304])
def test_a_stream_with_no_body_status_is_not_chunked(status: int) -> None:
    writer, head = _start(status=status)
    assert head == b"HTTP/1.1 %d Reason\r\n" % status + PREFIX + b"Connection: close\r\n\r\n"
    assert _state(writer) == (0, False, True, True)


def test_head_gets_the_length_but_no_body() -> None:
    writer, head = _start(method=b"HEAD", known=10)
    assert head == b"HTTP/1.1 200 Reason\r\n" + PREFIX + b"Content-Length: 10\r\n\r\n"
    assert _state(writer) == (0, False, True, False)
    assert writer.frame([b"0123456789"]) == [] and writer.end() == b""
    assert writer.body_sent == 0 and not writer.close  # not "short": a HEAD response has no body


def test_head_of_a_stream_is_neither_chunked_nor_kept_alive() -> None:
    writer, head = _start(method=b"HEAD")
    assert head == b"HTTP/1.1 200 Reason\r\n" + PREFIX + b"Connection: close\r\n\r\n"
    assert _state(writer) == (0, False, True, True)


def test_frame_plain_skips_empty_chunks() -> None:
    writer, _ = _start(version=b"1.0")
    assert writer.frame([b"ab", b"", b"c"]) == [b"ab", b"c"]
    assert writer.frame([b""]) == []
    assert writer.body_sent == 3 and writer.end() == b""


def test_frame_chunked_one_chunk_per_batch_and_never_the_last_chunk() -> None:
    writer, _ = _start()
    assert writer.frame([b"ab", b"", b"c"]) == [b"3\r\n", b"ab", b"c", b"\r\n"]
    assert writer.frame([b""]) == []  # an empty chunk would end the body
    assert writer.frame([b"x" * 300]) == [b"12c\r\n", b"x" * 300, b"\r\n"]
    assert writer.body_sent == 303
    assert writer.end() == b"0\r\n\r\n" and not writer.close


def test_frame_never_sends_past_the_content_length() -> None:
    writer, _ = _start(known=5)
    assert writer.frame([b"abcd", b"ef"]) == [b"abcd", b"e"]
    assert writer.frame([b"xyz"]) == []
    assert (writer.remaining, writer.body_sent) == (0, 5)
    assert writer.end() == b"" and not writer.close


def test_a_body_that_ends_short_of_its_length_closes_the_connection() -> None:
    writer, _ = _start(headers=[("Content-Length", "10")], declared=10)
    assert writer.frame([b"abc"]) == [b"abc"]
    assert not writer.close
    assert writer.end() == b""
    assert writer.remaining == 7 and writer.close


def test_a_file_sent_by_the_caller_counts_against_the_length() -> None:
    writer, _ = _start(known=10)
    writer.sent_file(6)
    writer.sent_file(4)
    assert (writer.remaining, writer.body_sent) == (0, 10)
    assert writer.end() == b"" and not writer.close
    writer, _ = _start(known=10)
    writer.sent_file(4)  # the file shrank under us
    assert writer.end() == b"" and writer.close and writer.remaining == 6


def test_one_writer_frames_response_after_response() -> None:
    writer, _ = _start()
    writer.frame([b"abc"])
    writer.end()
    writer, head = _start(known=2, writer=writer)
    assert head.endswith(b"Content-Length: 2\r\n\r\n")
    assert (_state(writer), writer.body_sent) == ((2, False, False, False), 0)
    writer, head = _start(method=b"HEAD", known=2, writer=writer)
    assert _state(writer) == (0, False, True, False)
    writer, head = _start(known=1, writer=writer)
    assert not writer.no_body and writer.frame([b"z"]) == [b"z"]


def test_the_status_line_uses_the_applications_reason_and_the_date_is_real(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.undo()
    head = ResponseWriter().start(_head(), _Resp(418, "I'm a teapot"), 0, True)
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 418 I'm a teapot" and lines[2] == b"Server: prefork"
    assert re.fullmatch(rb"Date: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", lines[1]), lines[1]


def test_continue() -> None:
    assert CONTINUE == b"HTTP/1.1 100 Continue\r\n\r\n"
