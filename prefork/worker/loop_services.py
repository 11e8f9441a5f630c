"""What the worker's event loop provides to its connections, and what it asks of them.

Strategy: ``Connection`` is written against ``LoopServices``, not against the
``Worker`` class, so that the connection never reaches into the loop's state
and can be driven by a stand-in in tests; a request that switches protocols
reaches the loop as an ``Upgrade``. ``LoopTarget`` is the other side:
what the loop calls on anything it holds a socket for (an HTTP connection, a
WebSocket session), so the loop needs to know neither protocol.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from prefork.apps.handlers import CompleteRequest, ResponseStream
from prefork.protocol.http.events import Request
from prefork.config.settings import ConnectionSettings

if TYPE_CHECKING:
    from prefork.worker.channel import Channel
    from prefork.worker.connection import Connection
    from prefork.process.scoreboard import WorkerSlot
    from prefork.staging.writebehind import WriteBehindHelper
    from prefork.staging.partial_intake import ResumableUploads
    from prefork.protocol.errors import ProtocolError


@dataclass(frozen=True, slots=True)
class Upgrade:
    """A complete request that switches the connection to another protocol (RFC 9110 §7.8).

    Attributes:
        head: the request.
        data: the bytes that followed it: the new protocol's first bytes.
        has_body: the request came with a body (``data`` is empty then), which the
            new protocol may refuse.
    """

    head: Request
    data: bytes
    has_body: bool


class LoopServices(Protocol):
    """What the worker's loop provides to its connections."""

    settings: ConnectionSettings
    slot: WorkerSlot | None
    draining: bool
    write_behind: WriteBehindHelper  # the worker's, for the files of the forms it stages
    resumable: ResumableUploads | None  # the resumable-upload URL space; None: [resumable] path is empty

    def watch(self, channel: Channel, read: bool, write: bool) -> None:
        """Set which readiness events the loop reports to the channel's owner."""

    def dispatch(self, conn: Connection, request: CompleteRequest) -> None:
        """Run the application; later call ``conn.on_response``."""

    def pull(self, conn: Connection, stream: ResponseStream, budget: int) -> None:
        """Run ``stream.pull(budget)`` in the pool: chunks to ``conn.sender.on_chunk``, then ``on_pulled``."""

    def wants_form(self, head: Request) -> bool:
        """Whether the application wants this body parsed as a form while it arrives."""

    def wants_stream(self, head: Request) -> bool:
        """Whether the request's handler reads its body while it arrives (streaming routes)."""

    def admit_stream(self) -> ProtocolError | None:
        """Count a new streamed body in, or refuse it (503): the worker's streams are bounded."""

    def stream_done(self) -> None:
        """A streamed body's request is over."""

    def wants_upgrade(self, head: Request) -> bool:
        """Whether a request that asks to switch protocols is taken (else it is plain HTTP)."""

    def upgrade(self, conn: Connection, upgrade: Upgrade) -> None:
        """Switch protocols: later ``conn.hand_off()`` (accepted) or ``conn.fail(...)`` (refused)."""

    def defer(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop thread after what is already queued."""

    def forget(self, conn: Connection) -> None:
        """The connection is closed; drop it."""


class LoopTarget(Protocol):
    """What the loop calls on a connection it holds (HTTP or WebSocket)."""

    channel: Channel

    def on_readable(self) -> None:
        """The socket has input (or EOF)."""

    def on_writable(self) -> None:
        """The socket has room for output."""

    def check_timeouts(self, now: float) -> None:
        """The periodic sweep: apply this connection's timeouts."""

    def waiting_since(self) -> float | None:
        """When it began waiting for a request head (it may be shed); None when busy."""

    def shed(self) -> bool:
        """Close to make room unless a request has just arrived; True when closed."""

    def on_drain(self) -> None:
        """The worker is stopping gracefully."""

    def close(self) -> None:
        """Close now."""
