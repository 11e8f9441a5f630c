"""Where a connection is in its HTTP request cycle (shared by the connection and its timeouts)."""

from __future__ import annotations

import enum

__all__ = ["Stage"]


class Stage(enum.Enum):
    """Where a connection is in its request cycle."""

    HEAD = 1        # waiting for (the rest of) a request head
    BODY = 2        # streaming a body into its sink
    HANDLING = 3    # the application is running
    RESPONDING = 4  # writing the response
    LINGER = 5      # answered an error; draining the client's bytes before closing
    UPGRADING = 6   # the loop took an upgrade: the new protocol is being set up
    HANDED_OFF = 7  # the channel belongs to another protocol now (WebSocket)
    CLOSED = 8
