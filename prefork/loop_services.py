"""What the worker's event loop provides to its HTTP connections.

Strategy: ``Connection`` is written against this protocol, not against the
``Worker`` class, so that the connection never reaches into the loop's state
and can be driven by a stand-in in tests.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from prefork.handlers import CompleteRequest, ResponseStream
from prefork.http.events import Request
from prefork.settings import ConnectionSettings

if TYPE_CHECKING:
    from prefork.connection import Connection
    from prefork.scoreboard import WorkerSlot
    from prefork.writebehind import WriteBehindHelper


class LoopServices(Protocol):
    """What the worker's loop provides to its connections."""

    settings: ConnectionSettings
    slot: WorkerSlot | None
    draining: bool
    write_behind: WriteBehindHelper  # the worker's, for the files of the forms it stages

    def watch(self, conn: Connection, read: bool, write: bool) -> None:
        """Set which readiness events the loop reports for this connection."""

    def dispatch(self, conn: Connection, request: CompleteRequest) -> None:
        """Run the application; later call ``conn.on_response``."""

    def pull(self, conn: Connection, stream: ResponseStream, budget: int) -> None:
        """Run ``stream.pull(budget)`` in the pool; later call ``conn.on_pulled``."""

    def wants_form(self, head: Request) -> bool:
        """Whether the application wants this body parsed as a form while it arrives."""

    def defer(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop thread after what is already queued."""

    def forget(self, conn: Connection) -> None:
        """The connection is closed; drop it."""
