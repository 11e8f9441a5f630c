"""The scoreboard's cross-process lock and RAM budget."""

from __future__ import annotations

import os
import signal
import time

from prefork.process.scoreboard import Scoreboard


def test_the_budget_lock_is_released_when_its_holder_is_killed() -> None:
    board = Scoreboard(4, memory_budget=1000)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # take the lock and die holding it (the OOM killer's worst timing)
        with board.locked():
            os.write(write_fd, b"x")
            time.sleep(60)  # holds the lock until the parent kills it (not a wait for anything)
        os._exit(0)
    assert os.read(read_fd, 1) == b"x"
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    slot = board.slot(board.claim(os.getpid(), 1))
    assert slot.try_reserve(600)  # would block forever if the lock had stayed taken
    assert not slot.try_reserve(600)
    slot.release(600)
    assert slot.try_reserve(1000)
    os.close(read_fd)
    os.close(write_fd)


def test_the_budget_is_shared_by_forked_workers() -> None:
    board = Scoreboard(4, memory_budget=1000)
    first = board.slot(board.claim(1, 1))
    assert first.try_reserve(700)
    pid = os.fork()
    if pid == 0:
        second = board.slot(board.claim(2, 1))
        os._exit(0 if (not second.try_reserve(400) and second.try_reserve(300)) else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0
    assert board.staged_ram_total() == 1000
