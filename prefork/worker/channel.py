"""One socket as the event loop drives it: reads, queued writes, readiness, close.

Strategy: an HTTP ``Connection`` and, after an upgrade, a ``WebSocketSession``
talk to their client through a ``Channel``; it is the only place that calls
the socket (``recv_into``, ``send``/``sendmsg``, ``sendfile``, ``shutdown``),
so a transport such as TLS fits in under it without the protocols noticing.
The channel never blocks: output is a queue written as far as the socket
takes it now. Small queues are joined into one ``send`` (cheaper than
``sendmsg`` for a head plus a short body); larger ones go out with
scatter-gather ``sendmsg`` of at most 64 buffers, and a partly sent buffer is
kept as a memoryview slice, so nothing is copied twice. Readiness is the
loop's business: the channel tells it (``watch``) which events its owner
wants — reading off is input back-pressure, writing on means output is
waiting — and the loop calls the owner's ``on_readable``/``on_writable``.
On an upgrade the channel, with whatever output is still queued, passes to
the new protocol's owner.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections import deque
from collections.abc import Callable
from typing import Any

# Output up to this size is joined into one buffer before it is sent.
SMALL_WRITE = 16 * 1024
# Buffers per sendmsg call (Linux IOV_MAX is 1024; 64 keeps each call cheap).
MAX_IOV = 64


class Channel:
    """A non-blocking socket, its queued output and the readiness its owner wants.

    Args:
        sock: the connected, non-blocking socket.
        watch: the loop's ``watch(channel, read, write)``: report these events to the owner.

    Attributes:
        sock: the socket.
        owner: what the loop calls when the socket is ready (set by the protocol that uses it).
        queued: output bytes not yet taken by the socket.
        reading: the owner wants to hear when input arrives.
        writing: output is waiting for room in the socket.
        closed: the socket is closed.
    """

    __slots__ = ("sock", "owner", "queued", "reading", "writing", "closed", "_out", "_watch")

    #: The channel is encrypted (``TlsChannel``): requests on it are ``https``.
    secure = False

    def __init__(self, sock: socket.socket, watch: Callable[[Channel, bool, bool], None]) -> None:
        self.sock = sock
        self.owner: Any = None
        self.queued = 0
        self.reading = True
        self.writing = False
        self.closed = False
        self._out: deque[bytes | memoryview] = deque()
        self._watch = watch

    def fileno(self) -> int:
        """The socket's file descriptor (-1 once closed)."""
        return self.sock.fileno()

    def tls_info(self) -> Any:
        """What TLS negotiated (``prefork.apps.handlers.TlsInfo``); None on a plain channel."""
        return None

    # --- input ---------------------------------------------------------------------
    def recv_into(self, buffer: memoryview, size: int) -> int | None:
        """Receive up to ``size`` bytes into ``buffer``.

        Returns:
            The byte count (0 at the peer's EOF), or None when nothing is there yet.

        Raises:
            OSError: the connection failed (reset).
        """
        try:
            return self.sock.recv_into(buffer, size)
        except (BlockingIOError, InterruptedError):
            return None

    def set_reading(self, on: bool) -> None:
        """Ask the loop to report input (or stop: input back-pressure)."""
        if on != self.reading and not self.closed:
            self.reading = on
            self._watch(self, on, self.writing)

    # --- output --------------------------------------------------------------------
    def queue(self, data: bytes | memoryview) -> None:
        """Queue ``data`` for the peer (ignored when empty); ``flush`` writes it."""
        if data:
            self._out.append(data)
            self.queued += len(data)

    def discard_output(self) -> None:
        """Drop everything queued."""
        self._out.clear()
        self.queued = 0

    def flush(self) -> bool:
        """Write as much queued output as the socket takes now.

        Asks the loop for writability while output is left, and stops asking
        once it is all gone.

        Returns:
            True when nothing is left queued.

        Raises:
            OSError: the peer is gone (reset, broken pipe).
        """
        out = self._out
        if len(out) > 1 and self.queued <= SMALL_WRITE:
            joined = b"".join(out)
            out.clear()
            out.append(joined)
        sock = self.sock
        while out:
            try:
                if len(out) == 1:
                    sent = sock.send(out[0])
                else:
                    sent = sock.sendmsg(list(itertools.islice(out, MAX_IOV)))
            except (BlockingIOError, InterruptedError):
                break
            self._consume(sent)
        drained = not out
        if drained == self.writing:
            self.set_writing(not drained)
        return drained

    def _consume(self, sent: int) -> None:
        """Drop the first ``sent`` bytes of the queue; a partly sent buffer stays as a view."""
        out = self._out
        self.queued -= sent
        while sent:
            first = out[0]
            if sent >= len(first):
                sent -= len(first)
                out.popleft()
            else:
                out[0] = memoryview(first)[sent:]
                sent = 0

    def sendfile(self, fd: int, offset: int, count: int) -> int | None:
        """Send ``count`` bytes of file ``fd`` from ``offset`` (queued output must be gone).

        Returns:
            Bytes sent (0: the file has none left there), or None when the socket is
            full: the loop reports writability then.

        Raises:
            OSError: the peer is gone, or the file cannot be read.
        """
        try:
            return os.sendfile(self.sock.fileno(), fd, offset, count)
        except (BlockingIOError, InterruptedError):
            self.set_writing(True)
            return None

    def set_writing(self, on: bool) -> None:
        """Ask the loop to report room for output (or stop)."""
        if on != self.writing and not self.closed:
            self.writing = on
            self._watch(self, self.reading, on)

    # --- teardown ------------------------------------------------------------------
    def shutdown_write(self) -> None:
        """Send FIN after the queued output: the peer reads what was sent, then EOF.

        Raises:
            OSError: the peer is gone.
        """
        self.sock.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        """Stop watching the socket, drop queued output and close it; idempotent."""
        if self.closed:
            return
        self._watch(self, False, False)
        self.closed = True
        self.discard_output()
        try:
            self.sock.close()
        except OSError:
            pass
