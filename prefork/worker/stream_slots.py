"""How many streamed request bodies one worker reads at once (``[streaming] max_streams``).

Strategy: a streaming handler holds a handler thread for its stream's whole life,
so a worker admits at most ``max_streams`` of them (503 past it) and none at all
without handler threads; the count is published in the worker's scoreboard slot
for the status page and Prometheus.
"""

from __future__ import annotations

from prefork.process.scoreboard import WorkerSlot
from prefork.protocol.errors import ProtocolError, ServiceUnavailable

__all__ = ["StreamSlots"]


class StreamSlots:
    """The worker's streams in progress.

    Args:
        limit: ``[streaming] max_streams``.
        threaded: the worker has handler threads.
        slot: the worker's scoreboard slot, or None.
    """

    def __init__(self, limit: int, threaded: bool, slot: WorkerSlot | None) -> None:
        self.limit = limit
        self.threaded = threaded
        self.slot = slot
        self.count = 0

    def admit(self) -> ProtocolError | None:
        """Count a streamed body in, or say why not (503)."""
        if not self.threaded:
            return ServiceUnavailable("streaming request bodies need handler threads ([server] threads = 0)")
        if self.count >= self.limit:
            return ServiceUnavailable(f"{self.count} streams in progress in this worker, the most "
                                      "[streaming] max_streams allows")
        self._add(1)
        return None

    def done(self) -> None:
        """A streamed body's request is over."""
        self._add(-1)

    def _add(self, delta: int) -> None:
        self.count += delta
        if self.slot is not None:
            self.slot.add_streams(delta)
