"""Per-socket glue for WebSocket connections after the HTTP upgrade.

Strategy: a ``WebSocketSession`` owns the HTTP connection's ``Channel`` once
the 101 is sent (``prefork.worker.ws_upgrade`` builds it from the ``Upgrade``). The
loop feeds received bytes to the sans-IO ``WebSocketConnection`` and writes
what it wants to send; complete messages go to the handler object in the
worker's pool, one call at a time per connection, in order. Handlers talk to
the connection through ``WebSocket``, a thread-safe façade whose calls are
deferred to the loop thread. Output is bounded by ``send_buffer``: a peer
that does not read is closed (1008) instead of growing RAM. The bound covers
every frame queued, control frames included: while the socket is blocked the
protocol keeps only the latest ping's pong (RFC 6455 §5.5.3) and the bytes of
the pongs it dropped count against the bound, so a ping flood from a peer
that never reads costs no memory and ends in the same 1008. Pings every
``ping_interval`` detect dead peers; a close that the peer never answers ends
the TCP connection after ``close_timeout``; a message not finished within
``message_timeout`` closes it with 1008. What unfinished compressed messages
hold is drawn from the worker's ``InflateBudget`` (1009 past it). Each
protocol error, like each of these, is one line in the error log. Whatever
the application's handler raises, wherever it runs, ends in ``handler_failed``:
its traceback in the error log and close code 1011 for the peer.
"""

from __future__ import annotations

import itertools
import os
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from prefork.worker.channel import Channel
from prefork.protocol.http.events import Request
from prefork.protocol.limits import WsLimits
from prefork.config.logs import error_log
from prefork.process.scoreboard import WorkerSlot
from prefork.protocol.websocket.events import MAX_CLOSE_REASON, valid_close_code
from prefork.protocol.websocket.protocol import (
    BytesMessage,
    CloseReceived,
    ConnState,
    InvalidState,
    Pong,
    TextMessage,
    WebSocketConnection,
)

_ids = itertools.count(1)
CLOSE_POLICY = 1008
CLOSE_GOING_AWAY = 1001
CLOSE_INTERNAL_ERROR = 1011
#: Received message bytes waiting for the handler above which the loop stops
#: reading the socket until the handler catches up (TCP then slows the peer).
#: Without it a peer that sends faster than its handler runs (the handler gets
#: the GIL less often than the loop) grows the worker's RAM without bound.
MAX_QUEUED_INPUT = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class WsSettings:
    """Plain WebSocket settings for sessions (built from ``[websocket]`` by prefork.worker.settings)."""

    ping_interval: float
    ping_timeout: float
    close_timeout: float
    send_buffer: int
    message_timeout: float  # 0: no limit


@dataclass(frozen=True, slots=True)
class UpgradeSettings:
    """What the handshake needs: limits, extension policy, origins, session settings."""

    limits: WsLimits
    session: WsSettings
    compression: bool
    allowed_origins: tuple[str, ...]
    inflate_budget: int  # per worker: see prefork.protocol.websocket.budget


