"""Host validation, absolute-form targets and bare LF in chunked framing, end to end.

The parser tests prove the rules in every split; these prove what a client of
the real server sees: the status, one log line, and no wait for a timeout.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest

from tests.server import RawClient, Server, request, wait_for


@pytest.fixture(scope="module")
def echo_server(start_module_server: Callable[..., Server]) -> Server:
    # Timeouts far longer than the socket timeout below: an answer that waits
    # for one of them fails the test instead of passing late.
    return start_module_server(config={"limits": "header_timeout = 60s\nbody_rate_window = 60s"})


@pytest.mark.parametrize(
    ("host", "logged"),
    [(b"user@example.com", "invalid Host header: b'user@example.com'"),
     (b"a.example, b.example", "invalid Host header: b'a.example, b.example'"),
     (b"example.com:99999", "invalid Host header: b'example.com:99999'"),
     (b"exa\xe9mple.com", "invalid Host header: b'exa\\xe9mple.com'")],
)
def test_an_invalid_host_is_400_with_one_log_line(echo_server: Server, host: bytes, logged: str) -> None:
    resp = request(echo_server, b"GET /h HTTP/1.1\r\nHost: " + host + b"\r\n\r\n")
    assert resp.status == 400 and resp.header("connection") == "close"
    assert resp.body == logged.encode() + b"\n"
    line = f" - -> 400: {logged}"  # no request head was accepted, so none is named
    wait_for(lambda: line in echo_server.error_log.read_text("utf-8", "replace"), 5, what="the log line")
    assert echo_server.error_log.read_text("utf-8", "replace").count(line) == 1


def test_the_app_sees_the_absolute_form_targets_host(echo_server: Server) -> None:
    resp = request(echo_server, b"GET http://app.example:8080/p?q=1 HTTP/1.1\r\nHost: other.example\r\n"
                                b"Connection: close\r\n\r\n")
    assert resp.status == 200
    doc = json.loads(resp.body)
    assert (doc["path"], doc["query"]) == ("/p", "q=1")
    assert doc["headers"] == [["Host", "app.example:8080"], ["Connection", "close"]]


def test_an_http_uri_with_an_empty_host_is_400(echo_server: Server) -> None:
    resp = request(echo_server, b"GET http:///p HTTP/1.1\r\nHost: h\r\n\r\n")
    assert resp.status == 400
    assert resp.body == b"empty host in an http(s) request target: b'http:///p'\n"


@pytest.mark.parametrize(
    ("body", "message"),
    [(b"5\n", b"chunk size line ends in bare LF: b'5\\n'"),
     (b"5\r\nhello\n", b"chunk data not followed by CRLF: b'\\n'"),
     (b"0\r\nX-T: 1\n", b"header line ends in bare LF: b'X-T: 1'")],
)
def test_bare_lf_in_chunked_framing_is_answered_at_once(echo_server: Server, body: bytes, message: bytes) -> None:
    # The client sends no more and keeps the connection open, as a client that
    # uses LF line ends does while it waits for its answer.
    started = time.monotonic()
    with RawClient(echo_server.connect(timeout=5.0)) as client:
        client.send(b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n" + body)
        resp = client.read_response()
    assert resp.status == 400 and resp.body == message + b"\n"
    assert time.monotonic() - started < 5.0
