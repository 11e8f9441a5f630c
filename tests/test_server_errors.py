"""Every HTTP error status of DESIGN §6, end to end, and that it costs no other client anything.

One worker serves each module-wide server, so "the same worker still serves the
next client" is checked by its pid being unchanged after every bad request.
"""

from __future__ import annotations

import re
import selectors
import socket
import time
from collections.abc import Callable

import psutil
import pytest
import requests

from tests.server import RawClient, Server, request, wait_for

UPLOAD_APP = "tests.apps.upload:app"
LIMITS = "\n".join([
    "header_timeout = 1s",
    "body_rate_window = 1s",
    "body_min_rate = 1KiB",
    "max_body_size = 1MiB",
    "max_request_line = 8190",
    "max_header_bytes = 64KiB",
    "max_header_count = 100",
])


@pytest.fixture(scope="module")
def server(start_module_server: Callable[..., Server]) -> Server:
    return start_module_server(app=UPLOAD_APP, workers=1, threads=2, config={"limits": LIMITS})


@pytest.fixture(scope="module")
def full_disk_server(start_module_server: Callable[..., Server]) -> Server:
    # No disk has this much free space, so every staged body is refused.
    return start_module_server(app=UPLOAD_APP, workers=1, config={"staging": "min_free_disk = 1000000GiB"})


def _worker_pids(server: Server) -> list[int]:
    return sorted(p.pid for p in server.workers())


def _still_serving(server: Server, pids: list[int]) -> None:
    """The next client is served, by the same (single) worker."""
    resp = requests.get(server.url + "/environ", timeout=5)
    assert resp.status_code == 200 and resp.json()["REQUEST_METHOD"] == "GET"
    assert _worker_pids(server) == pids


