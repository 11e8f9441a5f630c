"""A receive buffer for incremental (sans-IO) parsers.

Strategy: bytes arrive in arbitrary pieces and are appended to one ``bytearray``;
consumers advance a read offset instead of deleting from the front, so taking
``n`` bytes costs one copy of those ``n`` bytes and nothing else. The storage is
compacted lazily: emptied outright when everything has been read (the common
case for bodies fed in 64 KiB pieces) and otherwise only when the dead prefix
outweighs the live bytes, which keeps compaction amortised O(1) per byte.
Searches take an explicit start offset (relative to the unread data) so that a
caller remembering how far it already looked never rescans bytes (h11
``_receivebuffer.py`` does the same with ``_next_line_search``).
"""

from __future__ import annotations

__all__ = ["ReceiveBuffer"]

# Compact only once this many dead bytes precede the live ones; below it a
# memmove would cost more than the memory it frees.
_COMPACT_MIN = 64 * 1024


class ReceiveBuffer:
    """An append-only byte buffer with a movable read offset.

    Offsets taken and returned by the methods are relative to the first unread
    byte, so callers never see the internal layout.
    """

    __slots__ = ("_data", "_start")

    def __init__(self) -> None:
        self._data = bytearray()
        self._start = 0

    def __len__(self) -> int:
        return len(self._data) - self._start

    def __bytes__(self) -> bytes:
        return bytes(memoryview(self._data)[self._start :])

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` after the unread bytes.

        Args:
            data: any bytes-like object; it is copied, so the caller may reuse it.
        """
        if self._start:
            self._compact()
        self._data += data

    def _compact(self) -> None:
        # Whole buffer read: drop it without a memmove. Otherwise move the live
        # tail down only when the dead prefix is both large and the majority.
        start = self._start
        if start == len(self._data):
            self._data.clear()
            self._start = 0
        elif start >= _COMPACT_MIN and start * 2 >= len(self._data):
            del self._data[:start]
            self._start = 0

    def find(self, needle: bytes, start: int = 0, end: int | None = None) -> int:
        """Find ``needle`` in the unread bytes.

        Args:
            needle: the bytes to look for.
            start: relative offset where the search begins (bytes before it are
                not rescanned).
            end: relative offset where the search ends, or None for all.

        Returns:
            The relative offset of the first match, or -1.
        """
        base = self._start
        stop = len(self._data) if end is None else base + end
        idx = self._data.find(needle, base + start, stop)
        return idx - base if idx >= 0 else -1

    def count(self, needle: bytes, start: int = 0, end: int | None = None) -> int:
        """Count non-overlapping ``needle`` occurrences in the unread bytes.

        Args:
            needle: the bytes to count.
            start: relative offset where counting begins.
            end: relative offset where counting ends, or None for all.

        Returns:
            The number of occurrences.
        """
        base = self._start
        stop = len(self._data) if end is None else base + end
        return self._data.count(needle, base + start, stop)

    def peek(self, start: int, end: int) -> bytes:
        """Copy unread bytes ``[start, end)`` without consuming them.

        Args:
            start: relative start offset.
            end: relative end offset (clamped to the available bytes).

        Returns:
            The bytes in that range.
        """
        base = self._start
        return bytes(memoryview(self._data)[base + start : base + end])

    def byte_at(self, index: int) -> int:
        """Return the unread byte at relative ``index`` (must exist)."""
        return self._data[self._start + index]

    def take(self, n: int) -> bytes:
        """Consume and return the next ``n`` bytes (fewer if fewer are buffered).

        Args:
            n: how many bytes to take.

        Returns:
            The bytes taken.
        """
        start = self._start
        end = min(start + n, len(self._data))
        out = bytes(memoryview(self._data)[start:end])
        self._start = end
        return out

    def skip(self, n: int) -> None:
        """Consume ``n`` bytes without copying them.

        Args:
            n: how many bytes to drop (must not exceed ``len(self)``).
        """
        self._start += n
