"""Workers that die before they are ready: when to start the next one, and when to give up.

Strategy: a worker that dies while starting (a broken extension, the OOM
killer, a bad deploy) is retried after 0.25 s, 0.5 s, 1 s, 2 s, ... (at most
``BOOT_BACKOFF_MAX``), and after ``BOOT_FAILURES_MAX`` such deaths in a row the
master gives up with the last one's cause, instead of respawning forever. The
count starts again only when a worker started after the last failure becomes
ready: healthy older workers beside the failing ones do not break the row.
"""

from __future__ import annotations

import os
import signal

BOOT_BACKOFF_FIRST = 0.25
BOOT_BACKOFF_MAX = 8.0
BOOT_FAILURES_MAX = 5


class BootBackoff:
    """Counts the boot failures in a row and spaces the retries."""

    def __init__(self) -> None:
        self.failures = 0
        self._last_failure = 0.0
        self._next_spawn = 0.0

    def may_spawn(self, now: float) -> bool:
        """Whether a worker may be started now."""
        return now >= self._next_spawn

    def ready(self, started: float) -> None:
        """A worker started at ``started`` (monotonic) is ready: a row of failures before it ends."""
        if self.failures and started > self._last_failure:
            self.failures = 0

    def failed(self, now: float) -> float | None:
        """One more worker died while starting.

        Returns:
            The delay before the next start, or None when there were too many in a row.
        """
        self.failures += 1
        self._last_failure = now
        if self.failures >= BOOT_FAILURES_MAX:
            return None
        delay: float = min(BOOT_BACKOFF_MAX, BOOT_BACKOFF_FIRST * 2.0 ** (self.failures - 1))
        self._next_spawn = now + delay
        return delay


def describe_status(status: int) -> str:
    """A waitpid status in words: "exited with code 3", "was killed by SIGKILL"."""
    if os.WIFSIGNALED(status):
        return f"was killed by {signal.Signals(os.WTERMSIG(status)).name}"
    return f"exited with code {os.WEXITSTATUS(status)}"