def _expect_error(server: Server, data: bytes, status: int, *, send_all: bool = True) -> None:
    """Send ``data``; the answer is ``status`` and the connection then closes."""
    pids = _worker_pids(server)
    assert len(pids) == 1
    with RawClient(server.connect(timeout=5)) as client:
        try:
            client.send(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server answered and stopped reading before we were done
        resp = client.read_response()
        assert resp.status == status, resp.raw_head
        assert resp.raw_head.startswith(b"HTTP/1.1 %d " % status)
        assert resp.header("connection") == "close"
        assert client.at_eof(), "the connection should close after an error"
    _still_serving(server, pids)


GET = b"GET / HTTP/1.1\r\nHost: t\r\n"

BAD_400 = {
    "request-line-garbage": b"GARBAGE\r\n\r\n",
    "request-line-double-space": b"GET  / HTTP/1.1\r\nHost: t\r\n\r\n",
    "request-line-bare-lf": b"GET / HTTP/1.1\nHost: t\r\n\r\n",
    "header-no-colon": GET + b"NoColonHere\r\n\r\n",
    "header-space-in-name": GET + b"Bad Name: x\r\n\r\n",
    "header-space-before-colon": GET + b"X-A : x\r\n\r\n",
    "content-length-and-transfer-encoding":
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "differing-duplicate-content-length":
        b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    "bad-content-length": b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5x\r\n\r\nhello",
    "bad-chunk-size": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
    "chunk-without-crlf": b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX0\r\n\r\n",
    "obs-fold": GET + b"X-A: first\r\n  folded\r\n\r\n",
    "bare-cr-in-value": GET + b"X-A: a\rb\r\n\r\n",
    "nul-in-value": GET + b"X-A: a\x00b\r\n\r\n",
    "nul-in-target": b"GET /a\x00b HTTP/1.1\r\nHost: t\r\n\r\n",
    "missing-host": b"GET / HTTP/1.1\r\n\r\n",
}


@pytest.mark.parametrize("data", list(BAD_400.values()), ids=list(BAD_400))
def test_malformed_requests_get_400(server: Server, data: bytes) -> None:
    _expect_error(server, data, 400)


def test_request_line_too_long_gets_414(server: Server) -> None:
    _expect_error(server, b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: t\r\n\r\n", 414)


def test_header_block_too_large_gets_431(server: Server) -> None:
    big = b"".join(b"X-Pad-%d: %s\r\n" % (n, b"v" * 4000) for n in range(20))  # ~80 KiB
    _expect_error(server, GET + big + b"\r\n", 431)


def test_too_many_header_fields_gets_431(server: Server) -> None:
    many = b"".join(b"X-F%d: v\r\n" % n for n in range(150))
    _expect_error(server, GET + many + b"\r\n", 431)


@pytest.mark.parametrize("coding", [b"gzip", b"gzip, chunked", b"x-custom"])
def test_unsupported_transfer_encoding_gets_501(server: Server, coding: bytes) -> None:
    _expect_error(server, b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: %s\r\n\r\n" % coding, 501)


@pytest.mark.parametrize("version", [b"HTTP/2.0", b"HTTP/1.2", b"HTTP/0.9"])
def test_unsupported_http_version_gets_505(server: Server, version: bytes) -> None:
    _expect_error(server, b"GET / %s\r\nHost: t\r\n\r\n" % version, 505)


def test_declared_body_too_large_gets_413_before_the_body(server: Server) -> None:
    # Only the head is sent: the answer must not wait for 2 MB that never come.
    _expect_error(server, b"POST /sha256 HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n", 413)


def test_streamed_chunked_body_too_large_gets_413(server: Server) -> None:
    pids = _worker_pids(server)
    with RawClient(server.connect(timeout=5)) as client:
        client.send(b"POST /sha256 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
        sent = 0
        try:
            for _ in range(40):  # 2.5 MiB, over the 1 MiB limit
                client.send(chunk)
                sent += 1
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert sent >= 16, "the 413 came before the limit was reached"
        resp = client.read_response()
        assert resp.status == 413 and resp.header("connection") == "close"
    _still_serving(server, pids)


def test_header_timeout_gets_408(server: Server) -> None:
    pids = _worker_pids(server)
    with RawClient(server.connect(timeout=5)) as client:
        started = time.monotonic()
        client.send(b"GET / HTTP/1.1\r\nHost: t\r\nX-Slow: ")
        resp = client.read_response()
        elapsed = time.monotonic() - started
        assert resp.status == 408 and resp.header("connection") == "close"
        assert 0.9 <= elapsed <= 3.0, elapsed
        assert client.at_eof()
    _still_serving(server, pids)


def test_body_slower_than_min_rate_gets_408(server: Server) -> None:
    pids = _worker_pids(server)
    with RawClient(server.connect(timeout=5)) as client:
        started = time.monotonic()
        client.send(b"POST /sha256 HTTP/1.1\r\nHost: t\r\nContent-Length: 100000\r\n\r\n" + b"x" * 100)
        resp = client.read_response()
        elapsed = time.monotonic() - started
        assert resp.status == 408 and resp.header("connection") == "close"
        assert elapsed <= 3.0, elapsed
    _still_serving(server, pids)


def test_body_at_an_acceptable_rate_is_not_timed_out(server: Server) -> None:
    # 3 s at ~16 KiB/s: well above the 1 KiB/s minimum, over three rate windows.
    piece = b"y" * 4096
    total = 12 * len(piece)
    with RawClient(server.connect(timeout=5)) as client:
        client.send(b"POST /sha256 HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % total)
        for _ in range(12):
            client.send(piece)
            time.sleep(0.25)  # the client's pace is what this test is about
        resp = client.read_response()
    assert resp.status == 200
    assert b'"size": %d' % total in resp.body


def test_handler_exception_gets_500_without_traceback(server: Server) -> None:
    pids = _worker_pids(server)
    resp = request(server, b"GET /boom HTTP/1.1\r\nHost: t\r\n\r\n")
    assert resp.status == 500
    assert b"Traceback" not in resp.body and b"deliberate" not in resp.body
    assert b"RuntimeError" not in resp.body and b"upload.py" not in resp.body

    def logged() -> bool:
        text = server.error_log.read_text("utf-8", "replace")
        return "Traceback (most recent call last)" in text and \
            "RuntimeError: deliberate failure in the test app" in text

    wait_for(logged, 5, what="traceback in the error log")
    _still_serving(server, pids)


def test_not_enough_disk_gets_507_before_any_body_byte(full_disk_server: Server) -> None:
    server = full_disk_server
    pids = _worker_pids(server)
    # Without Expect: the head alone is answered.
    _expect_error(server, b"PUT /sha256 HTTP/1.1\r\nHost: t\r\nContent-Length: 50000000\r\n\r\n", 507)
    # With Expect: 507 instead of 100 Continue.
    with RawClient(server.connect(timeout=5)) as client:
        client.send(b"PUT /sha256 HTTP/1.1\r\nHost: t\r\nContent-Length: 50000000\r\n"
                    b"Expect: 100-continue\r\n\r\n")
        head = client.read_until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 507 "), head
    assert not list(server.staging.iterdir())
    # A body small enough for RAM still works.
    resp = requests.post(server.url + "/sha256", data=b"z" * 1000, timeout=5)
    assert resp.status_code == 200 and resp.json()["size"] == 1000
    _still_serving(server, pids)


def test_errors_are_logged_with_their_status(server: Server) -> None:
    request(server, b"GET / HTTP/9.9\r\nHost: t\r\n\r\n")

    def logged() -> bool:
        return bool(re.search(r"-> 505: unsupported HTTP version", server.error_log.read_text("utf-8", "replace")))

    wait_for(logged, 5, what="505 in the error log")


def test_worker_survived_everything(server: Server) -> None:
    # The module's server still has exactly its one original worker, which is healthy.
    workers = server.workers()
    assert len(workers) == 1
    assert workers[0].status() != psutil.STATUS_ZOMBIE
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"GET /environ HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        assert sock.recv(12) == b"HTTP/1.1 200"


def test_trickling_clients_do_not_block_others_and_get_408(start_server: Callable[..., Server]) -> None:
    """200 connections sending their head one byte a second (slowloris) cost a normal client nothing."""
    header_timeout = 3.0
    server = start_server(app=UPLOAD_APP, workers=1, config={"limits": f"header_timeout = {header_timeout:g}s"})
    head = b"GET /slowloris HTTP/1.1\r\nHost: t\r\nX-Padding: " + b"p" * 100  # never complete
    selector = selectors.DefaultSelector()
    socks: list[socket.socket] = []
    received: dict[socket.socket, bytes] = {}
    last_sent: dict[socket.socket, int] = {}
    try:
        for _ in range(200):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.setblocking(False)
            socks.append(sock)
            received[sock] = b""
            selector.register(sock, selectors.EVENT_READ)
        started = time.monotonic()
        trickling = set(socks)

        def trickle_for(seconds: float) -> None:
            """Send one more byte per second to every socket that has no answer yet; collect answers."""
            until = time.monotonic() + seconds
            while (now := time.monotonic()) < until and trickling:
                for key, _ in selector.select(min(0.1, until - now)):
                    sock = key.fileobj
                    try:
                        data = sock.recv(4096)  # type: ignore[union-attr]
                    except OSError:
                        data = b""
                    received[sock] += data  # type: ignore[index]
                    trickling.discard(sock)  # type: ignore[arg-type]
                    if not data:
                        selector.unregister(sock)
                sent_at = int(time.monotonic() - started)
                for sock in list(trickling):
                    if last_sent.get(sock, -1) < sent_at:
                        sock.send(head[sent_at:sent_at + 1])
                        last_sent[sock] = sent_at

        trickle_for(1.2)
        assert len(trickling) == 200, "no trickling client may be answered before header_timeout"
        t0 = time.monotonic()
        resp = requests.get(server.url + "/environ", timeout=5)
        assert resp.status_code == 200
        assert time.monotonic() - t0 < 1.0, "a normal client waited behind the trickling ones"
        resp = requests.post(server.url + "/sha256", data=b"x" * 100_000, timeout=5)
        assert resp.status_code == 200 and resp.json()["size"] == 100_000
        trickle_for(header_timeout + 2.5 - (time.monotonic() - started))
        answers = [received[s] for s in socks]
        timed_out = [a for a in answers if a.startswith(b"HTTP/1.1 408 ")]
        assert len(timed_out) == 200, {a[:20] for a in answers}
    finally:
        selector.close()
        for sock in socks:
            sock.close()
