"""The global staging-RAM budget, as the staging code sees it.

Strategy: bodies and form parts staged in RAM reserve their bytes from one
budget shared by every worker (``[staging] memory_budget``); past it they go
to disk. The scoreboard implements it in shared memory
(``prefork.process.scoreboard.WorkerSlot``); staging code depends only on this
Protocol, so it stays below the process layer.
"""

from __future__ import annotations

from typing import Protocol

__all__ = ["MemoryBudget"]


class MemoryBudget(Protocol):
    """A global RAM budget shared by the workers (the scoreboard implements it)."""

    def try_reserve(self, nbytes: int) -> bool:
        """Reserve ``nbytes``; return False when the budget cannot grant them."""
        ...

    def release(self, nbytes: int) -> None:
        """Give back ``nbytes`` previously reserved."""
        ...
