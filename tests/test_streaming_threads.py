"""A streamed response is produced by the thread that called the application.

Issue 11, §4: each batch of a response iterator used to be pulled in a new pool
job, so a generator started on one thread resumed on another and lost its
request state (Flask's ``stream_with_context`` raised ``LookupError`` for the
request context). Now one thread advances one iterator, start to end.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from tests.apps.streaming import CHUNK_BYTES, CHUNKS
from tests.server import RawClient, Server, wait_for

CONCURRENT = 12  # more streams than the 4 handler threads, so threads are reused between them


def _fetch(server: Server, tag: str) -> tuple[int, list[list[str]]]:
    resp = requests.get(f"{server.url}/stream?tag={tag}", timeout=30)
    lines = [line.split(" ", 3)[:3] for line in resp.text.splitlines()]
    return resp.status_code, lines


@pytest.mark.parametrize("app", ["flask_app", "django_app", "contextvar_app"])
def test_one_thread_produces_each_streamed_body(start_server: Callable[..., Server], app: str) -> None:
    server = start_server(app=f"tests.apps.streaming:{app}", workers=1, threads=4)
    tags = [f"t{n}" for n in range(CONCURRENT)]
    with ThreadPoolExecutor(CONCURRENT) as executor:
        results = list(executor.map(lambda tag: _fetch(server, tag), tags))
    expected_value = {"contextvar_app": lambda tag: f"{tag}/{tag}"}.get(app, lambda tag: tag)
    for tag, (status, lines) in zip(tags, results):
        assert status == 200, (tag, lines[:2])
        assert [int(n) for n, _, _ in lines] == list(range(CHUNKS)), (tag, len(lines))
        assert {value for _, _, value in lines} == {expected_value(tag)}, tag
        assert len({thread for _, thread, _ in lines}) == 1, (tag, {thread for _, thread, _ in lines})
    log = server.error_log.read_text()
    assert "Traceback" not in log and "LookupError" not in log
    assert CHUNKS * CHUNK_BYTES > 2 * 256 * 1024  # several batches per body: the test has teeth


def test_an_abandoned_stream_is_closed_by_the_thread_that_produced_it(
        start_server: Callable[..., Server], tmp_path: Path) -> None:
    server = start_server(app="tests.apps.streaming:endless_app", workers=1, threads=2)
    marker = tmp_path / "closed"
    with RawClient(server.connect()) as client:
        client.send(f"GET /?marker={marker} HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        client.read_until(b"\r\n\r\n")
        client.read_exactly(3 * CHUNK_BYTES)  # several batches in; then the client hangs up
    wait_for(marker.exists, 10, what="close() after the client hung up")
    iterating, closing = marker.read_text().rsplit(" ", 1)
    assert iterating == f"[{closing}]", marker.read_text()

    def idle_threads() -> bool:
        document = requests.get(server.url + "/server-status?format=json", timeout=5).json()
        return [(w["threads"], w["busy_threads"]) for w in document["workers"]] == [(2, 0)]

    wait_for(idle_threads, 5, what="the producing thread free again")


def _busy_threads(server: Server) -> list[int]:
    document = requests.get(server.url + "/server-status?format=json", timeout=5).json()
    return [w["busy_threads"] for w in document["workers"]]


def test_a_client_that_stops_reading_a_stream_does_not_hold_the_pool(start_server: Callable[..., Server]) -> None:
    # threads = 1: if the thread producing the stream kept its place in the pool while
    # its client does not read, no other handler could run until send_timeout.
    server = start_server(app="tests.apps.pool_apps:app", workers=1, threads=1,
                          config={"limits": "send_timeout = 60s"})
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", server.port))
    with RawClient(stalled) as client:
        client.send(b"GET /big?n=400 HTTP/1.1\r\nHost: t\r\n\r\n")  # 50 MiB, read no further
        client.read_until(b"\r\n\r\n")
        wait_for(lambda: _busy_threads(server) == [1], 5, what="the stream's thread busy")
        resp = requests.get(server.url + "/fast", timeout=10)
        assert resp.status_code == 200 and resp.text == "fast\n"
    wait_for(lambda: _busy_threads(server) == [0], 10, what="the stream's thread free after the hang-up")


def test_head_and_vanished_clients_free_the_producing_thread(
        start_server: Callable[..., Server], tmp_path: Path) -> None:
    server = start_server(app="tests.apps.pool_apps:app", workers=1, threads=2)
    marker = tmp_path / "closed"
    assert requests.head(f"{server.url}/big?n=50&marker={marker}", timeout=5).status_code == 200
    for _ in range(10):
        with server.connect() as sock:
            sock.sendall(f"GET /big?n=50&marker={marker} HTTP/1.1\r\nHost: t\r\n\r\n".encode())

    def settled() -> bool:
        return marker.exists() and marker.read_text().count("closed") == 11 and _busy_threads(server) == [0]

    wait_for(settled, 10, what="11 close() calls and no busy thread")
    assert "Traceback" not in server.error_log.read_text()
