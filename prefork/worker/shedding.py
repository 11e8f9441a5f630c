"""Making room at ``max_connections``: close the idlest connections that have sent no request.

Strategy: a worker at its connection limit used to stop accepting, so new
clients waited in the listen backlog while every slot was held by sockets that
had sent nothing (10,000 of those delayed a normal GET by 22 s). Instead, each
pending connection is let in by closing one that is waiting for a request head,
the one that has waited longest first: idle keep-alive connections and clients
that connect and never finish a head cost their own connection, never a new
client's. Connections with a request in progress, a body on its way or a
WebSocket are never shed. What was shed is logged as one summary line per
sweep and counted in the scoreboard (the status page's ``shed``).
"""

from __future__ import annotations

import heapq
import os
import time
from collections.abc import Iterable
from typing import Protocol

from prefork.config.logs import error_log

# Victims chosen per scan: a burst of new connections does not rescan every connection.
SCAN_BATCH = 32


class Sheddable(Protocol):
    """What the shedder needs of a connection."""

    def waiting_since(self) -> float | None:
        """When it began waiting for its current request head, or None when busy."""

    def shed(self) -> bool:
        """Close it unless a request has just arrived; True when closed."""


class IdleShedder:
    """Picks and closes idle connections for a worker at its connection limit.

    Args:
        limit: the worker's ``max_connections`` (for the log line).
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._queue: list[tuple[float, int, Sheddable]] = []
        self._unlogged = 0
        self._longest_wait = 0.0

    def has_candidate(self, connections: Iterable[Sheddable]) -> bool:
        """Whether some connection could be shed (scans only when the last batch is used up)."""
        self._queue = [item for item in self._queue if item[2].waiting_since() == item[0]]
        if not self._queue:
            waiting = []
            for conn in connections:
                started = conn.waiting_since()
                if started is not None:
                    waiting.append((started, id(conn), conn))
            self._queue = heapq.nsmallest(SCAN_BATCH, waiting, key=lambda item: item[0])
            self._queue.reverse()  # pop() takes the oldest
        return bool(self._queue)

    def shed_one(self) -> bool:
        """Close the connection that has waited longest for a head; False if none could be."""
        now = time.monotonic()
        while self._queue:
            started, _, conn = self._queue.pop()
            if conn.waiting_since() != started:
                continue  # it got busy (or closed) since the scan
            if conn.shed():
                self._unlogged += 1
                self._longest_wait = max(self._longest_wait, now - started)
                return True
        return False

    def take_shed(self) -> int:
        """Connections shed since the last call, logged as one line."""
        count, self._unlogged = self._unlogged, 0
        if count:
            error_log.warning("worker %d at max_connections (%d): closed %d connection(s) that had sent no "
                              "complete request head (the longest had waited %.1f s) to let new ones in",
                              os.getpid(), self.limit, count, self._longest_wait)
        self._longest_wait = 0.0
        return count
