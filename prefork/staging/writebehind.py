"""Write-behind for staging files: disk writes and SHA-256 on a helper thread.

Strategy: a large upload costs the event loop three things per byte: receiving
it, parsing it, and writing it to its staging file (plus hashing it, when
checksums are on: SHA-256 alone costs more CPU than receiving). The loop only
has to do the first two. So a form part's spool that has gone to disk hands
each chunk to ``WriteBehind``: the chunk is copied into the worker's ring (no
allocation, no page faults per chunk) and queued for its ``WriteBehindHelper``,
one helper thread per worker process (the worker creates it and passes it
to the spools it opens; nothing here is a module global), which writes it with ``os.write`` and hashes it; both release the
GIL, so the loop goes on receiving and parsing on the other core. A raw body
(no parsing, no checksum) is written inline: the copy and the hand-off to
another core would cost more than they free.

Chunks of one file are written in order (one FIFO queue, one thread). The
bytes queued in a helper are bounded (``MAX_BACKLOG``): they live in one ring
of that size, an anonymous mmap, and when it is full the loop waits, which
costs no more than writing inline would. A ring, not a block per chunk: a
chunk of 64 KiB would otherwise hold a whole 1 MiB block, so the memory held
could reach 16 times the bytes queued. Chunks leave in the order they came, so
the ring's free space is always one run after the newest chunk; a chunk that
does not fit before the end starts again at offset 0, and the skipped end is
charged to it. ``release_idle`` (a hook of the worker's ``memory.IdleTrimmer``) unmaps the
ring when nothing is queued; the next chunk maps it again. An error of the
helper thread (ENOSPC, EIO) is kept and raised by the file's next ``write``
or ``flush``, so the caller sees it as if its own write had failed, one
backlog later at most. ``flush`` (or ``discard``) must be called before the
file is read, linked or closed.
"""

from __future__ import annotations

import mmap
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_BACKLOG", "MIN_CHUNK", "WriteBehind", "WriteBehindHelper"]

#: Bytes that may wait for a helper thread: the size of its ring.
MAX_BACKLOG = 4 * 1024 * 1024
#: Largest piece queued as one write; a larger chunk is split.
BLOCK_SIZE = 1024 * 1024
#: Smaller chunks (a slow client's trickle) are written inline, after the
#: queued ones: for them the hand-off costs more than the write.
MIN_CHUNK = 64 * 1024

WriteFn = Callable[[int, memoryview], None]


# The stream, then its piece in the ring and the ring bytes charged, or an action to run in order.
Job = tuple["WriteBehind", memoryview | Callable[[], None], int]


