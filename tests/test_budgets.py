"""Resource budgets on a real server: the global staging RAM budget, min_free_disk, a full
staging disk, and max_worker_memory recycling."""

from __future__ import annotations

import hashlib
import json
import os
import select
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.server import RawClient, Server, request, status, wait_for, worker_holding

UPLOAD_APP = "tests.apps.upload:app"
KiB, MiB = 1024, 1024 * 1024


def _status(server: Server) -> dict[str, Any]:
    resp = requests.get(server.url + "/server-status?format=json", timeout=5)
    assert resp.status_code == 200
    document: dict[str, Any] = resp.json()
    return document


def test_memory_budget_sends_extra_bodies_to_disk(start_server: Callable[..., Server]) -> None:
    budget = 2 * MiB
    server = start_server(app=UPLOAD_APP, workers=2, threads=4, config={
        "staging": f"memory_threshold = 1MiB\nmemory_budget = {budget}",
        "limits": "body_min_rate = 0",
    })
    size = 900 * KiB
    count = 5
    bodies = [os.urandom(size) for _ in range(count)]
    clients: list[RawClient] = []
    samples: list[tuple[int, int, list[int]]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            doc = _status(server)
            samples.append((doc["staged_ram"], doc["staged_disk"], [w["staged_ram"] for w in doc["workers"]]))
            time.sleep(0.01)  # the sampling interval

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        for body in bodies:
            client = RawClient(server.connect())
            clients.append(client)
            client.send(f"POST /sha256 HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\n\r\n".encode())
            client.send(body[:-1])  # all but the last byte: the body stays staged
        # every body is staged: the first fill the budget, the rest went to disk
        expected_disk = (count - budget // size) * (size - 1)
        doc = wait_for(lambda: (d := _status(server))["staged_ram"] + d["staged_disk"] >= count * (size - 1) - 1
                       and d, 10, what="all bodies staged")
        assert isinstance(doc, dict)
        # This reading is a sample too (the sampler thread may not get one in under load).
        samples.append((doc["staged_ram"], doc["staged_disk"], [w["staged_ram"] for w in doc["workers"]]))
        assert doc["staged_ram"] <= budget
        assert doc["staged_disk"] >= expected_disk, doc
        assert doc["staged_ram"] >= (budget // size) * (size - 1) - 256 * KiB, doc  # RAM is used up to the budget
        for client, body in zip(clients, bodies):
            client.send(body[-1:])
        for client, body in zip(clients, bodies):
            resp = client.read_response()
            assert resp.status == 200
            result = json.loads(resp.body)
            assert result == {"sha256": hashlib.sha256(body).hexdigest(), "size": size,
                              "content_length": str(size)}
    finally:
        stop.set()
        sampler.join(10)
        for client in clients:
            client.close()
    assert samples
    assert max(s[0] for s in samples) <= budget, max(s[0] for s in samples)
    assert max(s[1] for s in samples) > 0
    # once the bodies are gone, so are their reservations and staging files
    wait_for(lambda: (d := _status(server))["staged_ram"] == 0 and d["staged_disk"] == 0, 5,
             what="staging released")


def test_min_free_disk_refuses_a_big_declared_body_before_reading_it(start_server: Callable[..., Server]) -> None:
    server = start_server(app=UPLOAD_APP, config={"staging": "min_free_disk = 1000000TiB"})
    with RawClient(server.connect()) as client:
        client.send(b"POST /sha256 HTTP/1.1\r\nHost: t\r\nContent-Length: 10485760\r\n"
                    b"Expect: 100-continue\r\n\r\n")
        resp = client.read_response()  # skips 1xx: so check the raw head for a 100 below
        assert resp.status == 507
        assert b"100 Continue" not in resp.raw_head
        assert resp.header("connection") == "close"
    # raw check that nothing came before the 507
    with RawClient(server.connect()) as client:
        client.send(b"POST /sha256 HTTP/1.1\r\nHost: t\r\nContent-Length: 10485760\r\n"
                    b"Expect: 100-continue\r\n\r\n")
        first = client.read_until(b"\r\n")
        assert first.startswith(b"HTTP/1.1 507 "), first
    # a small body (RAM only) and a plain request are still served
    small = request(server, b"POST /sha256 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
    assert small.status == 200
    assert requests.get(server.url + "/environ", timeout=5).status_code == 200
    assert "507" in server.error_log.read_text()


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs mounted in the test's directory (needs root and mount permission)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount = shutil.which("mount")
    if mount is None:
        pytest.skip("no mount(8) on this machine")
    point = tmp_path / "staging"  # the test server's staging dir (tests.server.Server)
    point.mkdir(exist_ok=True)
    result = subprocess.run([mount, "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(point)],
                            capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {result.stderr.strip() or result.returncode}")
    try:
        yield point
    finally:
        subprocess.run(["umount", str(point)], capture_output=True, timeout=10)
        if os.path.ismount(point):
            subprocess.run(["umount", "-l", str(point)], capture_output=True, timeout=10)


def _used(path: Path) -> int:
    stats = os.statvfs(path)
    return (stats.f_blocks - stats.f_bfree) * stats.f_frsize


def test_disk_full_while_streaming_gives_507_and_removes_the_staging_file(
        start_server: Callable[..., Server], small_tmpfs: Path) -> None:
    server = start_server(app=UPLOAD_APP, config={
        "staging": "min_free_disk = 0\nmemory_threshold = 64KiB\nmemory_budget = 64KiB",
        "limits": "body_min_rate = 0",
    })
    try:
        assert _used(small_tmpfs) < 64 * KiB
        chunk = b"%x\r\n" % (256 * KiB) + os.urandom(256 * KiB) + b"\r\n"
        with RawClient(server.connect()) as client:
            client.send(b"POST /sha256 HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            sent = 0
            answered = False
            while sent < 16 * MiB:
                if select.select([client.sock], [], [], 0)[0]:
                    answered = True
                    break
                try:
                    client.send(chunk)
                except (BrokenPipeError, ConnectionResetError):
                    break
                sent += 256 * KiB
            assert sent > 6 * MiB  # well into the body before the disk filled
            if not answered:
                select.select([client.sock], [], [], 5)
            resp = client.read_response()
            assert resp.status == 507, resp
        # the partial staging file is gone: the tmpfs is empty again, and nothing is listed
        wait_for(lambda: _used(small_tmpfs) < 64 * KiB, 5, what="the staging file removed")
        assert os.listdir(small_tmpfs) == []
        wait_for(lambda: _status(server)["staged_disk"] == 0, 5, what="staged_disk back to 0")
        # the server still serves, uploads included
        body = os.urandom(2 * MiB)
        resp = requests.post(server.url + "/sha256", data=body, timeout=10)
        assert resp.status_code == 200 and resp.json()["sha256"] == hashlib.sha256(body).hexdigest()
        assert "disk full" in server.error_log.read_text()
    finally:
        server.stop()  # before the tmpfs is unmounted


def test_max_worker_memory_recycles_gracefully(start_server: Callable[..., Server]) -> None:
    server = start_server(app=UPLOAD_APP, workers=1, threads=4, config={"process": "max_worker_memory = 1MiB"})
    first = {p.pid for p in server.workers()}

    def holder_state(pid: int) -> tuple[str, int] | None:
        found = [(w["state"], w["busy_threads"]) for w in status(server)["workers"] if w["pid"] == pid]
        return found[0] if found else None

    with RawClient(server.connect(timeout=15)) as slow:
        slow.send(b"GET /slow?s=4 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        # Its worker is over max_worker_memory: it recycles (drains) with the slow request in a handler.
        holder = wait_for(lambda: worker_holding(server, slow.sock), 10, what="a worker holds the slow request")
        assert isinstance(holder, int)
        wait_for(lambda: holder_state(holder) == ("stopping", 1), 10,
                 what="its worker draining with the slow request in a handler")
        # A draining worker's replacement takes new requests while the slow one finishes.
        started = time.monotonic()
        resp = requests.get(server.url + "/environ", timeout=10, headers={"Connection": "close"})
        assert resp.status_code == 200
        assert time.monotonic() - started < 2.5, "new requests waited for the recycling worker"
        answer = slow.read_response()
    assert (answer.status, json.loads(answer.body)) == (200, {"slept": 4.0})
    seen: set[int] = set(first)

    def new_pid() -> bool:
        seen.update(p.pid for p in server.workers())
        return bool(seen - first)

    wait_for(new_pid, 10, what="a new worker pid")
    for _ in range(10):
        assert requests.get(server.url + "/environ", timeout=10, headers={"Connection": "close"}).status_code == 200
    log = server.error_log.read_text()
    assert "over max_worker_memory, recycling" in log
    assert "Traceback" not in log
    assert server.proc.poll() is None
