"""Uploads end to end: 1 GiB with flat worker memory, crash and stop mid-upload, Flask."""

from __future__ import annotations

import functools
import hashlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import requests

from tests.server import Server, listening, staging_fds, wait_for

UPLOAD_APP = "tests.apps.upload:app"
MiB = 1 << 20
GiB = 1 << 30
RSS_GROWTH_LIMIT = 32 * MiB


@functools.lru_cache(maxsize=None)
def _block() -> bytes:
    # Incompressible and not periodic within a block, so a lost or repeated piece changes the hash.
    return hashlib.shake_256(b"prefork upload test block").digest(MiB)


def _pattern(index: int) -> bytes:
    """Block ``index`` of an upload: the base block with its index stamped in front."""
    return index.to_bytes(8, "big") + _block()[8:]


@functools.lru_cache(maxsize=None)
def _expected(blocks: int) -> str:
    digest = hashlib.sha256()
    for i in range(blocks):
        digest.update(_pattern(i))
    return digest.hexdigest()


def _blocks(count: int) -> Iterator[bytes]:
    for i in range(count):
        yield _pattern(i)


class _SizedBody:
    """An iterable body with a known length: ``requests`` sends a Content-Length, no chunking."""

    def __init__(self, count: int) -> None:
        self.count = count

    def __len__(self) -> int:
        return self.count * MiB

    def __iter__(self) -> Iterator[bytes]:
        return _blocks(self.count)


class _RssSampler(threading.Thread):
    """Samples a process's RSS every few milliseconds until stopped."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.baseline = self.proc.memory_info().rss
        self.peak = self.baseline
        self.samples = 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.02):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
                self.samples += 1
            except psutil.NoSuchProcess:
                return

    def stop(self) -> None:
        self.done.set()
        self.join(5)


def _pids(server: Server) -> set[int]:
    return {p.pid for p in server.workers()}


@pytest.fixture(scope="module")
def big_server(start_module_server: Callable[..., Server]) -> Server:
    return start_module_server(app=UPLOAD_APP, workers=1, threads=2)


@pytest.mark.parametrize("framing", ["chunked", "content-length"])
def test_1gib_upload_exact_bytes_flat_memory(big_server: Server, framing: str) -> None:
    count = GiB // MiB
    expected = _expected(count)
    (worker,) = big_server.workers()
    requests.get(big_server.url + "/environ", timeout=5)  # warm up before the baseline
    sampler = _RssSampler(worker.pid)
    sampler.start()
    try:
        body = _blocks(count) if framing == "chunked" else _SizedBody(count)
        resp = requests.post(big_server.url + "/sha256", data=body, timeout=120)
    finally:
        sampler.stop()
    assert resp.status_code == 200
    assert resp.json() == {"sha256": expected, "size": GiB, "content_length": str(GiB)}
    assert sampler.samples > 10
    growth = sampler.peak - sampler.baseline
    assert growth < RSS_GROWTH_LIMIT, f"worker RSS grew by {growth / MiB:.1f} MiB during a 1 GiB upload"
    assert not list(big_server.staging.iterdir())
    # The loop releases the staged body just after it wrote the answer's last bytes,
    # so the client can read the answer a moment before the descriptor is closed.
    wait_for(lambda: not staging_fds(_pids(big_server), big_server.staging), 5,
             what="the staging descriptors to be closed after the response")


class _PausingUpload(threading.Thread):
    """POSTs ``before`` MiB, waits until released, then sends ``after`` MiB more (chunked)."""

    def __init__(self, url: str, before: int, after: int) -> None:
        super().__init__(daemon=True)
        self.url, self.before, self.after = url, before, after
        self.paused = threading.Event()
        self.go = threading.Event()
        self.result: requests.Response | BaseException | None = None

    def _body(self) -> Iterator[bytes]:
        for i in range(self.before + self.after):
            if i == self.before:
                self.paused.set()
                self.go.wait(20)
            yield _pattern(i)

    def run(self) -> None:
        try:
            self.result = requests.post(self.url, data=self._body(), timeout=30)
        except BaseException as exc:
            self.result = exc


def test_kill_9_worker_mid_upload_leaves_nothing_behind(start_server: Callable[..., Server]) -> None:
    server = start_server(app=UPLOAD_APP, workers=1)
    (victim,) = _pids(server)
    upload = _PausingUpload(server.url + "/sha256", before=16, after=16)
    upload.start()
    try:
        assert upload.paused.wait(20)
        # The body is past the RAM threshold: the worker holds an (unnamed) staging file.
        wait_for(lambda: staging_fds({victim}, server.staging), 10, what="a staging file in the worker")
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: _pids(server) and victim not in _pids(server), 10, what="a replacement worker")
    finally:
        upload.go.set()
        upload.join(30)
    assert isinstance(upload.result, requests.ConnectionError)
    resp = requests.post(server.url + "/sha256", data=b"after the crash", timeout=5)
    assert resp.status_code == 200 and resp.json()["size"] == len(b"after the crash")
    assert not list(server.staging.iterdir())
    assert not staging_fds(_pids(server) | {server.pid}, server.staging)


def test_term_lets_an_in_flight_upload_finish(start_server: Callable[..., Server]) -> None:
    server = start_server(app=UPLOAD_APP, workers=1)
    (worker,) = _pids(server)
    upload = _PausingUpload(server.url + "/sha256", before=16, after=48)
    upload.start()
    try:
        assert upload.paused.wait(20)
        wait_for(lambda: staging_fds({worker}, server.staging), 10, what="a staging file in the worker")
        server.signal(signal.SIGTERM)
        # The master and the draining worker both close their copies of the listener.
        wait_for(lambda: not listening(server.port), 10, what="the listening socket closed")
        with pytest.raises(ConnectionRefusedError):
            server.connect(timeout=2).close()  # new clients are refused
    finally:
        upload.go.set()
        upload.join(30)
    assert isinstance(upload.result, requests.Response), upload.result
    assert upload.result.status_code == 200
    assert upload.result.json() == {"sha256": _expected(64), "size": 64 * MiB, "content_length": str(64 * MiB)}
    assert server.wait(15) == 0
    assert not list(server.staging.iterdir())


def test_flask_request_files_save(start_server: Callable[..., Server], tmp_path: Path) -> None:
    uploads = tmp_path / "flask-uploads"
    uploads.mkdir()
    server = start_server(app="tests.apps.flask_upload:app", workers=1,
                          env={"PREFORK_TEST_UPLOADS": str(uploads)})
    assert requests.get(server.url + "/", timeout=5).text == "hello from flask"
    payload = b"".join(_pattern(i) for i in range(3)) + b"tail"
    resp = requests.post(server.url + "/upload", timeout=30,
                         files={"upload": ("photo of me.jpg", payload, "image/jpeg")},
                         data={"commenter": "Zoë"})
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["filename"] == "photo of me.jpg" and doc["commenter"] == "Zoë"
    assert doc["size"] == len(payload) and doc["sha256"] == hashlib.sha256(payload).hexdigest()
    (saved,) = uploads.iterdir()
    assert saved.read_bytes() == payload
