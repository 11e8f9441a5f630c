"""Zero-drop reloads: continuous load and big uploads while the master reloads five times,
grows and shrinks, and workers recycle every ~50 requests. Nothing may fail."""

from __future__ import annotations

import hashlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import requests

from tests.server import Server, wait_for

UPLOAD_APP = "tests.apps.upload:app"
MiB = 1024 * 1024
UPLOAD_SIZE = 100 * MiB
UPLOADS = 3
KEEP_ALIVE_CLIENTS = 6


class Load:
    """Small GET requests from several threads until stopped; counts successes and failures."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.stop = threading.Event()
        self.ok = 0
        self.failures: list[str] = []
        self._lock = threading.Lock()
        self.threads: list[threading.Thread] = []

    def _count(self, resp: requests.Response) -> None:
        with self._lock:
            if resp.status_code == 200 and resp.json().get("path") == "/load":
                self.ok += 1
            else:
                self.failures.append(f"status {resp.status_code}: {resp.text[:200]}")

    def _fail(self, what: str) -> None:
        with self._lock:
            self.failures.append(what)

    def new_connection_each_time(self) -> None:
        # Every connection must be accepted and answered by some worker, whatever the master does.
        while not self.stop.is_set():
            try:
                self._count(requests.get(self.server.url + "/load", timeout=10, headers={"Connection": "close"}))
            except requests.RequestException as exc:
                self._fail(f"new connection: {exc!r}")

    def keep_alive(self) -> None:
        # One pooled connection reused for as long as the server keeps it open. A draining
        # worker must never close it under a request the client is sending (RFC 9112
        # §9.3.1's race): every failure counts, and nothing is retried.
        with requests.Session() as session:
            while not self.stop.is_set():
                try:
                    resp = session.get(self.server.url + "/load", timeout=10)
                except requests.RequestException as exc:
                    self._fail(f"keep-alive: {exc!r}")
                    continue
                self._count(resp)

    def start(self) -> None:
        for target in (self.new_connection_each_time, self.new_connection_each_time,
                       *[self.keep_alive] * KEEP_ALIVE_CLIENTS):
            thread = threading.Thread(target=target)
            thread.start()
            self.threads.append(thread)

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(20)


def _upload(server: Server, seed: int, results: dict[int, Any]) -> None:
    digest = hashlib.sha256()
    block = bytearray(os.urandom(MiB))

    def body() -> Iterator[bytes]:
        for n in range(UPLOAD_SIZE // MiB):
            block[:8] = (seed * 1000 + n).to_bytes(8, "little")  # every MiB differs
            piece = bytes(block)
            digest.update(piece)
            yield piece

    try:
        resp = requests.post(server.url + "/sha256", data=body(), timeout=60)
        results[seed] = (resp.status_code, resp.json(), digest.hexdigest())
    except BaseException as exc:
        results[seed] = exc


def _status(server: Server) -> dict[str, Any]:
    document: dict[str, Any] = requests.get(server.url + "/server-status?format=json", timeout=5).json()
    return document


def test_reloads_recycling_and_resizing_under_load_drop_nothing(start_server: Callable[..., Server]) -> None:
    server = start_server(app=UPLOAD_APP, workers=2, threads=4, config={
        "process": "max_requests = 50\nmax_requests_jitter = 10",
        "limits": "body_min_rate = 0",
    })
    load = Load(server)
    uploads: dict[int, Any] = {}
    upload_threads = [threading.Thread(target=_upload, args=(server, seed, uploads)) for seed in range(UPLOADS)]
    started = time.monotonic()
    load.start()
    try:
        for thread in upload_threads:
            thread.start()
        wait_for(lambda: len([u for w in _status(server)["workers"] for u in w["uploads"] if u["received"]])
                 == UPLOADS, 20, what="every upload in flight")
        wait_for(lambda: load.ok > 0, 10, what="the load served")
        generation = 1
        for sig in (signal.SIGHUP, signal.SIGTTIN, signal.SIGHUP, signal.SIGHUP, signal.SIGTTOU,
                    signal.SIGHUP, signal.SIGHUP):
            # One step at a time, each seen through: a reload until its generation serves,
            # a resize until the master has logged it (two signals pending at once may merge).
            log_lines = server.error_log.read_text().count(f"{sig.name[3:]}: ")
            server.signal(sig)
            if sig == signal.SIGHUP:
                generation += 1
                wait_for(lambda: f"reload complete (generation {generation})" in server.error_log.read_text(),
                         20, what=f"reload {generation - 1} complete")
            else:
                wait_for(lambda: server.error_log.read_text().count(f"{sig.name[3:]}: ") > log_lines, 10,
                         what=f"{sig.name} handled")
        for thread in upload_threads:
            thread.join(max(1.0, 45 - (time.monotonic() - started)))
        # the last generation takes over completely: 2 workers (the config's count), generation 6
        wait_for(lambda: sorted((w["generation"], w["state"]) for w in _status(server)["workers"])
                 == [(6, "ready"), (6, "ready")], 20, interval=0.2, what="generation 6 alone")
        settled = load.ok
        wait_for(lambda: load.ok >= settled + 50, 10, what="load against the settled server too")
    finally:
        load.finish()
    elapsed = time.monotonic() - started
    assert not load.failures, (len(load.failures), load.failures[:5])
    assert load.ok > 200, load.ok
    for seed in range(UPLOADS):
        result = uploads.get(seed)
        assert isinstance(result, tuple), result
        status, document, expected = result
        assert status == 200, document
        assert document["size"] == UPLOAD_SIZE and document["sha256"] == expected
    # the master saw the last generation ready (it does not need an instant with no worker booting)
    wait_for(lambda: "reload complete (generation 6)" in server.error_log.read_text(), 5,
             what="the last reload complete")
    log = server.error_log.read_text()
    assert "recycling" in log  # max_requests recycled workers during the test
    assert "Traceback" not in log
    print(f"\n{load.ok} requests ok, "
          f"{log.count('recycling')} recycles, {elapsed:.1f} s")


def test_hup_keeps_the_command_line_settings(start_server: Callable[..., Server]) -> None:
    # The app is given on the command line (tests.server.Server), not in the file: a reload
    # re-reads the file and must apply the command-line settings over it again.
    server = start_server(app=UPLOAD_APP, workers=1, extra_args=["--threads", "2"])
    server.signal(signal.SIGHUP)
    wait_for(lambda: "reload complete (generation 2)" in server.error_log.read_text(), 10,
             what="the reload")
    wait_for(lambda: [w["generation"] for w in _status(server)["workers"]] == [2], 10, what="generation 2 alone")
    resp = requests.get(server.url + "/environ", timeout=5)
    assert resp.status_code == 200, resp.text  # the upload app, not the demo (which has no /environ)
    assert resp.json()["PATH_INFO"] == "/environ"
