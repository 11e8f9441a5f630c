"""Tests for prefork.http.response."""

from __future__ import annotations

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
