"""A per-worker budget for the inflated bytes of unfinished compressed messages.

Strategy: ``max_message_size`` caps one message, but nothing capped their sum:
ten connections that each sent a few KiB of never-finished permessage-deflate
messages held ~615 MiB of a worker's RAM (issue 12). Every connection of a
worker draws on one ``InflateBudget`` for the bytes it has inflated and holds
for a message whose last frame has not arrived; a message that completes gives
them back at once, and so does a connection that ends. A reservation that does
not fit fails (the connection closes with 1009), like the staging budget that
sends bodies to disk. All of a worker's connections run on its loop thread, so
the counter needs no lock. Pure: no clocks, sockets or logging.
"""

from __future__ import annotations

__all__ = ["InflateBudget"]


class InflateBudget:
    """Bytes that unfinished compressed messages may hold, across one worker's connections.

    Attributes:
        limit: the most bytes that may be held at once.
        used: the bytes held now.
    """

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        """Create the budget.

        Args:
            limit: the most bytes that may be held at once.
        """
        self.limit = limit
        self.used = 0

    def reserve(self, size: int) -> bool:
        """Take ``size`` bytes if they fit.

        Args:
            size: bytes to hold.

        Returns:
            True if reserved; False (nothing taken) if the budget would be exceeded.
        """
        if self.used + size > self.limit:
            return False
        self.used += size
        return True

    def release(self, size: int) -> None:
        """Give back ``size`` bytes reserved earlier.

        Args:
            size: bytes no longer held.
        """
        self.used -= size
