"""The access log is buffered: lines are written once per loop turn, never one write per request.

Unit tests drive ``prefork.config.logs`` directly (a stream that counts its
writes); integration tests check that no line is lost where the worker ends
(a recycle after ``max_requests``, a graceful stop) or the file is rotated.
"""

from __future__ import annotations

import io
import logging
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from prefork.config import logs
from tests.server import Server, wait_for


class CountingStream(io.StringIO):
    """A text stream that counts write calls; ``fail`` makes them raise ENOSPC."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0
        self.fail = False

    def write(self, text: str) -> int:
        self.writes += 1
        if self.fail:
            raise OSError(28, "No space left on device")
        return super().write(text)


@pytest.fixture
def stream() -> Iterator[CountingStream]:
    """The access logger writes to a CountingStream; the logger is restored afterwards."""
    saved = list(logs.access_log.handlers), logs.access_log.level
    logs.flush_access_log()
    target = CountingStream()
    logs.access_log.handlers[:] = [logging.StreamHandler(target)]
    logs.access_log.setLevel(logging.INFO)
    yield target
    logs._pending.clear()
    logs._pending_chars = 0
    logs._write_failed = False
    logs.access_log.handlers[:], _ = saved
    logs.access_log.setLevel(saved[1])


def log_one(path: str = "/", agent: str = "pytest") -> None:
    logs.log_access("127.0.0.1", f"GET {path} HTTP/1.1", 200, 5, "", agent, 0.000123)


def test_lines_wait_for_the_flush_and_go_out_in_one_write(stream: CountingStream) -> None:
    for n in range(100):
        log_one(f"/{n}")
    assert stream.writes == 0 and stream.getvalue() == ""
    logs.flush_access_log()
    lines = stream.getvalue().splitlines()
    assert stream.writes == 1
    assert [line.split('"')[1] for line in lines] == [f"GET /{n} HTTP/1.1" for n in range(100)]
    assert lines[0].endswith('200 5 "-" "pytest" 123')
    logs.flush_access_log()  # nothing pending: no write at all
    assert stream.writes == 1


def test_pending_lines_are_bounded_within_a_turn(stream: CountingStream) -> None:
    agent = "a" * 1000
    written = 0
    for _ in range(10 * logs.MAX_PENDING_ACCESS // 1000):
        log_one(agent=agent)
        assert logs._pending_chars < logs.MAX_PENDING_ACCESS  # never more than the bound held
        written += 1
    assert stream.writes >= 9  # the bound was reached and written about ten times
    logs.flush_access_log()
    assert len(stream.getvalue().splitlines()) == written


def test_a_failing_write_is_reported_once_until_writing_works_again(
        stream: CountingStream, monkeypatch: pytest.MonkeyPatch) -> None:
    reported: list[str] = []
    monkeypatch.setattr(logs.error_log, "error", lambda msg, *args: reported.append(msg % args))
    stream.fail = True
    for _ in range(3):
        log_one()
        logs.flush_access_log()
    assert reported == [
        "cannot write the access log: [Errno 28] No space left on device; its lines are dropped until it can"]
    stream.fail = False
    log_one("/after")
    logs.flush_access_log()
    assert "/after" in stream.getvalue()
    stream.fail = True
    log_one()
    logs.flush_access_log()
    assert len(reported) == 2  # failing again after a success is said again


@pytest.fixture
def configured_loggers() -> Iterator[None]:
    """Both loggers as ``setup_logging`` leaves them, restored afterwards (handlers,
    level and propagation: other tests read records through the root logger)."""
    saved = [(logger, list(logger.handlers), logger.level, logger.propagate)
             for logger in (logs.error_log, logs.access_log)]
    yield
    logs.flush_access_log()
    for logger, handlers, level, propagate in saved:
        for handler in logger.handlers:
            handler.close()
        logger.handlers[:] = handlers
        logger.setLevel(level)
        logger.propagate = propagate


def test_a_reopen_writes_pending_lines_to_the_file_being_rotated(tmp_path: Path, configured_loggers: None) -> None:
    log = tmp_path / "access.log"
    logs.setup_logging(str(tmp_path / "error.log"), str(log), "info")
    log_one("/before-rotation")
    log.rename(tmp_path / "access.log.1")
    logs.reopen_logs()
    log_one("/after-rotation")
    logs.flush_access_log()
    assert "/before-rotation" in (tmp_path / "access.log.1").read_text()
    assert "/after-rotation" in log.read_text() and "/before" not in log.read_text()


def access_lines(server: Server, marker: str) -> int:
    text = server.access_log.read_text() if server.access_log.exists() else ""
    return sum(marker in line for line in text.splitlines())


def test_a_recycled_worker_writes_every_line(start_server: Callable[..., Server]) -> None:
    server = start_server(config={"process": "max_requests = 5"}, workers=1)
    pids = set()
    for n in range(12):  # two recycles on the way
        with requests.get(f"{server.url}/echo?recycle={n}", timeout=10) as resp:
            assert resp.status_code == 200
        pids.update(p.pid for p in server.workers())
    assert len(pids) >= 2, "max_requests did not recycle the worker"
    wait_for(lambda: access_lines(server, "recycle=") == 12, 10, what="all 12 access lines")
    lines = [line for line in server.access_log.read_text().splitlines() if "recycle=" in line]
    assert [line.split("recycle=")[1].split(" ")[0] for line in lines] == [str(n) for n in range(12)]


def test_a_stopped_server_has_written_every_line(start_server: Callable[..., Server]) -> None:
    server = start_server(workers=2)
    session = requests.Session()
    for n in range(50):
        assert session.get(f"{server.url}/echo?stop={n}", timeout=10).status_code == 200
    session.close()
    server.signal(signal.SIGTERM)
    assert server.proc.wait(20) == 0
    assert access_lines(server, "stop=") == 50  # read after the exit: no wait, nothing may be pending
