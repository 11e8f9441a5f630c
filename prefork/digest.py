"""SHA-256 of uploads, computed on a helper thread while the bytes arrive.

Strategy: hashing a file part costs more CPU than receiving it (SHA-256 runs
at ~0.8 GiB/s here, a loopback upload at ~1.2 GiB/s), and ``hashlib`` releases
the GIL for large buffers. So the event loop hands each chunk to one helper
thread per process and goes on receiving; the digest is ready when the part
ends. Chunks of one digest are hashed in arrival order (one FIFO queue). The
bytes waiting to be hashed are bounded per digest: past the bound the loop
waits, which costs no more than hashing inline.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading

# Bytes of one digest that may wait for the helper thread.
MAX_BACKLOG = 4 * 1024 * 1024


class _HashThread:
    """The per-process helper thread (started lazily, again after a fork)."""

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[BackgroundSha256, bytes]] = queue.SimpleQueue()
        self._pid = 0
        self._lock = threading.Lock()

    def submit(self, digest: BackgroundSha256, data: bytes) -> None:
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._queue = queue.SimpleQueue()
                    threading.Thread(target=self._run, args=(self._queue,), name="sha256",
                                     daemon=True).start()
                    self._pid = os.getpid()
        self._queue.put((digest, data))

    @staticmethod
    def _run(jobs: queue.SimpleQueue[tuple[BackgroundSha256, bytes]]) -> None:
        while True:
            digest, data = jobs.get()
            digest._apply(data)


_thread = _HashThread()


class BackgroundSha256:
    """A SHA-256 whose ``update`` returns at once; ``hexdigest`` waits for the rest."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._queued = 0
        self._cond = threading.Condition()

    def update(self, data: bytes) -> None:
        """Queue ``data`` (immutable bytes) for hashing, in order."""
        if not data:
            return
        with self._cond:
            while self._queued > MAX_BACKLOG:
                self._cond.wait()
            self._queued += len(data)
        _thread.submit(self, data)

    def _apply(self, data: bytes) -> None:
        self._hash.update(data)
        with self._cond:
            self._queued -= len(data)
            self._cond.notify_all()

    def hexdigest(self) -> str:
        """The digest of everything queued so far (waits for the helper thread)."""
        with self._cond:
            while self._queued:
                self._cond.wait()
        return self._hash.hexdigest()
