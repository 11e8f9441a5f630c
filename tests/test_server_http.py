"""HTTP framing and the WSGI surface, end to end against the real server.

Raw sockets where the bytes on the wire matter (split writes, pipelining,
100-continue, HTTP/1.0 framing), ``requests`` elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.server import RawClient, Server, request, wait_for

UPLOAD_APP = "tests.apps.upload:app"
FILE_BYTES = bytes(range(256)) * 4096  # what /file serves


@pytest.fixture(scope="module")
def upload_server(start_module_server: Callable[..., Server]) -> Server:
    return start_module_server(app=UPLOAD_APP, config={"limits": "max_body_size = 1MiB"})


@pytest.fixture(scope="module")
def echo_server(start_module_server: Callable[..., Server]) -> Server:
    return start_module_server(workers=2, config={"limits": "keepalive_timeout = 1s"})


def _echo(resp_body: bytes) -> dict:
    return json.loads(resp_body)


# --- framing ----------------------------------------------------------------------


def test_headers_split_across_many_writes(echo_server: Server) -> None:
    server = echo_server
    data = (b"POST /split?x=1 HTTP/1.1\r\nHost: example\r\nX-One: first value\r\n"
            b"X-Two: second\r\nContent-Length: 11\r\n\r\nhello world")
    with RawClient(server.connect()) as client:
        for i in range(0, len(data), 3):
            client.send(data[i:i + 3])
            time.sleep(0.002)  # a slow client's pace, so that each piece arrives in a read of its own
        resp = client.read_response()
    assert resp.status == 200
    doc = _echo(resp.body)
    assert doc["method"] == "POST" and doc["path"] == "/split" and doc["query"] == "x=1"
    assert ["X-One", "first value"] in doc["headers"] and ["X-Two", "second"] in doc["headers"]
    assert doc["body_b64"] == "aGVsbG8gd29ybGQ="


def test_pipelined_requests_answered_in_order(echo_server: Server) -> None:
    server = echo_server
    data = b"".join(
        b"POST /p%d HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%s" % (n, len(b"body%d" % n), b"body%d" % n)
        for n in range(5))
    data += b"GET /last HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    with RawClient(server.connect()) as client:
        client.send(data)
        docs = [_echo(client.read_response().body) for _ in range(6)]
        assert client.at_eof()
    assert [d["path"] for d in docs] == [f"/p{n}" for n in range(5)] + ["/last"]
    assert [d["body_b64"] for d in docs[:5]] == [
        base64.b64encode(b"body%d" % n).decode() for n in range(5)]


def test_chunked_upload_content_length_is_true_length(upload_server: Server) -> None:
    pieces = [b"a" * 1000, b"b" * 70000, b"", b"c" * 5]

    def gen() -> Iterator[bytes]:
        yield from (p for p in pieces if p)

    resp = requests.post(upload_server.url + "/sha256", data=gen(), timeout=10)
    assert resp.status_code == 200
    body = b"".join(pieces)
    assert resp.json() == {"sha256": hashlib.sha256(body).hexdigest(), "size": len(body),
                           "content_length": str(len(body))}


def test_environ_for_chunked_request(upload_server: Server) -> None:
    data = (b"POST /environ?q=1 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"5\r\nhello\r\n7\r\n, world\r\n0\r\n\r\n")
    env = json.loads(request(upload_server, data).body)
    assert env["CONTENT_LENGTH"] == "12"
    assert env["wsgi.input_terminated"] is True
    assert env["REQUEST_METHOD"] == "POST" and env["PATH_INFO"] == "/environ" and env["QUERY_STRING"] == "q=1"
    assert "HTTP_TRANSFER_ENCODING" not in env


def test_expect_100_continue_before_body(echo_server: Server) -> None:
    server = echo_server
    with RawClient(server.connect(timeout=5)) as client:
        client.send(b"PUT /x HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        interim = client.read_until(b"\r\n\r\n")
        assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
        client.send(b"12345")
        resp = client.read_response()
    assert resp.status == 200
    assert _echo(resp.body)["body_b64"] == "MTIzNDU="


def test_expect_100_continue_over_limit_gets_413_without_body(upload_server: Server) -> None:
    with RawClient(upload_server.connect(timeout=5)) as client:
        client.send(b"PUT /sha256 HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n"
                    b"Expect: 100-continue\r\n\r\n")
        resp = client.read_response()  # skips nothing: a 100 would make the status < 200
        assert resp.raw_head.startswith(b"HTTP/1.1 413 ")
        assert resp.header("connection") == "close"
        assert client.at_eof()


# --- connection management ----------------------------------------------------------


def test_keep_alive_reuses_the_connection(echo_server: Server) -> None:
    server = echo_server
    with RawClient(server.connect()) as client:
        for n in range(3):
            client.send(b"GET /k%d HTTP/1.1\r\nHost: t\r\n\r\n" % n)
            resp = client.read_response()
            assert resp.status == 200 and _echo(resp.body)["path"] == f"/k{n}"
            assert resp.header("connection") is None
    with requests.Session() as session:
        ports = set()
        for _ in range(3):
            r = session.get(server.url + "/s", timeout=5, stream=True)
            ports.add(r.raw._connection.sock.getsockname()[1])
            r.content
        assert len(ports) == 1


def test_idle_keep_alive_connection_is_closed_after_keepalive_timeout(echo_server: Server) -> None:
    with RawClient(echo_server.connect(timeout=5)) as client:
        client.send(b"GET /idle HTTP/1.1\r\nHost: t\r\n\r\n")
        assert client.read_response().status == 200
        started = time.monotonic()
        assert client.at_eof()  # closed quietly: no 408 for a connection between requests
        assert 0.8 <= time.monotonic() - started <= 3.0


def test_http10_closes_by_default(echo_server: Server) -> None:
    server = echo_server
    with RawClient(server.connect()) as client:
        client.send(b"GET /ten HTTP/1.0\r\n\r\n")
        resp = client.read_response()
        assert resp.status == 200 and _echo(resp.body)["version"] == "HTTP/1.0"
        assert resp.header("connection") == "close"
        assert client.at_eof()


def test_http10_keep_alive_on_request(echo_server: Server) -> None:
    server = echo_server
    with RawClient(server.connect()) as client:
        client.send(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        resp = client.read_response()
        assert resp.status == 200 and resp.header("connection") == "keep-alive"
        client.send(b"GET /b HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        resp = client.read_response()
        assert resp.status == 200 and _echo(resp.body)["path"] == "/b"


def test_head_has_no_body_but_the_length(upload_server: Server) -> None:
    with RawClient(upload_server.connect()) as client:
        client.send(b"HEAD /file HTTP/1.1\r\nHost: t\r\n\r\n")
        resp = client.read_response(head_request=True)
        assert resp.status == 200 and resp.header("content-length") == str(len(FILE_BYTES))
        client.send(b"HEAD /environ HTTP/1.1\r\nHost: t\r\n\r\n")
        resp2 = client.read_response(head_request=True)
        assert resp2.status == 200 and int(resp2.header("content-length") or 0) > 0
        # Nothing but the next response may follow: no body bytes were sent for either HEAD.
        client.send(b"GET /environ HTTP/1.1\r\nHost: t\r\n\r\n")
        resp3 = client.read_response()
        assert resp3.raw_head.startswith(b"HTTP/1.1 200 ")
        assert json.loads(resp3.body)["REQUEST_METHOD"] == "GET"


def test_streamed_response_is_chunked_on_http11(upload_server: Server) -> None:
    n = 100_000  # well past what the first pull produces, so the length is unknown
    expected = b"".join(b"line %d\n" % i for i in range(n))
    with RawClient(upload_server.connect()) as client:
        client.send(b"GET /stream?n=%d HTTP/1.1\r\nHost: t\r\n\r\n" % n)
        resp = client.read_response()
        assert resp.header("transfer-encoding") == "chunked" and resp.header("content-length") is None
        assert resp.body == expected
        client.send(b"GET /stream?n=3 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert client.read_response().body == b"line 0\nline 1\nline 2\n"


def test_streamed_response_is_close_delimited_on_http10(upload_server: Server) -> None:
    n = 100_000
    expected = b"".join(b"line %d\n" % i for i in range(n))
    with RawClient(upload_server.connect()) as client:
        client.send(b"GET /stream?n=%d HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" % n)
        resp = client.read_response()
        assert resp.header("transfer-encoding") is None and resp.header("content-length") is None
        assert resp.header("connection") == "close"
        assert resp.body == expected


# --- the WSGI surface ------------------------------------------------------------------


def test_write_callable(upload_server: Server) -> None:
    resp = requests.get(upload_server.url + "/write", timeout=5)
    assert resp.status_code == 200 and resp.content == b"written returned"


def test_iterable_close_is_called(upload_server: Server, tmp_path: Path) -> None:
    marker = tmp_path / "closed-get"
    resp = requests.get(f"{upload_server.url}/close?marker={marker}", timeout=5)
    assert resp.content == b"ab"
    wait_for(marker.exists, 5, what="close() on a GET")
    head_marker = tmp_path / "closed-head"
    resp = requests.head(f"{upload_server.url}/close?marker={head_marker}", timeout=5)
    assert resp.status_code == 200 and resp.content == b""
    wait_for(head_marker.exists, 5, what="close() on a HEAD")


def test_file_wrapper_sends_the_exact_bytes(upload_server: Server) -> None:
    resp = requests.get(upload_server.url + "/file", timeout=10)
    assert resp.status_code == 200
    assert resp.headers["Content-Length"] == str(len(FILE_BYTES))
    assert resp.content == FILE_BYTES


def test_access_log_line(upload_server: Server) -> None:
    resp = requests.get(upload_server.url + "/write?x=1", timeout=5,
                        headers={"Referer": "http://ref.example/", "User-Agent": "pytest-agent/1.0"})
    assert resp.status_code == 200
    pattern = re.compile(
        r'^127\.0\.0\.1 - - \[\d{2}/\w{3}/\d{4}:\d{2}:\d{2}:\d{2} [+-]\d{4}\] '
        r'"GET /write\?x=1 HTTP/1\.1" 200 16 "http://ref\.example/" "pytest-agent/1\.0" (\d+)$', re.M)

    def line() -> re.Match[str] | None:
        text = upload_server.access_log.read_text() if upload_server.access_log.exists() else ""
        return pattern.search(text)

    match = wait_for(line, 5, what="access log line")
    assert int(match.group(1)) >= 0  # type: ignore[union-attr]


def test_iterable_close_is_called_when_the_client_goes_away(upload_server: Server, tmp_path: Path) -> None:
    marker = tmp_path / "closed-abandoned"
    with RawClient(upload_server.connect()) as client:
        client.send(b"GET /close?marker=%s&n=100000 HTTP/1.1\r\nHost: t\r\n\r\n" % str(marker).encode())
        client.read_until(b"\r\n\r\n")
        client.read_exactly(1000)  # a streamed 100 MiB body has started; hang up in the middle
    wait_for(marker.exists, 5, what="close() after the client hung up")
    assert requests.get(upload_server.url + "/write", timeout=5).content == b"written returned"


def test_head_of_a_long_stream_does_not_produce_the_body(upload_server: Server, tmp_path: Path) -> None:
    # A GET of this would stream ~10 GiB; a HEAD must answer at once, produce none of it, call close().
    marker = tmp_path / "closed-long-head"
    with RawClient(upload_server.connect(timeout=5)) as client:
        started = time.monotonic()
        client.send(b"HEAD /close?marker=%s&n=10000000 HTTP/1.1\r\nHost: t\r\n\r\n" % str(marker).encode())
        resp = client.read_response(head_request=True)
        assert resp.status == 200 and resp.header("content-length") is None
        wait_for(marker.exists, 3, what="close() on a HEAD of a long stream")
        assert time.monotonic() - started < 3
        if resp.header("connection") == "close":
            assert client.at_eof()
        else:
            client.send(b"GET /write HTTP/1.1\r\nHost: t\r\n\r\n")
            assert client.read_response().body == b"written returned"


def test_streamed_response_with_inline_handlers(start_server: Callable[..., Server]) -> None:
    # threads = 0 runs the app and its iterator on the loop: a long stream must still complete.
    server = start_server(app=UPLOAD_APP, threads=0)
    n = 300_000
    resp = requests.get(server.url + f"/stream?n={n}", timeout=10)
    assert resp.status_code == 200 and resp.headers["Transfer-Encoding"] == "chunked"
    assert resp.content == b"".join(b"line %d\n" % i for i in range(n))
    assert requests.get(server.url + "/file", timeout=5).content == FILE_BYTES