class WriteBehindHelper:
    """One helper thread, its queue, and the ring its queued bytes live in.

    A worker has one, shared by every file it stages. The thread
    starts on first use, and again in a forked child that uses the same object.
    """

    def __init__(self) -> None:
        self._pid = 0
        self._start_lock = threading.Lock()
        self._queue: queue.SimpleQueue[Job] = queue.SimpleQueue()
        self.cond = threading.Condition()
        self.queued = 0  # ring bytes in use: queued pieces plus skipped ends; guarded by cond
        self._actions = 0  # actions queued and not run yet; guarded by cond
        self._ring: mmap.mmap | None = None
        self._head = 0  # where the next piece goes

    def _ensure_started(self) -> None:
        if self._pid == os.getpid():
            return
        with self._start_lock:
            if self._pid != os.getpid():  # first use, or first use after a fork
                self._queue = queue.SimpleQueue()
                self.cond = threading.Condition()
                self.queued = 0
                self._actions = 0
                self._ring, self._head = None, 0  # the parent's ring holds the parent's bytes
                threading.Thread(target=self._run, args=(self._queue,), name="write-behind",
                                 daemon=True).start()
                self._pid = os.getpid()

    def submit(self, stream: WriteBehind, data: memoryview) -> None:
        """Queue a copy of ``data`` for ``stream``, in pieces of at most BLOCK_SIZE."""
        self._ensure_started()
        offset = 0
        while offset < len(data):
            with self.cond:
                ring = self._ring_in_use()
                size = min(len(data) - offset, BLOCK_SIZE, len(ring))
                start, charge = self._place(ring, size)
                self.queued += charge
                self._head = start + size
                stream.pending += size
                view = memoryview(ring)[start : start + size]
            view[:] = data[offset : offset + size]  # outside the lock: the helper keeps writing
            self._queue.put((stream, view, charge))
            offset += size

    def submit_action(self, stream: WriteBehind, action: Callable[[], None]) -> None:
        """Queue ``action`` to run on the helper thread once ``stream``'s pieces queued so
        far are written (it counts as pending for ``wait_for`` until it has run)."""
        self._ensure_started()
        with self.cond:
            stream.pending += 1
            self._actions += 1
        self._queue.put((stream, action, 0))

    def _ring_in_use(self) -> mmap.mmap:
        """The ring, mapped (again) if needed; resized to MAX_BACKLOG only while empty."""
        if self._ring is None or (not self.queued and len(self._ring) != MAX_BACKLOG):
            self._release_ring()
            # MAP_PRIVATE: plain anonymous memory, not a shmem file that a forked child would share.
            self._ring, self._head = mmap.mmap(-1, MAX_BACKLOG, flags=mmap.MAP_PRIVATE), 0
        return self._ring

    def _place(self, ring: mmap.mmap, size: int) -> tuple[int, int]:
        """Wait for room for ``size`` bytes; return where they go and what they are charged."""
        while True:
            if not self.queued:
                self._head = 0  # empty: start at the front, so that any piece fits
            if self._head + size <= len(ring):
                start, charge = self._head, size
            else:  # wrap: the skipped end is charged to this piece, and freed with it
                start, charge = 0, size + len(ring) - self._head
            if self.queued + charge <= len(ring):
                return start, charge
            self.cond.wait()

    def _run(self, jobs: queue.SimpleQueue[Job]) -> None:
        while True:
            stream, piece, charge = jobs.get()
            if isinstance(piece, memoryview):
                stream._apply(piece)
                size, actions = len(piece), 0
                piece.release()
            else:
                stream._run_action(piece)
                size, actions = 1, 1
            with self.cond:
                self._actions -= actions
                self.queued -= charge
                stream.pending -= size
                self.cond.notify_all()

    def release_idle(self) -> None:
        """Unmap the ring if nothing is queued (a ``memory.IdleTrimmer`` hook)."""
        with self.cond:
            if not self.queued and self._pid == os.getpid():
                self._release_ring()

    def _release_ring(self) -> None:
        if self._ring is not None:
            self._ring.close()  # nothing queued, so no piece's view is left
            self._ring, self._head = None, 0

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is queued (at most ``timeout`` s; then False)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.queued or self._actions:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True

    def wait_for(self, stream: WriteBehind) -> None:
        """Block until every piece queued for ``stream`` is done."""
        with self.cond:
            while stream.pending:
                self.cond.wait()


class WriteBehind:
    """The queued writes (and optional digest) of one open file.

    Args:
        fd: the file's descriptor, written at its current offset.
        write: writes a whole view to ``fd`` (``os.write`` in a loop; a seam for tests).
        digest: a hashlib object to update with every byte, or None.
        helper: queue large chunks for this helper's thread; None writes every
            chunk inline. Queueing pays where the caller has per-byte work of its
            own (parsing, hashing); a plain body is received and written fastest
            on one core, with its bytes still in that core's cache.
    """

    def __init__(self, fd: int, write: WriteFn, digest: Any = None, *,
                 helper: WriteBehindHelper | None = None) -> None:
        self._fd = fd
        self._write = write
        self._digest = digest
        self._helper = helper
        self.pending = 0  # bytes queued and not yet done; guarded by the helper's lock
        self._error: OSError | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` (and hash it) after everything written before.

        A chunk of ``MIN_CHUNK`` bytes or more is copied and queued (with a
        ``helper``); a smaller one is written inline once the queue of this
        file is done.

        Raises:
            OSError: this write failed, or an earlier queued one did.
        """
        self._raise_error()
        view = memoryview(data).cast("B")
        helper = self._helper
        if helper is not None and len(view) >= MIN_CHUNK:
            helper.submit(self, view)
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
        if self._helper is not None:
            self._helper.wait_for(self)
        self._raise_error()

    def then(self, action: Callable[[], None]) -> None:
        """Run ``action`` once everything written so far is written: on the helper
        thread (the caller does not wait), or at once without a helper. It runs even
        after a failed write (``error`` tells), and what it raises is kept like a
        write's error."""
        if self._helper is None:
            self._run_action(action)
        else:
            self._helper.submit_action(self, action)

    @property
    def error(self) -> OSError | None:
        """The first write error, if any (the bytes after it were dropped)."""
        return self._error

    def discard(self) -> None:
        """Wait for the helper thread to be done with this file, ignoring errors."""
        if self._helper is not None:
            self._helper.wait_for(self)

    def _raise_error(self) -> None:
        if self._error is not None:
            raise self._error

    def _run_action(self, action: Callable[[], None]) -> None:
        try:
            action()
        except OSError as exc:
            self._error = self._error or exc
        except BaseException as exc:  # a bug: still reach the caller
            self._error = self._error or OSError(f"write-behind action failed: {exc!r}")

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
