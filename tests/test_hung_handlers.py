"""Hung handlers and stalled loops are found, answered, shown and replaced.

Issue 11, §5: a handler stuck in application code used to run forever, and a
worker whose threads were all stuck served nothing while its heartbeat looked
healthy. Now ``handler_timeout`` answers 504, writes the stuck thread's stack
to the error log and replaces the worker gracefully; the status page shows busy
threads; a worker whose loop stops is sent SIGABRT (every thread's stack to
the error log) before SIGKILL, and the miss is logged once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import requests

from tests.server import RawClient, Server, process_gone, wait_for

UPLOAD_APP = "tests.apps.upload:app"


def _pids(server: Server) -> set[int]:
    return {p.pid for p in server.workers()}


def _status(server: Server) -> dict[str, Any]:
    document: dict[str, Any] = requests.get(server.url + "/server-status?format=json", timeout=5).json()
    return document



def test_a_hung_handler_gets_504_its_stack_logged_and_its_worker_replaced(
        start_server: Callable[..., Server]) -> None:
    server = start_server(app=UPLOAD_APP, workers=1, threads=2, config={"process": "handler_timeout = 1s"})
    [old] = _pids(server)
    started = time.monotonic()
    with RawClient(server.connect(timeout=10)) as client:
        client.send(b"GET /slow?s=30 HTTP/1.1\r\nHost: t\r\n\r\n")
        resp = client.read_response()
        waited = time.monotonic() - started
        assert resp.status == 504, resp.raw_head
        assert resp.body == b"Gateway Timeout: the application did not answer within 1 s.\n"
        assert resp.header("connection") == "close"
        assert client.at_eof()
    assert 1.0 <= waited < 5.0, waited
    # Replaced gracefully: the old worker stops accepting and exits although its thread still sleeps.
    wait_for(lambda: process_gone(old) and len(_pids(server) - {old}) == 1, 10, what="the worker replaced")
    assert requests.get(server.url + "/environ", timeout=5).status_code == 200
    log = server.error_log.read_text()
    assert f"worker {old}: the handler for GET /slow?s=30 has run for " in log
    assert "(handler_timeout 1 s); answering 504 and recycling the worker. Its thread's stack:" in log
    assert "time.sleep(float(query.get(\"s\", \"1\")))" in log  # the line it is stuck on
    assert "Traceback" not in log
    access = server.access_log.read_text()
    assert '"GET /slow?s=30 HTTP/1.1" 504 ' in access


def test_handlers_that_finish_in_time_are_not_touched(start_server: Callable[..., Server]) -> None:
    server = start_server(app=UPLOAD_APP, workers=1, threads=2, config={"process": "handler_timeout = 3s"})
    before = _pids(server)
    resp = requests.get(server.url + "/slow?s=1.5", timeout=10)
    assert resp.status_code == 200 and resp.json() == {"slept": 1.5}
    assert _pids(server) == before
    assert "handler_timeout" not in server.error_log.read_text()


def test_the_status_page_shows_busy_threads(start_server: Callable[..., Server]) -> None:
    server = start_server(app=UPLOAD_APP, workers=1, threads=3)
    done = threading.Event()

    def slow() -> None:
        try:
            requests.get(server.url + "/slow?s=3", timeout=10)
        finally:
            done.set()

    thread = threading.Thread(target=slow)
    thread.start()
    try:
        wait_for(lambda: [(w["threads"], w["busy_threads"]) for w in _status(server)["workers"]] == [(3, 1)],
                 5, what="one busy thread of three")
        text = requests.get(server.url + "/server-status?format=prometheus", timeout=5).text
        assert 'prefork_handler_threads{state="busy"} 1' in text
        assert 'prefork_handler_threads{state="idle"} 2' in text
    finally:
        thread.join(15)
    assert done.is_set()
    wait_for(lambda: [w["busy_threads"] for w in _status(server)["workers"]] == [0], 5, what="idle again")


def test_a_stalled_loop_is_aborted_with_its_stacks_logged_once(start_server: Callable[..., Server]) -> None:
    # threads = 0: the handler runs in the loop, so a sleeping handler stops the heartbeat.
    server = start_server(app=UPLOAD_APP, workers=1, threads=0, config={"process": "timeout = 1s"})
    [old] = _pids(server)
    with RawClient(server.connect(timeout=20)) as client:
        client.send(b"GET /slow?s=20 HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_for(lambda: process_gone(old), 10, what="the stalled worker ended")
        assert client.at_eof()
    wait_for(lambda: "was killed by SIGABRT" in server.error_log.read_text(), 5, what="its end logged")
    wait_for(lambda: len(_pids(server)) == 1, 10, what="a replacement")
    assert requests.get(server.url + "/environ", timeout=5).status_code == 200
    log = server.error_log.read_text()
    assert log.count("missed its heartbeat") == 1, log
    assert f"worker {old} missed its heartbeat for " in log
    assert "Current thread 0x" in log and 'File "' in log and "upload.py" in log  # faulthandler's dump



def test_a_request_queued_behind_a_hung_handler_is_answered(start_server: Callable[..., Server]) -> None:
    # threads = 1 and it hangs: the pool puts a new thread in its place, and a request
    # that waited as long as handler_timeout for a thread is answered too.
    server = start_server(app="tests.apps.pool_apps:app", workers=1, threads=1,
                          config={"process": "handler_timeout = 1s"})
    [old] = _pids(server)
    with RawClient(server.connect(timeout=20)) as hung, RawClient(server.connect(timeout=10)) as queued:
        hung.send(b"GET /sleep?s=30 HTTP/1.1\r\nHost: t\r\n\r\n")
        wait_for(lambda: [w["busy_threads"] for w in _status(server)["workers"]] == [1], 5,
                 what="the only thread busy")
        queued.send(b"GET /fast HTTP/1.1\r\nHost: t\r\n\r\n")
        assert hung.read_response().status == 504
        assert queued.read_response().status in (200, 504)  # run by the new thread, or timed out queued
    wait_for(lambda: process_gone(old), 10, what="the worker with the hung thread gone")
    assert requests.get(server.url + "/fast", timeout=5).text == "fast\n"
