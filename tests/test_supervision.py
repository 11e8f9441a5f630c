"""Supervision gaps of issue 11, §7: orphans, boot failures, unknown children, TTOU.

- A worker whose master was SIGKILLed finishes its uploads for at most
  ``graceful_timeout``, then exits.
- A worker that dies before it is ready, for any reason, is respawned with a
  growing delay, and after a few failures in a row the master stops with exit
  code 3 and the reason, instead of respawning forever.
- A child the master did not fork is logged when reaped.
- TTOU never stops a worker that is still booting.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import requests

from tests.server import REPO, Server, process_gone, wait_for

UPLOAD_APP = "tests.apps.upload:app"



def _status(server: Server) -> dict[str, Any]:
    document: dict[str, Any] = requests.get(server.url + "/server-status?format=json", timeout=5).json()
    return document


def _slow_upload(server: Server, stop: threading.Event) -> None:
    try:
        with server.connect(timeout=10) as sock:
            sock.sendall(b"POST /sha256 HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n\r\n")
            while not stop.wait(0.1):  # a slow client's pace: what this test simulates
                sock.sendall(b"x" * 8192)
    except OSError:
        pass  # the worker closed it: that is what the test waits for


def test_an_orphaned_worker_stops_within_graceful_timeout(start_server: Callable[..., Server]) -> None:
    server = start_server(app=UPLOAD_APP, workers=1, config={
        "process": "graceful_timeout = 2s", "limits": "body_min_rate = 0"})
    [worker] = [p.pid for p in server.workers()]
    stop = threading.Event()
    uploader = threading.Thread(target=_slow_upload, args=(server, stop))
    uploader.start()
    try:
        wait_for(lambda: any(w["uploads"] for w in _status(server)["workers"]), 10, what="the upload in flight")
        server.proc.kill()
        server.wait(5)
        killed = time.monotonic()
        wait_for(lambda: process_gone(worker), 10, what="the orphaned worker gone")
        lived = time.monotonic() - killed
    finally:
        stop.set()
        uploader.join(10)
        if psutil.pid_exists(worker):
            psutil.Process(worker).kill()
    assert 1.5 <= lived < 6.0, lived  # it drained for graceful_timeout (2 s), not for the upload
    log = server.error_log.read_text()
    assert f"worker {worker}: the master is gone; finishing what is in flight for at most 2 s" in log
    assert f"worker {worker}: graceful_timeout (2 s) is over without a master; closing 1 connections" in log


def test_workers_that_die_while_starting_are_retried_with_backoff_then_stop_the_master(tmp_path: Path) -> None:
    server = Server(tmp_path, app="tests.apps.dies_at_import:app", workers=1)
    try:
        assert server.wait(60) == 3
    finally:
        server.stop()
    log = server.error_log.read_text()
    delays = [float(d) for d in re.findall(r"died while starting \(exited with code 7\); starting another in "
                                           r"([0-9.]+) s", log)]
    assert delays == [0.25, 0.5, 1.0, 2.0], log
    assert "5 workers in a row died while starting, the last exited with code 7; stopping" in log
    assert log.count("spawned worker") == 5
    assert "exited with code 7 before it was ready" in log


def test_a_child_the_master_did_not_fork_is_logged_when_reaped(tmp_path: Path) -> None:
    # The master inherits a child from the process that exec'ed it (a wrapper script, say).
    config = tmp_path / "server.ini"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config.write_text(f"[server]\nbind = 127.0.0.1:{port}\nworkers = 1\n[logging]\n"
                      f"error_log = {tmp_path / 'error.log'}\naccess_log =\nlevel = debug\n")
    # The stranger exits once the exec'ed master serves (a worker answers): bounded, no sleep.
    wrapper = ("import os, socket, sys, time\n"
               "if os.fork() == 0:\n"
               "    deadline = time.monotonic() + 15\n"
               "    while time.monotonic() < deadline:\n"
               "        try:\n"
               f"            with socket.create_connection(('127.0.0.1', {port}), timeout=1) as s:\n"
               "                s.sendall(b'GET /environ HTTP/1.1\\r\\nHost: t\\r\\n\\r\\n')\n"
               "                if s.recv(12) == b'HTTP/1.1 200':\n"
               "                    break\n"
               "        except OSError:\n"
               "            pass\n"
               "        time.sleep(0.05)  # the poll interval\n"
               "    os._exit(5)\n"
               "os.execv(sys.executable, [sys.executable, '-m', 'prefork.cli', '-c', sys.argv[1], "
               "'tests.apps.upload:app'])\n")
    proc = subprocess.Popen([sys.executable, "-c", wrapper, str(config)], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)))
    try:
        error_log = tmp_path / "error.log"
        wait_for(lambda: error_log.exists() and "which is not one of this master's workers" in error_log.read_text(),
                 15, what="the stranger reaped and logged")
        assert re.search(r"reaped process \d+, which is not one of this master's workers \(exited with code 5\)",
                         error_log.read_text())
        assert proc.poll() is None
        assert requests.get(f"http://127.0.0.1:{port}/environ", timeout=5).status_code == 200
    finally:
        workers = psutil.Process(proc.pid).children() if proc.poll() is None else []
        proc.terminate()
        proc.wait(15)
        psutil.wait_procs(workers, timeout=5)


def test_ttou_never_stops_a_worker_that_is_still_booting(start_server: Callable[..., Server]) -> None:
    server = start_server(app="tests.apps.slow_import:app", workers=2)
    server.signal(signal.SIGHUP)
    wait_for(lambda: [w["state"] for w in _status(server)["workers"] if w["generation"] == 2]
             == ["booting", "booting"], 10, what="generation 2 booting")
    server.signal(signal.SIGTTOU)
    wait_for(lambda: [(w["generation"], w["state"]) for w in _status(server)["workers"]] == [(2, "ready")], 20,
             interval=0.2, what="one worker of generation 2 left")
    log = server.error_log.read_text()
    assert "killed by SIGTERM" not in log and "before it was ready" not in log, log
    stopped = re.findall(r"worker \d+ exited with code 0", log)
    assert len(stopped) == 3, log  # two of generation 1 after the reload, one of generation 2 after TTOU


def test_boot_failures_back_off_while_other_workers_are_ready(start_server: Callable[..., Server],
                                                             tmp_path: Path) -> None:
    # A replacement that dies while starting, beside a healthy worker (a recycle after a
    # deploy broke an extension, the OOM killer): the failures are still in a row.
    marker = tmp_path / "crash"
    server = start_server(app="tests.apps.crash_when_marked:app", workers=2, threads=1,
                          env={"PREFORK_TEST_CRASH_MARKER": str(marker)})
    marker.write_text("from now on, workers die while starting\n")
    os.kill(server.workers()[0].pid, signal.SIGTERM)
    wait_for(lambda: server.error_log.read_text().count("died while starting") >= 3, 10,
             what="three replacements dead")
    delays = re.findall(r"died while starting \(was killed by SIGSEGV\); starting another in ([0-9.]+) s",
                        server.error_log.read_text())
    assert delays[:3] == ["0.25", "0.5", "1"], delays
