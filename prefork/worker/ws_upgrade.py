"""The worker's WebSocket side: from an ``Upgrade`` outcome to a running session.

Strategy: the HTTP connection knows nothing of WebSockets. It asks whether an
upgrade is taken (``wants``: WebSockets are on, the request asks for one and
a route has a handler for its path); if so, it hands over the complete
request as an ``Upgrade`` (``take``). Here the handshake is checked on the
loop thread (pure code: a refusal is the HTTP connection's last answer, with
its 400/403/426). The application's code — the route's ``select_subprotocol``
and the handler's constructor — runs in the handler pool, like every other
call into the application; when it fails, the client gets a 500 and no 101.
Then, on the loop thread, the 101 is built, the session takes the
connection's channel (output still queued included) and the worker only
re-points the socket at the session (``switch``).

The same object serves the sessions as their loop (``WsLoopServices``):
handler calls go to the pool, one at a time per session; broadcast
subscriptions go to the worker's ``Subscribers`` registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from prefork.apps.broadcast import Subscribers
from prefork.worker.connection import Connection
from prefork.worker.loop_services import Upgrade
from prefork.protocol.errors import ProtocolError
from prefork.apps.handlers import LoadedApp
from prefork.protocol.http.events import Request
from prefork.config.logs import error_log
from prefork.worker.pool import HandlerPool, Job
from prefork.process.scoreboard import WorkerSlot
from prefork.protocol.websocket.budget import InflateBudget
from prefork.protocol.websocket.deflate import DeflateParams, negotiate
from prefork.protocol.websocket.handshake import (
    HandshakeError,
    HandshakeRequest,
    build_accept_response,
    build_error_response,
    requests_websocket,
    validate_upgrade,
)
from prefork.protocol.websocket.protocol import WebSocketConnection
from prefork.worker.wsconn import UpgradeSettings, WebSocket, WebSocketSession

# A 4 KiB compression window (memLevel 8) bounds each connection's compressor to
# about 24 KiB instead of 256 KiB, as the websockets library does (RFC 7692 §7.1.2.1
# lets the server lower its own window even when the client did not ask).
SERVER_MAX_WINDOW_BITS = 12


class WorkerLoop(Protocol):
    """What the WebSocket side needs of the worker."""

    slot: WorkerSlot | None
    draining: bool

    def defer(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop thread."""

    def switch(self, old: Connection, new: WebSocketSession) -> None:
        """Point the loop at the session that now owns ``old``'s channel."""

    def forget(self, target: Any) -> None:
        """Drop a closed connection."""


@dataclass(slots=True)
class _Handshake:
    """A checked handshake waiting for the application's handler object."""

    conn: Connection
    upgrade: Upgrade
    request: HandshakeRequest
    deflate: DeflateParams | None
    handler_cls: Any
    params: dict[str, Any]


