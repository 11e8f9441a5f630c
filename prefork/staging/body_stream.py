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
the handler (the reads); one lock and one condition guard the buffer, a queue
of the pieces fed (each one copy), read from the front through an offset into
the first: no read copies more than it returns. What a stream holds is its
unread bytes (below ``bound`` plus the piece that filled it) and the read part of
the first piece, so less than ``bound`` plus twice the largest piece fed, which is
one receive of the loop (1 MiB): 3 MiB per stream with the defaults. A stream
that has ended keeps its bytes for the reader even if the connection goes
afterwards (``abort``).
"""

from __future__ import annotations

import collections
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
        self._pieces: collections.deque[bytes] = collections.deque()
        self._offset = 0  # bytes of the first piece already read
        self._unread = 0
        self._held = 0  # bytes of the pieces, read part of the first included
        self._cond = threading.Condition()
        self._ended = False
        self._error: str | None = None
        self._paused = False
        self.received = 0  # bytes fed so far
        self.consumed = 0  # bytes read so far

    # --- the loop's side ------------------------------------------------------------------
    @property
    def unread(self) -> int:
        """Bytes fed and not read yet."""
        return self._unread

    @property
    def held(self) -> int:
        """Bytes the stream holds in memory: the unread ones, and the read part of a piece."""
        return self._held

    def room(self) -> int:
        """Bytes the loop may feed before the stream is full."""
        with self._cond:
            return max(0, self.bound - self.unread)

    def feed(self, data: bytes | bytearray | memoryview) -> bool:
        """Append body bytes (copied); False when the stream is now full: stop reading
        until ``on_room`` is called."""
        with self._cond:
            if self._error is None and len(data):  # after an abort, bytes are dropped: nobody reads them
                piece = bytes(data)
                self._pieces.append(piece)
                self._unread += len(piece)
                self._held += len(piece)
                self.received += len(piece)
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
        """The client went away or the request failed: the reader raises ``ClientDisconnected``.

        A stream whose body had ended is left alone: its reader gets the whole body."""
        with self._cond:
            if self._ended or self._error is not None:
                return
            self._error = reason
            self._pieces.clear()
            self._offset = self._unread = self._held = 0
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
        with self._cond:
            self._wait_for_bytes()
            n = self._take(view)
            room = self._room_again()
        if room is not None:
            room()
        return n

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes, waiting for at least one; with no size, the rest of the body.

        A piece as it was fed that is all there is to return is returned as it is, without a
        copy (reading in pieces of the loop's size costs no copy of the handler's own)."""
        if size is None or size < 0:
            return self.readall()
        if size == 0:
            return b""
        with self._cond:
            self._wait_for_bytes()
            first = self._pieces[0] if self._pieces and not self._offset else b""
            if first and (len(first) == size or (len(first) < size and len(self._pieces) == 1)):
                piece = self._pieces.popleft()
                self._held -= len(piece)
                self._unread -= len(piece)
                self.consumed += len(piece)
            else:  # no larger block than there is to read (read(1 << 30) allocates nothing big)
                chunk = bytearray(min(size, max(self.unread, 1)))
                piece = bytes(chunk[:self._take(memoryview(chunk))])
            room = self._room_again()
        if room is not None:
            room()
        return piece

    def _wait_for_bytes(self) -> None:
        """Wait (lock held) until there is something to read, the end, or an abort.

        Raises:
            ClientDisconnected: the client went away before the end.
        """
        while not self.unread and not self._ended and self._error is None:
            self._cond.wait()
        if self._error is not None:
            raise ClientDisconnected(self._error)

    def _room_again(self) -> Callable[[], None] | None:
        """The ``on_room`` to call (outside the lock) when a paused stream was read down."""
        if self._paused and self.unread <= self.bound // 2:
            self._paused = False
            return self._on_room
        return None

    def _take(self, view: memoryview) -> int:
        """Copy up to ``len(view)`` unread bytes into ``view`` (lock held)."""
        copied = 0
        while copied < len(view) and self._pieces:
            piece = self._pieces[0]
            take = min(len(view) - copied, len(piece) - self._offset)
            view[copied:copied + take] = memoryview(piece)[self._offset:self._offset + take]
            copied += take
            self._offset += take
            if self._offset == len(piece):
                self._pieces.popleft()
                self._held -= len(piece)
                self._offset = 0
        self._unread -= copied
        self.consumed += copied
        return copied

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
                self._wait_for_bytes()
                if not self.unread:
                    break
                through = self._through_newline()
            want = through if limit < 0 else min(through, limit - len(line))
            piece = self.read(want)
            line += piece
            if piece.endswith(b"\n"):
                break
        return bytes(line)

    def _through_newline(self) -> int:
        """Unread bytes up to and including the first newline (all of them without one; lock held)."""
        seen, offset = 0, self._offset
        for piece in self._pieces:
            newline = piece.find(b"\n", offset)
            if newline >= 0:
                return seen + newline + 1 - offset
            seen += len(piece) - offset
            offset = 0
        return seen

    def chunks(self, size: int = 65536) -> Iterator[bytes]:
        """The body in pieces of at most ``size`` bytes as they arrive (iterating the
        stream itself gives lines, as PEP 3333 asks of ``wsgi.input``)."""
        while piece := self.read(size):
            yield piece
