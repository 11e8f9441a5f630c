"""Issue 11 §6 on a real server: 40 concurrent 50 MiB uploads stay within the memory config.

Two workers, ``memory_budget = 64MiB`` and ``memory_threshold = 64MiB`` (so
whole bodies may be staged in RAM, and only the budget stops them: the worst
case for it). 40 clients stream one 50 MiB body each at once, raw to a WSGI app
that copies ``wsgi.input`` into a file, or as a one-file form to a native
route that calls ``save()``. A thread samples Σ worker RSS (psutil) while they
run: its growth must stay within memory_budget + 32 MiB, and once every upload
is answered the workers must give the memory back. Every stored file must
have the size and SHA-256 of what its client sent.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.server import RawClient, Server, wait_for

MiB = 1024 * 1024
CLIENTS = 40
EACH = 50 * MiB
BUDGET = 64 * MiB
SLACK = 32 * MiB  # the allowance beyond memory_budget
AFTER_BOUND = 16 * MiB  # Σ RSS growth once the uploads are over (it was 40-127 MiB before)
TAIL = 64  # each body ends in bytes of its own, so a mixed-up body cannot pass
BOUNDARY = "memory-bound-7c1f"
BLOCK = os.urandom(4 * MiB)
APPS = {"raw": ("tests.apps.upload:app", "/save"), "multipart": ("tests.apps.native:app", "/save")}


def _rss_sum(procs: list[psutil.Process]) -> int:
    return sum(proc.memory_info().rss for proc in procs)


class PeakSampler:
    """Σ RSS of the workers every 10 ms in a thread, from start to stop."""

    def __init__(self, procs: list[psutil.Process]) -> None:
        self.procs = procs
        self.base = _rss_sum(procs)
        self.peak = self.base
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _rss_sum(self.procs))
            self.samples += 1

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def _common_part(size: int) -> Any:
    """SHA-256 state after the bytes every body shares: BLOCK repeated, ``size`` bytes."""
    digest = hashlib.sha256()
    for offset in range(0, size, len(BLOCK)):
        digest.update(memoryview(BLOCK)[: min(len(BLOCK), size - offset)])
    return digest


def _upload(server: Server, mode: str, index: int) -> dict[str, Any]:
    """Stream one body (raw, or a one-file form) with Content-Length; return the JSON answer."""
    tail = index.to_bytes(4, "big") * (TAIL // 4)
    common = EACH - TAIL
    prefix = suffix = b""
    content_type = "application/octet-stream"
    if mode == "multipart":
        content_type = f"multipart/form-data; boundary={BOUNDARY}"
        prefix = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"u{index}.bin\"\r\n"
                  "Content-Type: application/octet-stream\r\n\r\n").encode()
        suffix = f"\r\n--{BOUNDARY}--\r\n".encode()
    path = APPS[mode][1]
    with RawClient(server.connect(timeout=120)) as client:
        client.send(f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: {content_type}\r\n"
                    f"Content-Length: {len(prefix) + EACH + len(suffix)}\r\nConnection: close\r\n\r\n".encode()
                    + prefix)
        for offset in range(0, common, len(BLOCK)):
            client.send(memoryview(BLOCK)[: min(len(BLOCK), common - offset)])  # type: ignore[arg-type]
        client.send(tail + suffix)
        resp = client.read_response()
    assert resp.status == 200, (resp.status, resp.body[:300])
    answer: dict[str, Any] = json.loads(resp.body)
    return answer


def _upload_all(server: Server, mode: str) -> list[dict[str, Any] | BaseException]:
    results: list[dict[str, Any] | BaseException] = [RuntimeError("not run")] * CLIENTS

    def one(index: int) -> None:
        try:
            results[index] = _upload(server, mode, index)
        except BaseException as exc:  # reported by the test, with the others
            results[index] = exc

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads), "uploads did not finish within 120 s"
    return results


def _check_stored(server: Server, results: list[dict[str, Any] | BaseException]) -> None:
    """Every upload answered, and its stored file has the size and SHA-256 its client sent."""
    errors = [(i, r) for i, r in enumerate(results) if isinstance(r, BaseException)]
    assert not errors, errors[:3]
    common = _common_part(EACH - TAIL)
    for index, answer in enumerate(results):
        assert isinstance(answer, dict)
        expected = common.copy()
        expected.update(index.to_bytes(4, "big") * (TAIL // 4))
        stored = server.uploads / answer["name"]
        assert answer["size"] == EACH and stored.stat().st_size == EACH, (index, answer)
        assert answer["sha256"] == expected.hexdigest(), (index, answer)
        with open(stored, "rb") as handle:
            assert hashlib.file_digest(handle, "sha256").hexdigest() == expected.hexdigest(), index
        stored.unlink()


@pytest.mark.parametrize("mode", ["raw", "multipart"])
def test_forty_concurrent_uploads_stay_within_budget_and_memory_returns(
        start_server: Callable[..., Server], mode: str, tmp_path: Path) -> None:
    server = start_server(app=APPS[mode][0], workers=2, threads=4, config={
        "staging": f"memory_threshold = {BUDGET // MiB}MiB\nmemory_budget = {BUDGET // MiB}MiB"})
    procs = [psutil.Process(p.pid) for p in server.workers()]
    assert len(procs) == 2
    with PeakSampler(procs) as sampler:
        results = _upload_all(server, mode)
    assert sampler.samples > 10  # the sampler really watched the uploads
    growth = sampler.peak - sampler.base
    assert growth <= BUDGET + SLACK, f"Σ worker RSS grew by {growth / MiB:.1f} MiB (base {sampler.base / MiB:.1f})"
    # The workers give memory back on their sweep once no upload is staged.
    wait_for(lambda: _rss_sum(procs) - sampler.base <= AFTER_BOUND, 10,
             what=f"Σ worker RSS back within {AFTER_BOUND // MiB} MiB of where it started")
    _check_stored(server, results)
    assert sorted(p.pid for p in server.workers()) == sorted(p.pid for p in procs)  # none recycled or lost
