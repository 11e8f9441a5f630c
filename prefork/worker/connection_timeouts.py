"""A connection's clocks: header, keep-alive, body-rate, send and linger timeouts, shedding, draining.

Strategy: the worker's sweep calls ``check_timeouts`` about twice a second on
every connection; each stage of the request cycle has one deadline, and what
happens when it passes depends only on the stage. Closing an idle connection
always does one last read first, since its client may be reusing it at that
very moment (RFC 9112 §9.3.1), and a request found then is served instead.
This is the part of ``Connection`` that only reads the clock; it is a base
class so that the cycle's code (``prefork.worker.connection``) stays readable.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from prefork.config.logs import error_log
from prefork.protocol.errors import ProtocolError, RequestTimeout
from prefork.worker.stage import Stage

if TYPE_CHECKING:
    from prefork.config.settings import ConnectionSettings
    from prefork.protocol.http.parser import RequestParser
    from prefork.worker.body_sinks import RequestBody
    from prefork.worker.channel import Channel
    from prefork.worker.loop_services import LoopServices

__all__ = ["DRAIN_LINGER", "ConnectionTimeouts"]

# How long a draining worker keeps an idle connection open for a request that may
# be on its way (the reload and recycle race of RFC 9112 §9.3.1); short, so that a
# stop is quick even with a long keepalive_timeout.
DRAIN_LINGER = 2.0


class ConnectionTimeouts:
    """Timeouts, shedding and draining of a ``Connection`` (its base class)."""

    stage: Stage
    deadline: float
    started: float
    timeout_is_keepalive: bool
    peer: tuple[str, int]
    settings: ConnectionSettings
    loop: LoopServices
    parser: RequestParser
    body: RequestBody
    channel: Channel

    if TYPE_CHECKING:  # the cycle's own methods, defined by Connection
        def on_readable(self) -> None: ...

        def fail(self, exc: ProtocolError, *, response: bytes | None = None) -> None: ...

        def close(self) -> None: ...
        def superseded(self) -> None: ...

    def check_timeouts(self, now: float) -> None:
        """Apply header, keep-alive, body-rate and linger timeouts (and let go of a resumable
        upload that a newer request asked for)."""
        if self.stage is Stage.BODY and self.body.preempted():
            self.superseded()
            return
        if now < self.deadline:
            return
        if self.stage is Stage.HEAD:
            if self.timeout_is_keepalive or (self.loop.draining and not self.parser.buffered):
                self._close_idle()
            else:
                self.fail(RequestTimeout(
                    f"request head not complete within {self.settings.header_timeout:g} s"))
        elif self.stage is Stage.BODY:
            if self.body_paused():  # the application is behind, not the client: its time does not count
                self.body.restart_window(now)
                self.deadline = now + self.settings.body_rate_window
                return
            try:
                self.body.check_rate(now)
            except RequestTimeout as exc:
                self.fail(exc)
                return
            self.deadline = now + self.settings.body_rate_window
        elif self.stage is Stage.LINGER:
            self.close()
        elif self.stage is Stage.RESPONDING:
            if self.body_streaming() and not self.body_paused():  # full duplex: the body's rate rule goes on
                try:
                    self.body.check_rate(now)
                except RequestTimeout as exc:
                    self.fail(exc)
                    return
            if not self.channel.queued:  # waiting for the application, not for the client
                self.deadline = now + self.settings.send_timeout
                return
            error_log.info("%s:%s: no response bytes accepted for %g s; closing",
                           self.peer[0], self.peer[1], self.settings.send_timeout)
            self.close()

    def body_paused(self) -> bool:
        """Whether the body is not being read because the application is behind (streamed bodies)."""
        return False

    def body_streaming(self) -> bool:
        """Whether a streamed body still arrives while the response goes out."""
        return False

    def _close_idle(self) -> None:
        """Close a connection with no request in progress, unless one has just arrived.

        Closing races a client that reuses the connection at that moment (RFC 9112
        §9.3.1): its request would meet a reset. One last read narrows that race to
        requests still on the wire; whatever is found is served instead.
        """
        self.on_readable()
        if self.stage is Stage.HEAD and not self.parser.buffered:
            self.close()

    def waiting_since(self) -> float | None:
        """When this connection began waiting for its current request head; None when busy."""
        return self.started if self.stage is Stage.HEAD else None

    def shed(self) -> bool:
        """Close to make room for a new connection, unless a request has just arrived.

        Returns:
            True when closed; False when the last read found a complete head.
        """
        self.on_readable()
        if self.stage is not Stage.HEAD:
            return self.stage is Stage.CLOSED
        self.close()
        return True

    def on_drain(self) -> None:
        """The worker is stopping: idle connections stay for a short linger, no longer.

        An idle keep-alive connection is not closed at once: its client may be
        sending a request at this very moment, and closing would reset it. Requests
        that arrive from now on are answered with ``Connection: close``; a
        connection that stays idle is closed after at most ``DRAIN_LINGER`` (or its
        keep-alive time, if sooner), after one last read.
        """
        if self.stage is Stage.HEAD and not self.parser.buffered:
            self.deadline = min(self.deadline, time.monotonic() + DRAIN_LINGER)
