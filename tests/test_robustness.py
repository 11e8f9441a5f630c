"""Faults that must cost one request, never the worker (found in review).

Each test checks the answer to the bad request and that the same worker
(same pid) then serves the next one.
"""

from __future__ import annotations

import shutil
import signal
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from prefork.apps.broadcast import Hub, WorkerLink, encode
from tests.server import Server, wait_for


@pytest.fixture
def faulty(start_server: Callable[..., Server]) -> Server:
    return start_server(app="tests.apps.faulty:app", workers=1)


def _worker_pid(server: Server) -> int:
    return int(requests.get(server.url + "/ok", timeout=5).text)


@pytest.mark.parametrize("path", ["/snowman", "/inject", "/two-lengths"])
def test_invalid_response_heads_become_500_and_the_worker_survives(faulty: Server, path: str) -> None:
    pid = _worker_pid(faulty)
    response = requests.get(faulty.url + path, timeout=5)
    assert response.status_code == 500
    assert "X-Injected" not in response.headers
    assert _worker_pid(faulty) == pid


@pytest.mark.parametrize("method", ["HEAD", "GET"])
def test_a_close_that_raises_is_logged_and_the_worker_survives(faulty: Server, method: str) -> None:
    pid = _worker_pid(faulty)
    response = requests.request(method, faulty.url + "/close-raises", timeout=5)
    assert response.status_code == 200
    if method == "GET":
        assert response.content == b"x" * 8192 * 64
    assert _worker_pid(faulty) == pid
    # close() runs on the thread that produced the body, which may finish after the response did.
    wait_for(lambda: "deliberate failure in close()" in faulty.output(), 5, what="the failing close() logged")


def test_a_streamed_block_is_sent_without_waiting_for_the_next(faulty: Server) -> None:
    # PEP 3333: a server must not delay the transmission of any block.
    with socket.create_connection(("127.0.0.1", faulty.port), timeout=5) as sock:
        sock.sendall(b"GET /drip HTTP/1.1\r\nHost: t\r\n\r\n")
        sock.settimeout(1.5)  # the second block comes 2 s later
        received = b""
        while b"first block" not in received:
            received += sock.recv(4096)
        assert b"second block" not in received
        sock.settimeout(5)
        while not received.endswith(b"0\r\n\r\n"):
            received += sock.recv(4096)
        assert b"second block" in received


def test_a_form_charset_without_replace_support_is_decoded_as_utf8(start_server: Callable[..., Server]) -> None:
    server = start_server(app="tests.apps.native:app", workers=1)
    before = {p.pid for p in server.workers()}
    response = requests.post(server.url + "/form", files={"a": (None, "b"), "_charset_": (None, "idna")},
                             timeout=5)
    assert response.status_code == 200
    assert response.json()["a"] == ["b"]
    assert {p.pid for p in server.workers()} == before


def test_a_vanished_staging_directory_gives_500_and_the_server_keeps_serving(
        start_server: Callable[..., Server]) -> None:
    server = start_server(app="tests.apps.upload:app", workers=1,
                          config={"staging": "memory_threshold = 64KiB\nmin_free_disk = 0"})
    before = {p.pid for p in server.workers()}
    shutil.rmtree(server.staging)
    response = requests.post(server.url + "/sha256", data=b"z" * (1 << 20), timeout=10)
    assert response.status_code == 500
    assert requests.get(server.url + "/environ", timeout=5).status_code == 200
    assert {p.pid for p in server.workers()} == before


def test_the_hub_drops_a_dead_workers_link_instead_of_crashing() -> None:
    hub = Hub()
    alive_master, alive_worker = hub.pair()
    dead_master, dead_worker = hub.pair()
    hub.attach(1, alive_master)
    hub.attach(2, dead_master)
    dead_worker.close()
    alive_worker.sendall(encode("chat", "hello"))
    link = hub.links[1]
    for _ in range(3):  # the dead peer fails on the first or a later write
        hub.on_readable(link)
        alive_worker.sendall(encode("chat", "again"))
    assert hub.links[2].eof
    alive_worker.settimeout(2)
    assert b"hello" in alive_worker.recv(4096)
    for sock in (alive_worker,):
        sock.close()
    hub.detach(1)
    hub.detach(2)


def test_a_worker_link_reports_the_masters_exit_once() -> None:
    master_end, worker_end = socket.socketpair()
    link = WorkerLink(worker_end, lambda channel, message: None, lambda fn, *args: fn(*args))
    ended: list[bool] = []
    link.on_eof = lambda: ended.append(True)
    master_end.close()
    link.on_readable()
    assert ended == [True]
    worker_end.close()


def test_a_reload_whose_app_fails_to_import_keeps_the_running_workers(
        start_server: Callable[..., Server], tmp_path: Path) -> None:
    marker = tmp_path / "broken"
    server = start_server(app="tests.apps.fails_when_marked:app", workers=2,
                          env={"PREFORK_TEST_FAIL_IMPORT": str(marker)})
    # Both workers must have loaded the app before it breaks (one still booting would
    # fail as a first-generation worker, which rightly stops the server).
    wait_for(lambda: [w["state"] for w in requests.get(
        server.url + "/server-status?format=json", timeout=5).json()["workers"]] == ["ready", "ready"],
        timeout=15)
    before = {p.pid for p in server.workers()}
    marker.write_text("broken")
    server.signal(signal.SIGHUP)
    wait_for(lambda: "reload failed" in server.output(), timeout=15)
    # The old generation still serves, and keeps serving; the master did not stop.
    for _ in range(20):
        assert int(requests.get(server.url + "/", timeout=5).text) in before
    assert server.proc.poll() is None
    wait_for(lambda: {p.pid for p in server.workers()} == before, timeout=15)
    # With the app fixed, the next reload goes through.
    marker.unlink()
    server.signal(signal.SIGHUP)
    wait_for(lambda: not before & {p.pid for p in server.workers()}, timeout=20)
    assert requests.get(server.url + "/", timeout=5).status_code == 200


def test_a_client_that_stops_reading_a_response_is_closed_after_send_timeout(
        start_server: Callable[..., Server]) -> None:
    server = start_server(app="tests.apps.upload:app", workers=1,
                          config={"limits": "send_timeout = 1s"})
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        sock.sendall(b"GET /stream?n=2000000 HTTP/1.1\r\nHost: t\r\n\r\n")  # ~15 MB, never read
        wait_for(lambda: "no response bytes accepted" in server.output(), timeout=15)
    assert requests.get(server.url + "/environ", timeout=5).status_code == 200
