"""Allocator control for worker processes: what uploads used goes back to the OS.

Strategy: glibc's malloc, left alone, keeps what a burst of uploads used. Its
mmap threshold is dynamic: once an mmapped block of N bytes is freed, blocks up
to N (up to 32 MiB) come from the heap from then on, where they fragment it
and stay after they are freed. Each thread that allocates gets an arena of its
own, whose free memory only that thread reuses. Measured with 40 concurrent
50 MiB uploads, ``memory_budget = 64MiB`` (``memory_threshold = 16MiB``) and
2 workers: Σ worker RSS grew by up to 209 MiB, 191 MiB of the peak in
``[heap]``, and 58–107 MiB stayed after the uploads; with a fixed 256 KiB mmap
threshold (``GLIBC_TUNABLES``) the heap stayed at 20 MiB and all but 6–18 MiB
came back. ``tests/test_memory.py`` shows the mechanism in a few lines.

So a worker, after fork, fixes the allocator's policy (``tune``):
``M_MMAP_THRESHOLD`` just above the buffers the server allocates per received
chunk (1 MiB receive chunks plus a parser's tail; 1 MiB file reads), so those
come from the heap and are reused hot, without page faults, while anything
larger is mmapped and unmapped the moment it is freed; ``M_TRIM_THRESHOLD``
large enough that those hot blocks are not handed back and faulted in again
after every chunk; ``M_ARENA_MAX`` 1, because CPython allocates under the GIL
(more arenas buy no concurrency, only memory that other threads cannot reuse)
and because ``malloc_trim`` gives back the top of the main arena only: with two
arenas, 9 MiB stayed in the second after raw uploads, with one none did.
When the worker's uploads are over, ``IdleTrimmer`` runs the release
hooks the worker gave it (the write-behind ring's) and ``malloc_trim(0)``, which also returns free pages from the middle of
the heap, not only its top.

glibc only: it is detected with ``confstr(CS_GNU_LIBC_VERSION)``. With any
other C library (musl, macOS) ``tune`` and ``trim`` are no-ops returning False.
"""

from __future__ import annotations

import ctypes
import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

__all__ = ["DEFAULT_POLICY", "AllocatorPolicy", "IdleTrimmer", "trim", "tune"]

MiB = 1024 * 1024
# mallopt(3) parameter numbers, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
#: Trim only after this many bytes were received since the last trim: a worker
#: serving small requests has nothing worth trimming, and a trim costs a walk
#: over the heap plus page faults when the memory is used again.
TRIM_AFTER_BYTES = 4 * MiB
#: While uploads are in flight, trim anyway after this many bytes: a worker that
#: always has one long upload running still returns what the others used.
TRIM_BUSY_BYTES = 1024 * MiB


@dataclass(frozen=True, slots=True)
class AllocatorPolicy:
    """mallopt settings for a worker.

    Attributes:
        mmap_threshold: allocations at least this large are mmapped (and unmapped
            when freed); 4 MiB is above every per-chunk buffer of the server.
        trim_threshold: free memory at the top of the heap kept before malloc
            gives it back by itself; twice the mmap threshold, as glibc's dynamic
            rule would set it.
        arena_max: malloc arenas for all threads together (the main one only).
    """

    mmap_threshold: int = 4 * MiB
    trim_threshold: int = 8 * MiB
    arena_max: int = 1


DEFAULT_POLICY = AllocatorPolicy()


class _Glibc(Protocol):
    def mallopt(self, param: int, value: int) -> int: ...

    def malloc_trim(self, pad: int) -> int: ...


@functools.cache
def _glibc() -> _Glibc | None:
    """The C library when it is glibc (it has mallopt and malloc_trim), else None."""
    try:
        if not (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc"):
            return None
        libc = ctypes.CDLL(None)
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.malloc_trim.argtypes = [ctypes.c_size_t]
    except (ValueError, OSError, AttributeError):  # no such confstr name, no libc symbols
        return None
    glibc: _Glibc = libc
    return glibc


def tune(policy: AllocatorPolicy = DEFAULT_POLICY) -> bool:
    """Set the worker's allocator policy; call once, after fork, before threads start.

    Returns:
        True when glibc accepted every setting; False elsewhere (a no-op).
    """
    libc = _glibc()
    if libc is None:
        return False
    results = [libc.mallopt(M_MMAP_THRESHOLD, policy.mmap_threshold),
               libc.mallopt(M_TRIM_THRESHOLD, policy.trim_threshold),
               libc.mallopt(M_ARENA_MAX, policy.arena_max)]
    return all(result == 1 for result in results)  # mallopt returns 1 on success


def trim() -> bool:
    """Return the allocator's free memory to the OS (``malloc_trim(0)``).

    Returns:
        True when glibc released something; False when it had nothing to
        release, or the C library is not glibc (a no-op).
    """
    libc = _glibc()
    return libc is not None and libc.malloc_trim(0) == 1


class WorkerCounters(Protocol):
    """What the trimmer reads of a worker (a scoreboard ``SlotView`` has these)."""

    @property
    def bytes_received(self) -> int:
        """Bytes received so far (only grows)."""
        ...

    @property
    def staged_ram(self) -> int:
        """Bytes of request bodies staged in RAM now."""
        ...

    @property
    def staged_disk(self) -> int:
        """Bytes of request bodies staged on disk now."""
        ...


class IdleTrimmer:
    """Decides, on each sweep of the worker, when to give memory back.

    Memory goes back (the ``hooks``, then ``malloc_trim``) when no body
    is staged (the worker is idle of uploads) and at least ``after_bytes`` were
    received since it last went back while idle; and, whatever is staged, each
    time ``busy_bytes`` were received since it last went back at all. A trim
    while busy does not count as the idle one: what the last uploads used is
    returned once they are over.

    Args:
        after_bytes: bytes received that make a trim worth its cost.
        busy_bytes: bytes received after which a trim happens even mid-upload.
        hooks: give back memory their owners hold for uploads (the write-behind
            ring). They run on the worker's loop thread, must be cheap, and
            must check for themselves that their memory is unused.
        trim: returns the allocator's free memory (``trim``; a seam for tests).
    """

    def __init__(self, after_bytes: int = TRIM_AFTER_BYTES, busy_bytes: int = TRIM_BUSY_BYTES,
                 hooks: Sequence[Callable[[], None]] = (), trim: Callable[[], object] = trim) -> None:
        self.after_bytes = after_bytes
        self.busy_bytes = busy_bytes
        self._hooks = tuple(hooks)
        self._trim = trim
        self._idle_mark = 0  # bytes received at the last trim while idle
        self._mark = 0  # ... at the last trim of either kind
        self.trims = 0

    def sweep(self, counters: WorkerCounters) -> bool:
        """Give memory back if the worker's counters say it is due.

        Returns:
            True when memory was given back on this sweep.
        """
        received = counters.bytes_received
        if not counters.staged_ram + counters.staged_disk and received - self._idle_mark >= self.after_bytes:
            self._idle_mark = received
        elif received - self._mark < self.busy_bytes:
            return False
        self._mark = received
        for hook in self._hooks:
            hook()
        self._trim()
        self.trims += 1
        return True
