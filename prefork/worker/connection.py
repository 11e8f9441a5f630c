"""One HTTP/1.1 connection's request cycle: bytes into the parser, bodies into
their sink, complete requests to the worker, responses back out, never blocking.

Strategy: a ``Connection`` is driven entirely by its worker's event loop: it is
told when its socket is readable or writable, when its application call has
finished, and when a second has passed (timeouts). It never blocks and never
runs application code: handlers and response iterators run in the worker's
handler pool, which hands results back through the loop. It talks to its
client through a ``Channel``; bodies go into a ``RequestBody``
(``prefork.worker.body_sinks``), responses out through a ``ResponseSender``
(``prefork.worker.sender``, framing by the sans-IO ``ResponseWriter``). What stays
here is the cycle's policy: when to read, keep-alive, timeouts, errors, linger,
close. A request that switches protocols, if the loop takes it, ends the HTTP
life as an ``Upgrade`` outcome: the new protocol gets the channel. Bodies that
are not staged whole before the application runs (streamed bodies, resumable
uploads) are its base class's (``prefork.worker.connection_intake``).
"""

from __future__ import annotations

import time

from prefork.worker.body_sinks import RequestBody, staging_failed
from prefork.worker.channel import Channel
from prefork.worker.connection_intake import ConnectionIntake
from prefork.worker.connection_timeouts import DRAIN_LINGER
from prefork.worker.stage import Stage
from prefork.protocol.errors import IncompleteBody, ProtocolError
from prefork.apps.handlers import CompleteRequest, ResponseStream
from prefork.protocol.http.events import ConnectionClosed, Data, EndOfMessage, Request, Signal
from prefork.protocol.http.headers import Headers
from prefork.protocol.http.parser import ParserState, RequestParser
from prefork.protocol.http.https_redirect import redirect_location, redirect_response
from prefork.protocol.http.response import simple_error_response
from prefork.config.logs import access_log_enabled, error_log, log_access
from prefork.worker.loop_services import LoopServices, Upgrade
from prefork.worker.request_origin import direct_origin, request_origin
from prefork.worker.sender import ResponseSender
from prefork.protocol.resumable import ResumableError
from prefork.staging.body_stream import BodyStream
from prefork.staging.partial_intake import ResumableExchange

# Unread input a connection holds outside a body (pipelined requests waiting their
# turn) before it stops reading: the rest waits in the kernel, and a client that
# sends without reading its answers blocks on its TCP window, not on our memory.
MAX_PIPELINE_BUFFER = 256 * 1024
# How long an errored connection keeps draining the client's bytes after our
# answer, so the client reads the answer instead of a reset (nginx lingering_time).
LINGER_SECONDS = 2.0
# Pipelined requests still answered on one connection once the worker drains.
DRAIN_PIPELINE_MAX = 16
# Receive-buffer fills per wake-up on the body fast path.
DIRECT_READS_PER_WAKEUP = 4
CLIENT_CLOSED_REQUEST = 499  # nginx's access-log status for a client that left first
_EMPTY_HEADERS = Headers([])


