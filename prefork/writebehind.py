"""Write-behind for staging files: disk writes and SHA-256 on a helper thread.

Strategy: a large upload costs the event loop three things per byte: receiving
it, parsing it, and writing it to its staging file (plus hashing it, when
checksums are on: SHA-256 alone costs more CPU than receiving). The loop only
has to do the first two. So a form part's spool that has gone to disk hands
each chunk to ``WriteBehind``: the chunk is copied into a recycled block (no
allocation, no page faults per chunk) and queued for one helper thread per
process, which writes it with ``os.write`` and hashes it; both release the
GIL, so the loop goes on receiving and parsing on the other core. A raw body
(no parsing, no checksum) is written inline: the copy and the hand-off to
another core would cost more than they free.

Chunks of one file are written in order (one FIFO queue, one thread). The
bytes queued in a process are bounded (``MAX_BACKLOG``): past the bound the
loop waits, which costs no more than writing inline would. An error of the
helper thread (ENOSPC, EIO) is kept and raised by the file's next ``write``
or ``flush``, so the caller sees it as if its own write had failed, one
backlog later at most. ``flush`` (or ``discard``) must be called before the
file is read, linked or closed.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_BACKLOG", "MIN_CHUNK", "WriteBehind"]

#: Bytes that may wait for the helper thread, per process.
MAX_BACKLOG = 4 * 1024 * 1024
#: Size of the recycled copy blocks; a larger chunk is split across blocks.
BLOCK_SIZE = 1024 * 1024
#: Smaller chunks (a slow client's trickle) are written inline, after the
#: queued ones: for them the hand-off costs more than the write.
MIN_CHUNK = 64 * 1024

WriteFn = Callable[[int, memoryview], None]


class _Helper:
    """The per-process helper thread, its queue, its backlog and its free blocks."""

    def __init__(self) -> None:
        self._pid = 0
        self._start_lock = threading.Lock()
        self._queue: queue.SimpleQueue[tuple[WriteBehind, memoryview, bytearray]] = queue.SimpleQueue()
        self.cond = threading.Condition()
        self.queued = 0
        self._free: list[bytearray] = []

    def _ensure_started(self) -> None:
        if self._pid == os.getpid():
            return
        with self._start_lock:
            if self._pid != os.getpid():  # first use, or first use after a fork
                self._queue = queue.SimpleQueue()
                self.cond = threading.Condition()
                self.queued = 0
                self._free = []
                threading.Thread(target=self._run, args=(self._queue,), name="write-behind",
                                 daemon=True).start()
                self._pid = os.getpid()

    def submit(self, stream: WriteBehind, data: memoryview) -> None:
        """Queue a copy of ``data`` for ``stream``, in blocks of at most BLOCK_SIZE."""
        self._ensure_started()
        for offset in range(0, len(data), BLOCK_SIZE):
            piece = data[offset : offset + BLOCK_SIZE]
            with self.cond:
                while self.queued > MAX_BACKLOG:
                    self.cond.wait()
                self.queued += len(piece)
                stream.pending += len(piece)
                block = self._free.pop() if self._free else bytearray(BLOCK_SIZE)
            view = memoryview(block)[: len(piece)]
            view[:] = piece
            self._queue.put((stream, view, block))

    def _run(self, jobs: queue.SimpleQueue[tuple[WriteBehind, memoryview, bytearray]]) -> None:
        while True:
            stream, view, block = jobs.get()
            stream._apply(view)
            size = len(view)
            view.release()
            with self.cond:
                self.queued -= size
                stream.pending -= size
                if len(self._free) * BLOCK_SIZE < MAX_BACKLOG + BLOCK_SIZE:
                    self._free.append(block)
                self.cond.notify_all()

    def wait_for(self, stream: WriteBehind) -> None:
        with self.cond:
            while stream.pending:
                self.cond.wait()


_helper = _Helper()


class WriteBehind:
    """The queued writes (and optional digest) of one open file.

    Args:
        fd: the file's descriptor, written at its current offset.
        write: writes a whole view to ``fd`` (``os.write`` in a loop; a seam for tests).
        digest: a hashlib object to update with every byte, or None.
        behind: queue large chunks for the helper thread; False writes every
            chunk inline. Queueing pays where the caller has per-byte work of its
            own (parsing, hashing); a plain body is received and written fastest
            on one core, with its bytes still in that core's cache.
    """

    def __init__(self, fd: int, write: WriteFn, digest: Any = None, *, behind: bool = True) -> None:
        self._fd = fd
        self._write = write
        self._digest = digest
        self._min_queued = MIN_CHUNK if behind else None
        self.pending = 0  # bytes queued and not yet done; guarded by the helper's lock
        self._error: OSError | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` (and hash it) after everything written before.

        A chunk of ``MIN_CHUNK`` bytes or more is copied and queued (with
        ``behind``); a smaller one is written inline once the queue of this
        file is done.

        Raises:
            OSError: this write failed, or an earlier queued one did.
        """
        self._raise_error()
        view = memoryview(data).cast("B")
        if self._min_queued is not None and len(view) >= self._min_queued:
            _helper.submit(self, view)
            return
        if self.pending:
            self.flush()
        self._write(self._fd, view)
        if self._digest is not None:
            self._digest.update(view)

    def flush(self) -> None:
        """Wait until everything queued is written.

        Raises:
            OSError: a queued write failed (the bytes after it were dropped).
        """
        _helper.wait_for(self)
        self._raise_error()

    def discard(self) -> None:
        """Wait for the helper thread to be done with this file, ignoring errors."""
        _helper.wait_for(self)

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _apply(self, view: memoryview) -> None:
        """On the helper thread: write and hash one chunk, unless an earlier one failed."""
        if self._error is not None:
            return
        try:
            self._write(self._fd, view)
        except OSError as exc:
            self._error = exc
            return
        except BaseException as exc:  # a bug, not an I/O error: still reach the caller
            self._error = OSError(f"write-behind failed: {exc!r}")
            return
        if self._digest is not None:
            self._digest.update(view)
