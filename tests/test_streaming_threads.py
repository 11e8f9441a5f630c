"""A streamed response is produced by the thread that called the application.

Issue 11, §4: each batch of a response iterator used to be pulled in a new pool
job, so a generator started on one thread resumed on another and lost its
request state (Flask's ``stream_with_context`` raised ``LookupError`` for the
request context). Now one thread advances one iterator, start to end.
"""

from __future__ import annotations

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