class Connection(ConnectionIntake):
    """One client connection, from accept to close.

    Args:
        channel: the accepted socket's channel (the connection becomes its owner).
        peer: the client address.
        server: the local address.
        loop: the worker's services.
        recv_buffer: the worker's reusable receive buffer.
    """

    def __init__(self, channel: Channel, peer: tuple[str, int], server: tuple[str, int],
                 loop: LoopServices, recv_buffer: memoryview) -> None:
        self.channel = channel
        channel.owner = self
        self.peer = peer
        self.server = server
        self._direct = direct_origin(peer, server, channel.secure)
        self._peer_is_proxy = loop.settings.trusted_proxies.trusts(peer[0])
        self.loop = loop
        self.settings = loop.settings
        self._buffer = recv_buffer
        limits = loop.settings.http_limits
        self.parser = RequestParser(limits)
        # A head must fit, however large the limits allow it to be.
        self._input_bound = max(MAX_PIPELINE_BUFFER, limits.max_request_line + limits.max_header_bytes + 8)
        self.stage = Stage.HEAD
        self.body = RequestBody(self.settings, loop.slot, loop.wants_form, loop.write_behind)
        self.sender = ResponseSender(self, channel, loop)
        self.eof = False
        now = time.monotonic()
        self.deadline = now + self.settings.header_timeout
        self.timeout_is_keepalive = False
        self.drain_responses = 0
        self.stream: BodyStream | None = None  # a body the application reads while it arrives
        self._reset_request(now)
        if loop.slot is not None:
            loop.slot.add_connections(http=1)

    # --- request state ------------------------------------------------------
    def _reset_request(self, now: float) -> None:
        self.request: Request | None = None
        self.exchange: ResumableExchange | None = None  # a request to the resumable URL space
        self._end_stream()
        self.origin = self._direct  # who sent the request, once its head says (trusted proxies)
        self.started = now
        self.status = 0
        self.sender.writer.body_sent = 0

    # --- reading ------------------------------------------------------------
    def on_readable(self) -> None:
        """Receive what the socket has and advance the request cycle."""
        in_body = self._in_body()
        if in_body and self.parser.direct_body_remaining():
            self._receive_body_directly()
            return
        room = len(self._buffer)
        if not in_body and self.stage is not Stage.LINGER:
            room = min(room, self._input_bound - self.parser.buffered)
            if room <= 0:
                self.channel.set_reading(False)
                return
        try:
            n = self.channel.recv_into(self._buffer, room)
        except OSError:
            self._connection_lost()
            return
        except ProtocolError as exc:  # a transport's refusal: plain HTTP on a TLS port
            self.fail(exc)
            return
        if n is None:
            return
        slot = self.loop.slot
        if slot is not None and n:
            slot.add_received(n)
        if self.stage is Stage.LINGER:
            if n == 0:
                self.close()
            return
        if n == 0:
            self._peer_closed()
        else:
            self.parser.feed(self._buffer[:n])
        if self.stage is Stage.HEAD or self._in_body():
            self.process()
        if self.parser.buffered >= self._input_bound:
            self.channel.set_reading(False)

    def _receive_body_directly(self) -> None:
        """The fast path for Content-Length bodies: socket -> receive buffer -> sink.

        Only the declared remainder is received, so a pipelined next request stays
        in the socket for the parser. Several reads per wake-up (while the socket
        keeps filling the buffer) save a select() per 256 KiB.
        """
        buffer = self._buffer
        for _ in range(DIRECT_READS_PER_WAKEUP):
            remaining = self.parser.direct_body_remaining()
            if not remaining or not self._in_body():
                break
            want = min(remaining, len(buffer))
            if self.stream is not None:  # never more than the stream has room for
                want = min(want, self.stream.room())
                if not want:
                    self.channel.set_reading(False)  # until the application reads (stream_room)
                    return
            try:
                n = self.channel.recv_into(buffer, want)
            except OSError:
                self._connection_lost()
                return
            if n is None:
                break
            if n == 0:
                self._peer_closed()
                break
            if self.loop.slot is not None:
                self.loop.slot.add_received(n)
            self.parser.consume_body(n)
            try:
                self.body.write(buffer[:n])
            except ProtocolError as exc:
                self.fail(exc)
                return
            if n < want:
                break  # the socket is drained for now
        self.process()

    def _peer_closed(self) -> None:
        """The client sent EOF: stop reading and let the parser see the end."""
        self.eof = True
        self.channel.set_reading(False)
        self.parser.feed(b"")

    def process(self) -> None:
        """Turn buffered bytes into request events until the parser needs more or pauses."""
        try:
            while self.stage is Stage.HEAD or self._in_body():
                event = self.parser.next_event()
                if isinstance(event, Data):
                    self.body.write(event.data)
                    if self.stream is not None and not self.stream.room():
                        self.channel.set_reading(False)  # the application is behind: until stream_room
                        return
                elif isinstance(event, Request):
                    self._on_head(event)
                elif isinstance(event, EndOfMessage):
                    self._on_complete(event.trailers)
                elif isinstance(event, ConnectionClosed):
                    self.close()
                elif event is Signal.NEED_DATA:
                    if self.stage is Stage.HEAD and self.timeout_is_keepalive and self.parser.buffered:
                        self._start_header_timer()
                    return
                else:
                    return
        except IncompleteBody:
            self._client_aborted("closed the connection")
        except ProtocolError as exc:
            self.fail(exc)
        except OSError as exc:  # staging failed (missing directory, EMFILE, EIO, ...)
            self.fail(staging_failed(exc))

    def _connection_lost(self) -> None:
        """The socket failed (reset): an upload in progress was aborted by its client."""
        if self._in_body():
            self._client_aborted("reset the connection")
        else:
            self.close()

    def _client_aborted(self, how: str) -> None:
        """The client went away in the middle of its request body: not a bad request.

        Logged as a client abort, with status 499 in the access log (nginx's "client
        closed request"); nobody is left to answer, and the staged body is discarded.
        """
        head = self.request
        assert head is not None
        declared = "?" if head.content_length is None else str(head.content_length)
        fate = self.body_fate()
        error_log.info("%s:%s %s: the client %s after %d of %s body bytes; %s",
                       self.peer[0], self.peer[1], head, how, self.body.received, declared, fate)
        self.status = CLIENT_CLOSED_REQUEST
        self.log_request()
        self.close()

    def _start_header_timer(self) -> None:
        self.timeout_is_keepalive = False
        self.deadline = time.monotonic() + self.settings.header_timeout

    def _on_head(self, head: Request) -> None:
        self.request = head
        self.started = time.monotonic()
        if self._peer_is_proxy:
            self.origin = request_origin(self._direct, head, self.settings)
        https_port = self.settings.https_redirect_port
        if https_port is not None and not self.channel.secure:
            location = redirect_location(head.headers.get(b"host"), head.target, https_port, self.server[0])
            self._answer_and_close(308, redirect_response(location))
            return
        if head.upgrade is not None and self.loop.wants_upgrade(head):
            self._upgrade(head)
            return
        if self.loop.wants_stream(head):
            self._start_stream(head)
            return
        resumable = self.loop.resumable
        if resumable is not None and resumable.matches(head):
            if not self._begin_resumable(head, resumable):
                return
        else:
            self.body.start(head, self.started)
        self._enter_body(head)

    def _upgrade(self, head: Request) -> None:
        """Hand the request to the protocol it switches to, as an ``Upgrade`` outcome."""
        event = self.parser.next_event()
        complete = isinstance(event, EndOfMessage)
        self.stage = Stage.UPGRADING
        self.deadline = float("inf")
        self.channel.set_reading(False)  # the next bytes are the new protocol's
        self.loop.upgrade(self, Upgrade(head, self.parser.trailing_data if complete else b"", not complete))

    def hand_off(self) -> Channel:
        """The upgrade went through (101 sent next): log it and give up the channel."""
        self.stage = Stage.HANDED_OFF
        self.status = 101
        self.log_request()
        if self.loop.slot is not None:
            self.loop.slot.add_connections(http=-1)
        return self.channel

    def _on_complete(self, trailers: Headers) -> None:
        assert self.request is not None
        if self.parser.state is ParserState.UPGRADED:
            self.parser.decline_upgrade()  # nobody took the upgrade: answer it as plain HTTP
        if self.stream is not None:  # the application has it already: it reads the end now
            self.body.seal()
            if self.stage is Stage.BODY:
                self.stage = Stage.HANDLING
                self.deadline = float("inf")
            return
        body, form = self.body.seal()
        self.stage = Stage.HANDLING
        self.deadline = float("inf")
        origin = self.origin
        request = CompleteRequest(self.request, body, self.body.received, trailers or _EMPTY_HEADERS,
                                  origin.client, origin.server, origin.scheme, form, self.channel.tls_info(),
                                  self.exchange)
        self.loop.dispatch(self, request)

    # --- responding -----------------------------------------------------------
    def on_response(self, result: ResponseStream | BaseException) -> None:
        """The application finished: queue the response head and start the body."""
        if self.stage is Stage.CLOSED or self.stage is Stage.LINGER:  # answered already (a streamed body failed)
            if isinstance(result, ResponseStream):
                result.close()
            self.body.discard()
            return
        if isinstance(result, BaseException):
            self.log_app_error(result)
            result = ResponseStream(500, "Internal Server Error",
                                    [("Content-Type", "text/plain; charset=utf-8")],
                                    [b"Internal Server Error\n"])
        head = self.request
        assert head is not None
        hsts = self.settings.hsts_max_age
        if hsts and self.channel.secure and not any(name.lower() == "strict-transport-security"
                                                    for name, _ in result.headers):
            result.headers.append(("Strict-Transport-Security", f"max-age={hsts}"))
        self.stage = Stage.RESPONDING
        self.deadline = time.monotonic() + self.settings.send_timeout
        self.status = result.status
        # A client that half-closed after pipelining still reads: answer what it already sent.
        keep_alive = not (self.eof and not self.parser.buffered)
        if self.stream is not None and not self.stream.ended:
            keep_alive = False  # answered before its body ended: the rest is not read, the connection goes
        if self.loop.draining:
            # Requests the client pipelined are already here: answer them too, then close.
            self.drain_responses += 1
            keep_alive = keep_alive and bool(self.parser.buffered) and self.drain_responses < DRAIN_PIPELINE_MAX
        self.sender.start(head, result, keep_alive)

    def log_app_error(self, exc: BaseException) -> None:
        """Log what the application raised (with its traceback), naming the request."""
        head = self.request
        target = head.target.decode("latin-1") if head is not None else "?"
        error_log.error("error handling request %s: %s", target, exc, exc_info=exc)

    def response_sent(self, close: bool) -> None:
        """The sender queued all of the response: on to the next request, or close.

        Args:
            close: the connection closes after this response (the writer said so).
        """
        self.log_request()
        body_unread = self._in_body()
        self.body.discard()
        if close and body_unread:  # answered before its streamed body ended: drain it, do not reset
            self.stage = Stage.LINGER
            self.deadline = time.monotonic() + LINGER_SECONDS
            self.channel.set_reading(not self.eof)
            if self.flush():
                self._linger()
            return
        if close:
            if self.flush():
                self.close()
            return  # on_writable closes once the rest is out
        self.flush()  # the last chunk marker may still be queued
        self._next_cycle()

    def log_request(self) -> None:
        """The access log line (and the scoreboard's count) for the current request."""
        head = self.request
        assert head is not None
        if self.loop.slot is not None:
            self.loop.slot.count_request()
        if not access_log_enabled():
            return
        log_access(self.origin.client[0], f"{head} HTTP/{head.http_version.decode('latin-1')}", self.status,
                   self.sender.writer.body_sent,
                   (head.headers.get(b"referer") or b"").decode("latin-1"),
                   (head.headers.get(b"user-agent") or b"").decode("latin-1"),
                   time.monotonic() - self.started)

    def _next_cycle(self) -> None:
        now = time.monotonic()
        self._reset_request(now)
        self.parser.start_next_cycle()
        self.stage = Stage.HEAD
        self.timeout_is_keepalive = True
        self.deadline = now + self.settings.keepalive_timeout
        if self.loop.draining:
            # This response said keep-alive, so its client may be sending the next request
            # right now: stay for the drain's linger (that request gets Connection: close).
            self.deadline = min(self.deadline, now + DRAIN_LINGER)
        if self.parser.buffered or self.eof:
            self.process()  # a pipelined request (or the peer's EOF) is already here
        if self.stage is Stage.HEAD or self.stage is Stage.BODY:
            # Read on only below the bound: reading after every answer, however much is
            # already waiting, would let a client that never reads grow this buffer forever.
            self.channel.set_reading(not self.eof and self.parser.buffered < self._input_bound)

    # --- errors and timeouts ---------------------------------------------------
    def fail(self, exc: ProtocolError, *, response: bytes | None = None) -> None:
        """Answer a protocol error with its status (or ``response``), log it, and close."""
        error_log.info("%s:%s %s -> %d: %s", self.peer[0], self.peer[1], self.request or "-", exc.status, exc)
        if response is None and isinstance(exc, ResumableError):
            response = self.resumable_error_response(exc)
        if self.stage is not Stage.HANDLING:  # a handler still has the body: its end releases it
            self.body.discard()
        if self.stage in (Stage.RESPONDING, Stage.CLOSED, Stage.LINGER):
            self.close()
            return
        self._answer_and_close(exc.status, response or simple_error_response(exc.status, str(exc)))

    def _answer_and_close(self, status: int, response: bytes) -> None:
        """Send ``response`` instead of whatever was queued, then linger and close."""
        self.status = status
        if self.request is not None:
            self.log_request()
        self.channel.discard_output()
        self.channel.queue(response)
        self.stage = Stage.LINGER
        self.deadline = time.monotonic() + LINGER_SECONDS
        self.channel.set_reading(not self.eof)
        if self.flush():
            self._linger()

    def _linger(self) -> None:
        try:
            self.channel.shutdown_write()
        except OSError:
            self.close()
            return
        if self.eof:
            self.close()

    # --- output -------------------------------------------------------------------
    def flush(self) -> bool:
        """Write queued output; True when all of it went out."""
        channel = self.channel
        before = channel.queued
        try:
            drained = channel.flush()
        except OSError:
            self.close()
            return False
        if self.stage is Stage.RESPONDING and (drained or channel.queued < before):
            self.deadline = time.monotonic() + self.settings.send_timeout  # progress: the client reads
        return drained

    def on_writable(self) -> None:
        """The socket has room again."""
        if self.stage in (Stage.CLOSED, Stage.HANDED_OFF):
            return
        if self.stage is Stage.RESPONDING:
            if not self.sender.sending:  # the response is all queued; the connection closes after it
                if self.flush():
                    self.close()
                return
            self.sender.pump()
        elif self.flush() and self.stage is Stage.LINGER:
            self._linger()

    # --- teardown -----------------------------------------------------------------
    def close(self) -> None:
        """Close at once and release everything; idempotent (and a no-op once handed off)."""
        if self.stage is Stage.CLOSED or self.stage is Stage.HANDED_OFF:
            return
        # The application (a handler, or a pull job for the body) may still read the
        # body: it is released when that job comes back (on_response, on_pulled).
        was_handling = self.stage is Stage.HANDLING or self.sender.pulling
        self.stage = Stage.CLOSED
        self.body.end_upload()
        if self.stream is not None:  # a reader waiting for more (maybe the response's own producer) learns
            self.stream.abort(f"the connection closed after {self.stream.received} body bytes")
        if not was_handling:
            self.body.discard()
        self.sender.stop()  # closes the response, unless its pull job will
        self._end_stream()
        self.channel.close()
        self.loop.forget(self)
        if self.loop.slot is not None:
            self.loop.slot.add_connections(http=-1)
