"""One thread per worker that makes partial uploads durable, in order, while the next bytes arrive.

Strategy: a resumable upload's record may only name an offset once the data up
to it is on disk (``fdatasync``), and a sync waits for the disk, which may be
slower than the network (a VM's disk that writes 380 MB/s durably behind a
loopback that delivers 1.1 GB/s). Run on the write-behind thread, a sync would
stop the writes behind it and, through the full ring, the loop; so commits go
to this queue instead, and the data goes on streaming into the page cache while
an earlier offset is being made durable. One thread and one FIFO for every
upload of the worker: commits of one upload are applied in the order they were
asked for (a record never goes back), and whoever needs a commit done (the
handler thread answering a request, which must not name an offset that is not
durable) waits for its ``Commit``. Without a queue (tests) a job runs at once.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable

__all__ = ["Commit", "CommitQueue"]


class Commit:
    """A queued job; ``wait()`` returns once it ran, raising what it raised."""

    def __init__(self, job: Callable[[], None]) -> None:
        self._job = job
        self._done = threading.Event()
        self._error: BaseException | None = None

    def run(self) -> None:
        try:
            self._job()
        except BaseException as exc:  # handed to whoever waits; a worker thread must not die of it
            self._error = exc
        finally:
            self._done.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job ran (or ``timeout`` s passed: then False).

        Raises:
            Whatever the job raised.
        """
        if not self._done.wait(timeout):
            return False
        if self._error is not None:
            raise self._error
        return True

    @property
    def error(self) -> BaseException | None:
        """What the job raised, once it ran (None: nothing, or not run yet)."""
        return self._error


class CommitQueue:
    """The worker's commit thread; it starts on first use (and again after a fork)."""

    def __init__(self) -> None:
        self._pid = 0
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[Commit] = queue.SimpleQueue()

    def submit(self, job: Callable[[], None]) -> Commit:
        """Queue ``job`` after every job queued before it."""
        commit = Commit(job)
        self._ensure_started()
        self._jobs.put(commit)
        return commit

    def _ensure_started(self) -> None:
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid != os.getpid():
                self._jobs = queue.SimpleQueue()
                threading.Thread(target=self._run, args=(self._jobs,), name="upload-commits", daemon=True).start()
                self._pid = os.getpid()

    @staticmethod
    def _run(jobs: queue.SimpleQueue[Commit]) -> None:
        while True:
            jobs.get().run()


def run_now(job: Callable[[], None]) -> Commit:
    """A ``CommitQueue.submit`` that runs ``job`` at once (no queue)."""
    commit = Commit(job)
    commit.run()
    return commit