class WsLoopServices(Protocol):
    """What the worker's WebSocket side provides to its sessions."""

    slot: WorkerSlot | None

    def run_handler(self, session: WebSocketSession, call: Callable[[], None]) -> None:
        """Run ``call`` in the pool; then ``session.on_handler_done(error)`` on the loop."""

    def defer(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop thread (thread-safe)."""

    def subscribe(self, session: WebSocketSession, channel: str) -> None:
        """Add a session to a broadcast channel."""

    def unsubscribe(self, session: WebSocketSession, channel: str | None) -> None:
        """Remove a session from one channel, or all (None)."""

    def forget(self, session: WebSocketSession) -> None:
        """The session is closed and its handler has returned: drop it."""


class WebSocket:
    """What a handler holds: send, close, subscribe. Safe to call from any thread.

    Attributes:
        id: a number unique within this worker.
        path: the request path.
        path_params: values captured by the route.
        headers: the handshake request's header fields as (str, str) pairs.
        subprotocol: the negotiated subprotocol, or None.
        remote_addr: the client address.
    """

    def __init__(self, session: WebSocketSession, request: Request, path_params: dict[str, Any],
                 subprotocol: str | None) -> None:
        self._session = session
        self.id = next(_ids)
        self.path = request.path.decode("latin-1")
        self.path_params = path_params
        self.headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.headers.raw]
        self.subprotocol = subprotocol
        self.remote_addr = session.peer[0]
        self.state: dict[str, Any] = {}

    def send(self, message: str | bytes) -> None:
        """Send a text (str) or binary (bytes) message.

        Raises:
            TypeError: ``message`` is neither (raised here, in the handler's code,
                rather than later on the loop thread).
        """
        if not isinstance(message, (str, bytes, bytearray, memoryview)):
            raise TypeError(f"a WebSocket message is str or bytes, not {type(message).__name__}")
        self._session.loop.defer(self._session.send_message, message)

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Start the close handshake.

        Raises:
            ValueError: a code that must not be sent (RFC 6455 §7.4), or a reason
                over 123 bytes of UTF-8.
        """
        if not valid_close_code(code):
            raise ValueError(f"close code {code} must not be sent")
        if len(reason.encode("utf-8")) > MAX_CLOSE_REASON:
            raise ValueError(f"close reason longer than {MAX_CLOSE_REASON} bytes")
        self._session.loop.defer(self._session.close_with, code, reason)

    def subscribe(self, channel: str) -> None:
        """Receive what is broadcast on ``channel`` (from any worker)."""
        self._session.loop.defer(self._session.loop.subscribe, self._session, channel)

    def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel``."""
        self._session.loop.defer(self._session.loop.unsubscribe, self._session, channel)

    def call_soon(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the worker's loop thread after the calls this WebSocket already
        made (e.g. read a history kept by ``app.observe`` once ``subscribe`` has
        taken effect, so that no message falls between the two). ``fn`` must be quick;
        if it raises, the connection closes with 1011 as if a handler had raised."""
        self._session.loop.defer(self._session.run_soon, fn)


class WebSocketSession:
    """One upgraded connection, driven by the worker's loop.

    Args:
        channel: the channel, taken over from the HTTP connection.
        peer: the client address.
        loop: the worker's services.
        protocol: the sans-IO connection (created with the bytes that followed the handshake).
        handler: the application's handler object for this connection.
        settings: ping, close and buffer settings.
        recv_buffer: the worker's reusable receive buffer.
    """

    def __init__(self, channel: Channel, peer: tuple[str, int], loop: WsLoopServices,
                 protocol: WebSocketConnection, handler: Any, settings: WsSettings,
                 recv_buffer: memoryview) -> None:
        self.channel = channel
        channel.owner = self
        self.peer = peer
        self.loop = loop
        self.protocol = protocol
        self.handler = handler
        self.settings = settings
        self._buffer = recv_buffer
        self.ws: WebSocket | None = None
        self._unflushed = 0
        self._owed = 0  # pongs coalesced while the socket was blocked (bytes), see _check_send_buffer
        self._flush_scheduled = False
        self.closed = False
        self._forgotten = False
        self._calls: deque[tuple[int, Callable[[], None]]] = deque()
        self._queued_input = 0
        self._busy = False
        self._close_delivered = False
        now = time.monotonic()
        self._next_ping = now + settings.ping_interval
        self._pong_deadline: float | None = None
        self._close_deadline: float | None = None
        self._ping_payload = b""
        self._message_started: float | None = None  # when the unfinished message began
        self._error_logged = False

    @property
    def ended(self) -> bool:
        """Closed, or the handler was already told the connection ended."""
        return self.closed or self._close_delivered

    def start(self, ws: WebSocket, handshake_response: bytes, first_data: bytes) -> None:
        """Send the 101, schedule ``on_open`` and process the bytes that came with the request."""
        self.ws = ws
        if self.loop.slot is not None:
            self.loop.slot.add_connections(ws=1)
        self.channel.set_reading(True)
        self._write(handshake_response)
        self._call("on_open", ws)
        if first_data:
            self.protocol.receive_data(first_data)
        self._after_input()

    # --- input -------------------------------------------------------------------
    def on_readable(self) -> None:
        """Receive frames."""
        if self.closed:
            return
        try:
            n = self.channel.recv_into(self._buffer, len(self._buffer))
        except OSError:
            n = 0
        if n is None:
            return
        if n == 0:
            self.protocol.receive_data(b"")
            self._after_input()
            self.close()
            return
        self.protocol.receive_data(bytes(self._buffer[:n]))
        self._after_input()

    def _after_input(self) -> None:
        for event in self.protocol.events_received():
            if isinstance(event, (TextMessage, BytesMessage)):
                self._call("on_message", self.ws, event.data, size=len(event.data))
            elif isinstance(event, Pong):
                if event.payload == self._ping_payload:
                    self._pong_deadline = None
            elif isinstance(event, CloseReceived):
                self._deliver_close(event.code, event.reason)
        self._log_failure()
        if self.protocol.message_in_progress:
            if self._message_started is None:
                self._message_started = time.monotonic()
        else:
            self._message_started = None
        self._owed += self.protocol.take_coalesced()
        self._pump_protocol()
        self._check_send_buffer(0)
        if self._queued_input > MAX_QUEUED_INPUT:
            self.channel.set_reading(False)  # input back-pressure: see MAX_QUEUED_INPUT

    def _log_failure(self) -> None:
        """One line for the error that failed the connection (bad frame, limit, timeout)."""
        err = self.protocol.last_error
        if err is not None and not self._error_logged:
            self._error_logged = True
            error_log.info("WebSocket %s:%s: %s; closing %d", self.peer[0], self.peer[1], err, err.close_code)

    def _deliver_close(self, code: int, reason: str) -> None:
        if not self._close_delivered:
            self._close_delivered = True
            self.loop.unsubscribe(self, None)
            self._call("on_close", self.ws, code, reason)

    # --- handler calls, one at a time, in order ----------------------------------------
    def _call(self, name: str, *args: Any, size: int = 0) -> None:
        method = getattr(self.handler, name, None)
        if method is None:
            return
        self._calls.append((size, lambda: method(*args)))
        self._queued_input += size
        self._next_call()

    def _next_call(self) -> None:
        if self._busy or not self._calls:
            return
        self._busy = True
        # Everything queued so far goes in one pool job: the calls still run one at a
        # time and in order, but a burst of small messages costs one hand-off, not one each.
        batch = [call for _, call in self._calls]
        self._calls.clear()
        self._queued_input = 0
        if len(batch) == 1:
            self.loop.run_handler(self, batch[0])
            return

        def run_batch() -> None:
            for call in batch:
                call()

        self.loop.run_handler(self, run_batch)

    def on_handler_done(self, error: BaseException | None) -> None:
        """A handler call returned (on the loop thread)."""
        self._busy = False
        if error is not None:
            self.handler_failed(error)
        self._next_call()
        if not self.channel.reading and self._queued_input <= MAX_QUEUED_INPUT // 2:
            self.channel.set_reading(True)
        if not self._busy:
            self._pump_protocol()
        self._maybe_forget()

    def run_soon(self, fn: Callable[[], None]) -> None:
        """Run what the handler gave ``call_soon`` (loop thread)."""
        try:
            fn()
        except Exception as exc:
            self.handler_failed(exc)

    def handler_failed(self, error: BaseException) -> None:
        """The application's code raised: the one place that answers it (close 1011).

        Logged with its traceback; the peer gets a close frame with 1011, "internal
        error" (RFC 6455 §7.4.1), never the exception's text.
        """
        error_log.error("WebSocket handler %s failed: %s", type(self.handler).__name__, error, exc_info=error)
        self.close_with(CLOSE_INTERNAL_ERROR, "internal error")

    # --- output ---------------------------------------------------------------------
    def send_message(self, message: str | bytes) -> None:
        """Queue a message (loop thread), unless the connection is closing."""
        if self.closed:
            return
        size = len(message)
        if not self._check_send_buffer(size):
            return
        try:
            if isinstance(message, str):
                self.protocol.send_text(message)
            else:
                self.protocol.send_binary(message)
        except InvalidState:
            return  # our close went out already: late messages are dropped (RFC 6455 §5.5.1)
        # Write once per burst: messages sent from one batch of handler calls (or one
        # broadcast) go out in one send() instead of one each.
        self._unflushed += size
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.defer(self._flush_burst)

    def _check_send_buffer(self, adding: int) -> bool:
        """Whether ``adding`` more bytes fit in ``send_buffer``; if not, close 1008 (once).

        Counted: bytes not yet taken by the socket, messages queued in this burst,
        and pongs the peer asked for while it did not read (coalesced, so they
        cost no memory, but a peer that pings faster than it reads is not reading).
        """
        queued = self.channel.queued + self._unflushed + self._owed + adding
        if queued <= self.settings.send_buffer:
            return True
        if self.protocol.state is ConnState.OPEN:  # once; later messages are just dropped
            error_log.warning("WebSocket %s:%s: send buffer over %d bytes: %d bytes queued (%d of them "
                              "pongs) for a peer that does not read; closing 1008", self.peer[0],
                              self.peer[1], self.settings.send_buffer, queued, self._owed)
            self.close_with(CLOSE_POLICY, "send buffer overflow")
        return False

    def _flush_burst(self) -> None:
        self._flush_scheduled = False
        self._unflushed = 0
        if not self.closed:
            self._pump_protocol()

    def close_with(self, code: int, reason: str = "") -> None:
        """Start the close handshake (loop thread)."""
        if self.closed:
            return
        if self.protocol.state is ConnState.OPEN:
            self.protocol.send_close(code, reason)
            self._close_deadline = time.monotonic() + self.settings.close_timeout
        self._pump_protocol()

    def _pump_protocol(self) -> None:
        closing = self.protocol.state is not ConnState.OPEN
        if closing and self._close_deadline is None:
            self._close_deadline = time.monotonic() + self.settings.close_timeout
        if closing and (self._busy or self._calls):
            return  # replies to messages that arrived before the close go out first
        chunks = self.protocol.chunks_to_send()
        if chunks:
            self._write(*chunks)
        if self.protocol.close_expected() and not self.channel.queued:
            self.close()

    def _write(self, *buffers: bytes) -> None:
        if self.closed:
            return
        for data in buffers:
            self.channel.queue(data)
        self._flush()

    def _flush(self) -> bool:
        try:
            drained = self.channel.flush()
        except OSError:
            self.close()
            return False
        if drained:
            self._owed = 0  # the peer has read everything: it reads after all
        self.protocol.hold_pongs = not drained  # blocked: keep only the latest pong (§5.5.3)
        return drained

    def on_writable(self) -> None:
        """The socket has room again."""
        if self.closed:
            return
        if self._flush():
            self._pump_protocol()  # a pong held while the socket was blocked goes out now
        if not self.closed and not self.channel.queued and self.protocol.close_expected():
            self.close()

    # --- timers -----------------------------------------------------------------------
    def check_timeouts(self, now: float) -> None:
        """Keep-alive pings, ping timeout, close timeout."""
        if self.closed:
            return
        if self._close_deadline is not None and now >= self._close_deadline:
            self.close()
            return
        timeout = self.settings.message_timeout
        if self._message_started is not None and not self.channel.reading:
            self._message_started = now  # we are not reading (our handler is behind): not the peer's time
        if timeout and self._message_started is not None and now - self._message_started >= timeout:
            self._message_started = None
            self.protocol.fail(CLOSE_POLICY, f"message not finished within {timeout:g} s")
            self._after_input()  # logs it, tells the handler, sends the close
            return
        if self._pong_deadline is not None and now >= self._pong_deadline:
            error_log.info("WebSocket %s:%s: no pong within %g s; closing", self.peer[0], self.peer[1],
                           self.settings.ping_timeout)
            self.close_with(CLOSE_INTERNAL_ERROR, "keepalive ping timeout")
            return
        if now >= self._next_ping and self.protocol.state is ConnState.OPEN:
            self._next_ping = now + self.settings.ping_interval
            if self._pong_deadline is None:
                self._ping_payload = os.urandom(4)
                self._pong_deadline = now + self.settings.ping_timeout
                self.protocol.send_ping(self._ping_payload)
                self._pump_protocol()

    def on_drain(self) -> None:
        """The worker is stopping: tell the client we are going away."""
        self.close_with(CLOSE_GOING_AWAY, "server shutting down")

    def waiting_since(self) -> float | None:
        """Never waiting for a request head: a WebSocket is never shed."""
        return None

    def shed(self) -> bool:
        """Never shed (see ``waiting_since``)."""
        return False

    # --- teardown -------------------------------------------------------------------------
    def close(self) -> None:
        """Close the TCP connection; ``on_close`` still reaches the handler."""
        if self.closed:
            return
        self.closed = True
        self.protocol.abort()  # an unfinished message gives its inflate budget back
        self._deliver_close(1006, "connection closed")
        self.channel.close()
        self._maybe_forget()

    def _maybe_forget(self) -> None:
        # The session stays known to the loop until its last handler call has run,
        # so a graceful stop waits for on_close.
        if self.closed and not self._busy and not self._calls and not self._forgotten:
            self._forgotten = True
            if self.loop.slot is not None:
                self.loop.slot.add_connections(ws=-1)
            self.loop.forget(self)
