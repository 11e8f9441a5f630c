"""A non-blocking socket's outgoing bytes: a queue written with send/sendmsg.

Strategy: HTTP connections and WebSocket sessions both queue buffers and
write as much as the socket takes, never blocking. Small queues are joined
into one ``send`` (cheaper than ``sendmsg`` for a head plus a short body);
larger ones go out with scatter-gather ``sendmsg`` of at most 64 buffers, and
a partly sent buffer is kept as a memoryview slice, so nothing is copied twice.
"""

from __future__ import annotations

import itertools
import socket
from collections import deque

# Output up to this size is joined into one buffer before it is sent.
SMALL_WRITE = 16 * 1024
# Buffers per sendmsg call (Linux IOV_MAX is 1024; 64 keeps each call cheap).
MAX_IOV = 64


class OutputQueue:
    """Bytes waiting to be written to one socket.

    Attributes:
        size: bytes queued and not yet written.
    """

    __slots__ = ("_buffers", "size")

    def __init__(self) -> None:
        self._buffers: deque[bytes | memoryview] = deque()
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def __bool__(self) -> bool:
        return self.size > 0

    def append(self, data: bytes | memoryview) -> None:
        """Queue ``data`` (ignored when empty)."""
        if data:
            self._buffers.append(data)
            self.size += len(data)

    def clear(self) -> None:
        """Drop everything queued."""
        self._buffers.clear()
        self.size = 0

    def write_to(self, sock: socket.socket) -> bool:
        """Write as much as ``sock`` takes now.

        Returns:
            True when the queue is empty, False when the socket would block.

        Raises:
            OSError: the peer is gone (reset, broken pipe).
        """
        out = self._buffers
        if len(out) > 1 and self.size <= SMALL_WRITE:
            joined = b"".join(out)
            out.clear()
            out.append(joined)
        while out:
            try:
                if len(out) == 1:
                    sent = sock.send(out[0])
                else:
                    sent = sock.sendmsg(list(itertools.islice(out, MAX_IOV)))
            except (BlockingIOError, InterruptedError):
                return False
            self.size -= sent
            while sent:
                first = out[0]
                if sent >= len(first):
                    sent -= len(first)
                    out.popleft()
                else:
                    out[0] = memoryview(first)[sent:]
                    sent = 0
        return True