class WebSocketSide:
    """Takes WebSocket upgrades and serves the sessions of one worker.

    Args:
        app: the application; its ``websocket_handler(path)`` names a route's handler class.
        settings: the WebSocket settings, or None when WebSockets are off.
        loop: the worker.
        pool: the handler threads, or None to run application code inline (``threads = 0``).
        recv_buffer: the worker's reusable receive buffer.
        subscribers: the worker's broadcast registry.
    """

    def __init__(self, app: LoadedApp, settings: UpgradeSettings | None, loop: WorkerLoop,
                 pool: HandlerPool | None, recv_buffer: memoryview, subscribers: Subscribers) -> None:
        self._app = app
        self._on = settings is not None and app.serves_websockets
        self.settings = settings
        self.loop = loop
        self.slot = loop.slot
        self.pool = pool
        self._recv_buffer = recv_buffer
        self._budget = InflateBudget(settings.inflate_budget if settings is not None else 0)
        self._subscribers = subscribers

    # --- taking an upgrade ----------------------------------------------------------
    def wants(self, head: Request) -> bool:
        """Whether this request is a WebSocket upgrade with a handler (else it stays HTTP)."""
        if not self._on:
            return False
        if head.upgrade != b"websocket" and not requests_websocket(head.headers.raw):
            return False  # head.upgrade is the first protocol listed; websocket may come later
        return self._app.websocket_handler(head.path)[0] is not None

    def take(self, conn: Connection, upgrade: Upgrade) -> None:
        """Check the handshake, then have the pool make the handler object."""
        assert self.settings is not None
        head = upgrade.head
        handler_cls, params = self._app.websocket_handler(head.path)
        try:
            if upgrade.has_body:
                raise HandshakeError("a WebSocket handshake request must not have a body", 400)
            # allowed_origins: empty = the same origin as Host only (or the host a trusted proxy
            # names), "*" = any (handshake.py).
            request = validate_upgrade(head.method, head.http_version, head.headers.raw,
                                       allowed_origins=self.settings.allowed_origins,
                                       authority=conn.origin.forwarded_authority)
            deflate = (negotiate(request.extensions, server_max_window_bits=SERVER_MAX_WINDOW_BITS)
                       if self.settings.compression else None)
        except HandshakeError as exc:
            conn.fail(exc, response=build_error_response(exc))
            return
        pending = _Handshake(conn, upgrade, request, deflate, handler_cls, params)
        make = _handler_maker(handler_cls, request.subprotocols)
        if self.pool is None:
            try:
                made: object = make()
            except Exception as exc:
                made = exc
            self._made(pending, made)
        else:
            self.pool.submit(lambda job: make(), lambda made: self._made(pending, made),
                             label=f"the WebSocket handler for {head}")

    def _made(self, pending: _Handshake, made: Any) -> None:
        """The handler object exists (or failed to): send the 101 and start the session."""
        conn = pending.conn
        if isinstance(made, BaseException):
            error_log.error("WebSocket handler %r failed to start: %s", pending.handler_cls, made, exc_info=made)
            if not conn.channel.closed:
                conn.fail(ProtocolError("the WebSocket handler failed to start", 500))
            return
        if conn.channel.closed:
            return  # the client or the worker went first; the handler object never saw a connection
        handler, subprotocol = made
        assert self.settings is not None
        response = build_accept_response(pending.request, subprotocol=subprotocol, deflate=pending.deflate)
        protocol = WebSocketConnection(self.settings.limits, deflate=pending.deflate, inflate_budget=self._budget)
        session = WebSocketSession(conn.hand_off(), conn.origin.client, self, protocol, handler, self.settings.session,
                                   self._recv_buffer)
        self.loop.switch(conn, session)
        session.start(WebSocket(session, pending.upgrade.head, pending.params, subprotocol), response,
                      pending.upgrade.data)
        if self.loop.draining:  # accepted just before the stop: tell it at once, like the others
            session.on_drain()

    # --- WsLoopServices for sessions --------------------------------------------------
    def run_handler(self, session: WebSocketSession, call: Callable[[], None]) -> None:
        """Run a WebSocket handler call in the pool (or inline with threads = 0)."""
        def done(result: Any) -> None:
            session.on_handler_done(result if isinstance(result, BaseException) else None)

        if self.pool is None:
            try:
                call()
                done(None)
            except Exception as exc:
                done(exc)
        else:
            self.pool.submit(_run_call(call), done, label="a WebSocket handler")

    def defer(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop thread."""
        self.loop.defer(fn, *args)

    def forget(self, session: WebSocketSession) -> None:
        """A session is closed and done."""
        self.loop.forget(session)

    # --- broadcast --------------------------------------------------------------------
    def subscribe(self, session: WebSocketSession, channel: str) -> None:
        """Add a session to a broadcast channel (loop thread)."""
        self._subscribers.subscribe(session, channel)

    def unsubscribe(self, session: WebSocketSession, channel: str | None) -> None:
        """Remove a session from one channel, or from all of them."""
        self._subscribers.unsubscribe(session, channel)


def _handler_maker(handler_cls: Any, offered: list[str]) -> Callable[[], tuple[Any, str | None]]:
    """The application's part of a handshake: choose a subprotocol, make the handler object."""
    def make() -> tuple[Any, str | None]:
        subprotocol = None
        chooser = getattr(handler_cls, "select_subprotocol", None)
        if chooser is not None and offered:
            subprotocol = chooser(list(offered))
            if subprotocol not in offered:
                subprotocol = None
        return handler_cls(), subprotocol
    return make


def _run_call(call: Callable[[], None]) -> Callable[[Job], None]:
    def run(job: Job) -> None:
        call()
    return run
