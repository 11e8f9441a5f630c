"""RamBuffer: a body's bytes in RAM, holding no more memory than it reports.

Strategy: ``BodySpool`` keeps a body in RAM while the global budget grants the
bytes, so what it reserves must cover what it really holds. A growing
``bytearray`` does not make that true: CPython over-allocates it by up to an
eighth, a growth may move it (a copy, while the old block is still held), and
under glibc's dynamic mmap threshold blocks of up to 32 MiB come from the
heap, where freed bodies fragment it and are not returned. Measured with 40
concurrent 50 MiB uploads, a 64 MiB budget and a 16 or 64 MiB threshold:
staged bytes stayed within the budget while Σ worker RSS grew by 136–214 MiB,
mostly ``[heap]``; a 16 MiB body's bytearray had 2 MiB more allocated than
the bytes reserved for it.

So a small body (up to ``SMALL_BODY``: most bodies) stays in a ``bytearray``
and is charged by an upper bound of that bytearray's allocation; a larger one
moves to an anonymous ``mmap`` of its own: its pages become resident only as
bytes are written, it grows by ``mremap`` (no copy), it is charged by whole
pages, and ``close`` unmaps it, which gives the memory back to the OS at once.
"""

from __future__ import annotations

import mmap

__all__ = ["SMALL_BODY", "RamBuffer"]

#: Bodies up to this size stay in a bytearray: an mmap of their own would cost
#: two system calls and a page fault per 4 KiB for bodies that malloc serves
#: from memory it already has.
SMALL_BODY = 64 * 1024
_PAGE = mmap.PAGESIZE


def _pages(nbytes: int) -> int:
    """``nbytes`` rounded up to whole pages."""
    return -(-nbytes // _PAGE) * _PAGE


def _bytearray_bound(size: int) -> int:
    """Most a bytearray of ``size`` bytes can have allocated: CPython grows a
    bytearray to size + size/8 + 6 (``PyByteArray_Resize``), or exactly size + 1."""
    return size + (size >> 3) + 8


class RamBuffer:
    """An append-only byte buffer whose memory is bounded by ``footprint``.

    Args:
        limit: the most bytes it will hold (the spool's threshold); the mmap
            never reserves address space beyond it.
    """

    __slots__ = ("_small", "_map", "_limit", "size")

    def __init__(self, limit: int) -> None:
        self._small = bytearray()
        self._map: mmap.mmap | None = None
        self._limit = limit
        self.size = 0

    def footprint(self, size: int | None = None) -> int:
        """Bytes of memory held with ``size`` bytes in it (default: its size now).

        The budget is charged with this before bytes are appended, so it is an
        upper bound: a bytearray's largest possible allocation, or whole pages.
        While the bytes move from the bytearray to the mmap both exist, for the
        length of one ``append``: at most ``SMALL_BODY`` more.
        """
        size = self.size if size is None else size
        if self._map is None and size <= SMALL_BODY:
            return max(self._small.__alloc__(), _bytearray_bound(size))
        return _pages(size)

    def append(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` (copied)."""
        view = memoryview(data).cast("B")
        end = self.size + len(view)
        if self._map is None and end <= SMALL_BODY:
            self._small += view
        else:
            target = self._grow(end)
            target[self.size:end] = view
        self.size = end

    def _grow(self, end: int) -> mmap.mmap:
        """The mmap, with room for ``end`` bytes (created, or doubled by mremap)."""
        if self._map is None:
            # MAP_PRIVATE: plain anonymous memory. A shared one is a shmem file of fixed size, so
            # growing it by mremap would leave pages that fault with SIGBUS, and children share it.
            self._map = mmap.mmap(-1, _pages(max(end, min(4 * SMALL_BODY, self._limit))), flags=mmap.MAP_PRIVATE)
            self._map[:self.size] = self._small
            self._small = bytearray()
        elif end > len(self._map):
            # Doubling keeps mremap calls logarithmic; address space only, pages come as written.
            self._map.resize(_pages(max(end, min(2 * len(self._map), self._limit))))
        return self._map

    def view(self) -> memoryview:
        """All bytes, without a copy; release it (``with``) before the next ``append``."""
        if self._map is None:
            return memoryview(self._small)
        return memoryview(self._map)[:self.size]

    def read(self, start: int, n: int) -> bytes:
        """A copy of ``n`` bytes from ``start`` (fewer at the end)."""
        with self.view() as whole:
            return bytes(whole[start:start + n])

    def readinto(self, start: int, out: memoryview) -> int:
        """Copy bytes from ``start`` into ``out``; return how many."""
        n = max(0, min(len(out), self.size - start))
        with self.view() as whole:
            out[:n] = whole[start:start + n]
        return n

    def find(self, sub: bytes, start: int, end: int) -> int:
        """Index of ``sub`` in [start, end), or -1."""
        store = self._small if self._map is None else self._map
        return store.find(sub, start, min(end, self.size))

    def close(self) -> None:
        """Free the memory (the mmap goes back to the OS); idempotent."""
        self._small = bytearray()
        if self._map is not None:
            mapped, self._map = self._map, None
            try:
                mapped.close()
            except BufferError:  # a view is still held: the map goes when the view does
                pass
        self.size = 0
