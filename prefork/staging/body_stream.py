"""A request body read while it arrives: a bounded pipe from the event loop to a handler thread.

Strategy: a route declared streaming gets its handler called as soon as the
head has passed the limits, and that handler reads the body from a
``BodyStream`` (``request.stream``, or ``wsgi.input`` for ``[streaming]
paths``): a blocking, file-like, unseekable reader. The loop ``feed``s what it
receives; once ``bound`` bytes wait unread, ``feed`` says so and the loop stops
reading that socket, so the client's sends block on its TCP window, not on our
memory. When the handler has read the buffer down to half the bound, the
stream calls ``on_room`` (from the handler's thread: the callback hands over to
the loop), and the loop reads on. A client that goes away before the end makes
the reader raise ``ClientDisconnected``; the end of the body reads as ``b""``.

Only two threads touch a stream, the loop (``feed``, ``end``, ``abort``) and
the handler (the reads); one lock and one condition guard the buffer, a
``bytearray`` consumed from its front through an offset, compacted when the
offset passes half of it, so no read copies more than what it returns.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable, Iterator

__all__ = ["BodyStream", "ClientDisconnected", "DEFAULT_BOUND"]

#: Bytes a stream holds unread before the loop stops reading its socket.
DEFAULT_BOUND = 1024 * 1024


class ClientDisconnected(IOError):
    """The client went away (or the request failed) before the end of a streamed body."""


class BodyStream(io.RawIOBase):
    """The reading end of a streamed request body.

    Args:
        bound: bytes held unread before ``feed`` asks the loop to pause.
        on_room: called, on the reading thread, when a paused stream has room again.
        length: the declared Content-Length, or None (chunked: unknown, possibly endless).
    """

    def __init__(self, bound: int = DEFAULT_BOUND, on_room: Callable[[], None] | None = None,
                 length: int | None = None) -> None:
        super().__init__()
        self.bound = bound
        self.length = length
        self._on_room = on_room
        self._buffer = bytearray()
        self._start = 0  # bytes of _buffer already read
        self._cond = threading.Condition()
        self._ended = False
        self._error: str | None = None
        self._paused = False
        self.received = 0  # bytes fed so far
        self.consumed = 0  # bytes read so far

    # --- the loop's side ------------------------------------------------------------------
    @property
    def unread(self) -> int:
        return len(self._buffer) - self._start

    def room(self) -> int:
        """Bytes the loop may feed before the stream is full."""
        with self._cond:
            return max(0, self.bound - self.unread)

    def feed(self, data: bytes | bytearray | memoryview) -> bool:
        """Append body bytes (copied); False when the stream is now full: stop reading
        until ``on_room`` is called."""
        with self._cond:
            if self._error is None:  # after an abort, bytes are dropped: nobody will read them
                self._buffer += data
                self.received += len(data)
                self._cond.notify_all()
            full = self.unread >= self.bound
            self._paused = full
            return not full

    def end(self) -> None:
        """The body is complete: reads past what is buffered return ``b""``."""
        with self._cond:
            self._ended = True
            self._cond.notify_all()

    def abort(self, reason: str) -> None:
        """The client went away or the request failed: the reader raises ``ClientDisconnected``."""
        with self._cond:
            if not self._ended and self._error is None:
                self._error = reason
            self._buffer.clear()
            self._start = 0
            self._cond.notify_all()

    @property
    def ended(self) -> bool:
        return self._ended or self._error is not None

    # --- the handler's side -----------------------------------------------------------------
    def readable(self) -> bool:
        return True

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        """Wait for body bytes and copy up to ``len(b)`` of them; 0 at the end.

        Raises:
            ClientDisconnected: the client went away before the end.
        """
        view = memoryview(b).cast("B")
        if not len(view):
            return 0
        room = None
        with self._cond:
            while not self.unread and not self._ended and self._error is None:
                self._cond.wait()
            if self._error is not None:
                raise ClientDisconnected(self._error)
            n = min(len(view), self.unread)
            view[:n] = self._buffer[self._start:self._start + n]
            self._start += n
            self.consumed += n
            if self._start > len(self._buffer) // 2:
                del self._buffer[:self._start]
                self._start = 0
            if self._paused and self.unread <= self.bound // 2:
                self._paused = False
                room = self._on_room
        if room is not None:
            room()
        return n

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes, waiting for at least one; with no size, the rest of the body."""
        if size is None or size < 0:
            return self.readall()
        chunk = bytearray(size)
        return bytes(chunk[:self.readinto(chunk)])

    def readall(self) -> bytes:
        parts = []
        while piece := self.read(max(self.bound, 65536)):
            parts.append(piece)
        return b"".join(parts)

    def readline(self, size: int | None = -1) -> bytes:
        """Up to and including the next ``b"\\n"`` (or ``size`` bytes, or the end)."""
        line = bytearray()
        limit = -1 if size is None else size
        while limit < 0 or len(line) < limit:
            with self._cond:
                while not self.unread and not self._ended and self._error is None:
                    self._cond.wait()
                if self._error is not None:
                    raise ClientDisconnected(self._error)
                if not self.unread:
                    break
                newline = self._buffer.find(b"\n", self._start)
                end = len(self._buffer) if newline < 0 else newline + 1
            want = end - self._start if limit < 0 else min(end - self._start, limit - len(line))
            piece = self.read(want)
            line += piece
            if piece.endswith(b"\n"):
                break
        return bytes(line)

    def chunks(self, size: int = 65536) -> Iterator[bytes]:
        """The body in pieces of at most ``size`` bytes as they arrive (iterating the
        stream itself gives lines, as PEP 3333 asks of ``wsgi.input``)."""
        while piece := self.read(size):
            yield piece
