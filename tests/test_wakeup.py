"""``Wakeup``: callables deferred to the loop thread, and when that costs a pipe byte.

A byte in the pipe is what wakes a loop blocked in select(). Other threads
(and a loop thread outside ``run_pending``) must write one; the loop thread
deferring while ``run_pending`` drains must not, since that same run picks the
callable up: the byte would only cost a spurious turn of the loop.
"""

from __future__ import annotations

import os
import select
import threading
from collections.abc import Iterator

import pytest

from prefork.worker.pool import Wakeup


@pytest.fixture
def wakeup() -> Iterator[Wakeup]:
    waker = Wakeup()
    yield waker
    os.close(waker._read_fd)
    os.close(waker._write_fd)


def pipe_has_byte(waker: Wakeup) -> bool:
    return bool(select.select([waker.fileno()], [], [], 0)[0])


def test_a_defer_from_another_thread_wakes_the_loop(wakeup: Wakeup) -> None:
    ran: list[str] = []
    thread = threading.Thread(target=wakeup.defer, args=(ran.append, "from a handler"))
    thread.start()
    thread.join(5)
    assert pipe_has_byte(wakeup)
    wakeup.run_pending()
    assert ran == ["from a handler"]
    assert not pipe_has_byte(wakeup)


def test_a_defer_from_the_loop_outside_a_run_wakes_it(wakeup: Wakeup) -> None:
    ran: list[int] = []
    wakeup.defer(ran.append, 1)  # e.g. a signal handler, between two turns
    assert pipe_has_byte(wakeup)
    wakeup.run_pending()
    assert ran == [1]


def test_what_the_loop_defers_while_running_runs_in_the_same_run_without_a_byte(wakeup: Wakeup) -> None:
    ran: list[str] = []

    def first() -> None:
        ran.append("first")
        wakeup.defer(second)  # like send_message deferring its burst flush

    def second() -> None:
        ran.append("second")

    wakeup.defer(first)
    wakeup.run_pending()
    assert ran == ["first", "second"]
    assert not pipe_has_byte(wakeup), "a loop-thread defer during the run left a spurious wake-up"


def test_another_thread_deferring_during_a_run_still_writes_its_byte(wakeup: Wakeup) -> None:
    ran: list[str] = []
    gate = threading.Event()

    def during_the_run() -> None:
        thread = threading.Thread(target=wakeup.defer, args=(ran.append, "late"))
        thread.start()
        thread.join(5)
        gate.set()

    wakeup.defer(during_the_run)
    wakeup.run_pending()
    assert gate.is_set()
    assert ran == ["late"]  # picked up by the same run ...
    # ... and the byte it wrote wakes the loop once more, harmlessly: never lost.
    assert pipe_has_byte(wakeup)


def test_a_failing_callable_is_logged_and_the_rest_still_run(wakeup: Wakeup, caplog: pytest.LogCaptureFixture) -> None:
    ran: list[int] = []

    def broken() -> None:
        raise ValueError("bug in a callback")

    wakeup.defer(broken)
    wakeup.defer(ran.append, 2)
    wakeup.run_pending()
    assert ran == [2]
    assert any("bug in a callback" in r.getMessage() for r in caplog.records)
    wakeup.defer(ran.append, 3)  # the run ended: the next defer wakes the loop again
    assert pipe_has_byte(wakeup)
