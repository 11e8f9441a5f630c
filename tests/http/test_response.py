"""Tests for prefork.http.response."""

from __future__ import annotations

import re

import pytest

from prefork.http import response
from prefork.http.response import LAST_CHUNK, chunk, http_date, simple_error_response, status_line_and_headers


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


# --- frame_response / frame_body: every framing rule, byte for byte --------------------------------

def _frame(method: bytes = b"GET", version: bytes = b"1.1", keep_alive: bool = True, status: int = 200,
           headers: list[tuple[str, str]] | None = None, declared: int | None = None,
           known: int | None = None) -> response.ResponseFraming:
    return response.frame_response(method, version, keep_alive, status, "Reason", headers or [], declared, known)


def _fields(head: bytes) -> list[bytes]:
    lines = head.split(b"\r\n")
    assert lines[0].startswith(b"HTTP/1.1 ") and lines[2] == b"Server: prefork"
    assert re.fullmatch(rb"Date: \w{3}, \d\d \w{3} \d{4} \d\d:\d\d:\d\d GMT", lines[1]), lines[1]
    assert head.endswith(b"\r\n\r\n")
    return lines[3:-2]


def test_known_length_is_sent_as_content_length() -> None:
    framing = _frame(headers=[("Content-Type", "text/plain")], known=5)
    assert framing.head.startswith(b"HTTP/1.1 200 Reason\r\n")
    assert _fields(framing.head) == [b"Content-Type: text/plain", b"Content-Length: 5"]
    assert (framing.body_length, framing.chunked, framing.close) == (5, False, False)


def test_the_applications_content_length_is_kept_and_not_repeated() -> None:
    framing = _frame(headers=[("Content-Length", "7")], declared=7, known=3)
    assert _fields(framing.head) == [b"Content-Length: 7"]
    assert framing.body_length == 7


def test_unknown_length_on_http11_is_chunked() -> None:
    framing = _frame()
    assert _fields(framing.head) == [b"Transfer-Encoding: chunked"]
    assert (framing.body_length, framing.chunked, framing.close) == (None, True, False)


def test_unknown_length_on_http10_is_delimited_by_the_close() -> None:
    framing = _frame(version=b"1.0")
    assert _fields(framing.head) == [b"Connection: close"]
    assert (framing.body_length, framing.chunked, framing.close) == (None, False, True)


def test_http10_keep_alive_is_said_out_loud() -> None:
    framing = _frame(version=b"1.0", known=0)
    assert _fields(framing.head) == [b"Content-Length: 0", b"Connection: keep-alive"]
    assert not framing.close


def test_no_keep_alive_says_close() -> None:
    framing = _frame(keep_alive=False, known=2)
    assert _fields(framing.head) == [b"Content-Length: 2", b"Connection: close"]
    assert framing.close


@pytest.mark.parametrize("status", [101, 204, 304])
def test_no_length_field_on_1xx_204_304(status: int) -> None:
    framing = _frame(status=status, known=10)
    assert _fields(framing.head) == []
    assert framing.body_length == 0 and not framing.chunked


def test_head_gets_the_length_but_no_body() -> None:
    framing = _frame(method=b"HEAD", known=10)
    assert _fields(framing.head) == [b"Content-Length: 10"]
    assert framing.body_length == 0


def test_head_of_a_stream_is_neither_chunked_nor_kept_alive() -> None:
    framing = _frame(method=b"HEAD")
    assert _fields(framing.head) == [b"Connection: close"]
    assert (framing.body_length, framing.chunked, framing.close) == (0, False, True)


def test_frame_body_plain_chunked_and_truncated() -> None:
    assert response.frame_body([b"ab", b"", b"c"], None, False) == ([b"ab", b"c"], 3, None)
    assert response.frame_body([b"ab", b"", b"c"], None, True) == ([b"3\r\n", b"ab", b"c", b"\r\n"], 3, None)
    assert response.frame_body([b""], None, True) == ([], 0, None)  # never the last-chunk marker
    assert response.frame_body([b"abcd", b"ef"], 5, False) == ([b"abcd", b"e"], 5, 0)  # never past the length
    assert response.frame_body([b"xyz"], 0, False) == ([], 0, 0)
