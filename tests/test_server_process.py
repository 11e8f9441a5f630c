"""The process model: signals to the master, respawn, heartbeat, pidfile, orphaned workers."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import requests

from tests.server import (RawClient, Server, busy_threads, listening, signal_pending, wait_for,
                          worker_holding)

UPLOAD_APP = "tests.apps.upload:app"


def _pids(server: Server) -> set[int]:
    return {p.pid for p in server.workers()}


def _get(server: Server, path: str = "/environ", timeout: float = 5) -> requests.Response:
    resp = requests.get(server.url + path, timeout=timeout)
    assert resp.status_code == 200
    return resp


def _serves_with_every_worker(server: Server, expected: int) -> None:
    """Wait until ``expected`` workers exist and requests are answered by all of them."""
    wait_for(lambda: len(_pids(server)) == expected, 10, what=f"{expected} workers")
    wait_for(lambda: all(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE for pid in _pids(server)),
             10, what="workers alive")
    _get(server)


def _kill_quietly(pids: set[int]) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_quit_stops_immediately(start_server: Callable[..., Server]) -> None:
    server = start_server(app=UPLOAD_APP, workers=2)
    workers = _pids(server)
    with RawClient(server.connect(timeout=10)) as client:
        client.send(b"GET /slow?s=20 HTTP/1.1\r\nHost: t\r\n\r\n")
        # Accepted and in a handler thread before the signal: the connection that QUIT drops
        # was established, so a refused one (a request that came too late) cannot pass for it.
        holder = wait_for(lambda: worker_holding(server, client.sock), 10, what="a worker holds the connection")
        wait_for(lambda: busy_threads(server).get(holder) == 1, 10, what="the slow request in a handler thread")
        started = time.monotonic()
        server.signal(signal.SIGQUIT)
        assert server.wait(5) == 0
        assert time.monotonic() - started < 3.0
        try:
            rest = client.read_to_eof()
        except ConnectionResetError:
            rest = b""
        assert rest == b"", f"an immediate stop answers nothing; got {rest[:100]!r}"
    wait_for(lambda: not any(psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE
                             for p in workers), 5, what="workers gone")


def test_killed_worker_is_replaced(start_server: Callable[..., Server]) -> None:
    server = start_server(app=UPLOAD_APP, workers=2)
    before = _pids(server)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: len(_pids(server) - before) == 1 and victim not in _pids(server), 10,
             what="a replacement worker")
    _serves_with_every_worker(server, 2)
    for _ in range(20):
        _get(server)
    assert "was killed by SIGKILL" in server.error_log.read_text()


def test_long_handler_does_not_trip_the_heartbeat_timeout(start_server: Callable[..., Server]) -> None:
    server = start_server(app=UPLOAD_APP, workers=1, threads=2, config={"process": "timeout = 1s"})
    before = _pids(server)
    started = time.monotonic()
    resp = requests.get(server.url + "/slow?s=3", timeout=10)
    assert resp.status_code == 200 and resp.json() == {"slept": 3.0}
    assert time.monotonic() - started >= 3.0
    assert _pids(server) == before
    assert "missed its heartbeat" not in server.error_log.read_text()


def test_stuck_worker_is_killed_by_the_heartbeat_timeout(start_server: Callable[..., Server]) -> None:
    server = start_server(app=UPLOAD_APP, workers=1, config={"process": "timeout = 1s"})
    (victim,) = _pids(server)
    os.kill(victim, signal.SIGSTOP)  # its loop stops: no more heartbeats (and SIGABRT stays pending)
    try:
        wait_for(lambda: _pids(server) and victim not in _pids(server), 10, what="the stuck worker replaced")
    finally:
        _kill_quietly({victim})
    _serves_with_every_worker(server, 1)
    log = server.error_log.read_text()
    assert log.count("missed its heartbeat") == 1, log  # SIGABRT first, SIGKILL after: one report
    assert f"worker {victim} was killed by SIGKILL" in log


def test_hup_reloads_without_failing_requests(start_server: Callable[..., Server]) -> None:
    server = start_server(app=UPLOAD_APP, workers=2)
    before = _pids(server)
    results: dict[str, object] = {}
    slow = RawClient(server.connect(timeout=15))
    slow.send(b"GET /slow?s=2 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")

    def in_flight() -> None:
        try:
            resp = slow.read_response()
            results["slow"] = (resp.status, json.loads(resp.body))
        except BaseException as exc:
            results["slow"] = exc

    failures: list[BaseException] = []
    ok = [0]
    stop = threading.Event()

    def load() -> None:
        # A new connection each time: every one must be accepted and answered by some worker,
        # including those an old worker accepted just before it began to drain. (An idle
        # keep-alive connection that a draining worker closes at the instant the client reuses
        # it is HTTP/1.1's inherent race, which clients answer by retrying; not asserted here.)
        while not stop.is_set():
            try:
                resp = requests.get(server.url + "/environ", timeout=5, headers={"Connection": "close"})
                assert resp.status_code == 200, resp.status_code
                ok[0] += 1
            except BaseException as exc:
                failures.append(exc)
            time.sleep(0.002)  # steady load, not a flood: what this test simulates

    slow_thread = threading.Thread(target=in_flight)
    load_threads = [threading.Thread(target=load) for _ in range(2)]
    slow_thread.start()
    for thread in load_threads:
        thread.start()
    try:
        # The slow request is in a handler of the old generation, and the load is running.
        holder = wait_for(lambda: worker_holding(server, slow.sock), 10, what="a worker holds the slow request")
        assert holder in before
        wait_for(lambda: busy_threads(server).get(holder, 0) >= 1, 10, what="the slow request in a handler")
        wait_for(lambda: ok[0] > 0, 10, what="the load served")
        server.signal(signal.SIGHUP)
        wait_for(lambda: len(_pids(server)) == 2 and not (_pids(server) & before), 15,
                 what="a new generation of workers")
        slow_thread.join(15)
    finally:
        stop.set()
        for thread in load_threads:
            thread.join(10)
        slow.close()
    assert results["slow"] == (200, {"slept": 2.0})
    assert not failures, [repr(f) for f in failures[:3]]
    assert ok[0] > 10
    _get(server)
    assert "reload complete" in server.error_log.read_text()


def test_ttin_and_ttou_change_the_worker_count(start_server: Callable[..., Server]) -> None:
    server = start_server(app=UPLOAD_APP, workers=2)
    server.signal(signal.SIGTTIN)
    _serves_with_every_worker(server, 3)
    server.signal(signal.SIGTTIN)
    _serves_with_every_worker(server, 4)
    server.signal(signal.SIGTTOU)
    _serves_with_every_worker(server, 3)
    # One at a time: two identical signals sent back to back may merge into one (POSIX).
    server.signal(signal.SIGTTOU)
    _serves_with_every_worker(server, 2)
    server.signal(signal.SIGTTOU)
    _serves_with_every_worker(server, 1)
    (last,) = _pids(server)
    server.signal(signal.SIGTTOU)  # never below one
    # The master handles signals in the order they reach it: once this TTOU is no longer
    # pending, a TTIN sent now is handled after it, and it says how many workers TTOU left.
    wait_for(lambda: not signal_pending(server.pid, signal.SIGTTOU), 5, what="the TTOU delivered")
    ttin_lines = server.error_log.read_text().count("TTIN: ")
    server.signal(signal.SIGTTIN)
    wait_for(lambda: server.error_log.read_text().count("TTIN: ") > ttin_lines, 5, what="the TTIN handled")
    assert re.findall(r"TTIN: (\d+) workers", server.error_log.read_text())[-1] == "2"  # not "1": TTOU kept one
    _serves_with_every_worker(server, 2)
    assert last in _pids(server), "the TTOU at one worker stopped it"


def test_usr1_reopens_the_log_files(start_server: Callable[..., Server]) -> None:
    server = start_server(app=UPLOAD_APP, workers=2)
    _get(server, "/before-rotation")
    wait_for(lambda: "/before-rotation" in server.access_log.read_text(), 5, what="first access line")
    rotated = server.access_log.with_name("access.log.1")
    server.access_log.rename(rotated)
    server.signal(signal.SIGUSR1)
    wait_for(server.access_log.exists, 5, what="a new access log at the original path")
    # Each worker reopens on its own signal; once requests land in the new file, all do.
    counter = [0]

    def lands_in_new_file() -> bool:
        counter[0] += 1
        path = f"/probe-{counter[0]}"
        _get(server, path)
        # Its access line follows the response: wait until it is in one file or the other.
        wait_for(lambda: any(f"{path} " in log.read_text() for log in (server.access_log, rotated)), 5,
                 what=f"the access line of {path}")
        return f"{path} " in server.access_log.read_text()

    wait_for(lands_in_new_file, 10, what="requests in the new access log")
    for n in range(10):  # every worker writes to the new file now
        _get(server, f"/after-{n}")
    wait_for(lambda: all(f"/after-{n} " in server.access_log.read_text() for n in range(10)), 5,
             what="all later requests in the new file")
    old = rotated.read_text()
    assert "/before-rotation" in old
    assert "/after-" not in old


def test_pidfile_written_and_removed(start_server: Callable[..., Server], tmp_path: Path) -> None:
    pidfile = tmp_path / "prefork.pid"
    server = start_server(app=UPLOAD_APP, config={"server": f"pidfile = {pidfile}"})
    assert pidfile.read_text().strip() == str(server.pid)
    server.signal(signal.SIGTERM)
    assert server.wait(15) == 0
    assert not pidfile.exists()


def test_workers_do_not_outlive_the_master(start_server: Callable[..., Server]) -> None:
    server = start_server(app=UPLOAD_APP, workers=2)
    workers = _pids(server)
    assert len(workers) == 2
    try:
        server.proc.kill()
        server.wait(5)

        def all_gone() -> bool:
            alive = []
            for pid in workers:
                try:
                    if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                        alive.append(pid)
                except psutil.NoSuchProcess:
                    pass
            return not alive

        wait_for(all_gone, 5, what="workers exit after the master died")
        assert not listening(server.port)
        with pytest.raises(ConnectionRefusedError):
            server.connect(timeout=2).close()
    finally:
        _kill_quietly({pid for pid in workers if psutil.pid_exists(pid)})
