"""Per-socket glue: bytes from the socket into the parser, bodies into spools,
complete requests to the worker, responses back out without blocking.

Strategy: a ``Connection`` is driven entirely by its worker's event loop: it is
told when its socket is readable or writable, when its application call has
finished, and when a second has passed (timeouts). It never blocks and never
runs application code: handlers and response iterators run in the worker's
handler pool, which hands results back through the loop. Output is a queue of
buffers written with ``sendmsg`` (or ``sendfile`` for file bodies); the next
part of a streamed response is only produced once the queue has drained below a
low-water mark, so a slow reader costs a bounded buffer, not a whole response.
This is the one module that holds both a socket and a parser.
"""

from __future__ import annotations

import enum
import io
import os
import socket
import time
from collections.abc import Callable
from typing import IO

from prefork.body_sinks import open_sink
from prefork.diskspace import storage_error
from prefork.errors import IncompleteBody, ProtocolError, RequestTimeout
from prefork.handlers import CompleteRequest, ResponseStream
from prefork.http.events import ConnectionClosed, Data, EndOfMessage, Request, Signal
from prefork.http.headers import Headers
from prefork.http.parser import ParserState, RequestParser
from prefork.http.response import frame_body, frame_response, has_no_body, simple_error_response
from prefork.logs import access_log_enabled, error_log, log_access
from prefork.loop_services import LoopServices
from prefork.output import OutputQueue
from prefork.forms import FormSink
from prefork.spool import BodySpool

# Output below this many bytes asks the handler pool for more of a streamed body;
# above HIGH_WATER no more is queued. 256 KiB keeps a socket send buffer busy.
LOW_WATER = 64 * 1024
HIGH_WATER = 256 * 1024
# Unread input a connection holds outside a body (pipelined requests waiting their
# turn) before it stops reading: the rest waits in the kernel, and a client that
# sends without reading its answers blocks on its TCP window, not on our memory.
MAX_PIPELINE_BUFFER = 256 * 1024
# How long an errored connection keeps draining the client's bytes after our
# answer, so the client reads the answer instead of a reset (nginx lingering_time).
LINGER_SECONDS = 2.0
# How long a draining worker keeps an idle connection open for a request that may
# be on its way (the reload and recycle race of RFC 9112 §9.3.1); short, so that a
# stop is quick even with a long keepalive_timeout.
DRAIN_LINGER = 2.0
# Pipelined requests still answered on one connection once the worker drains.
DRAIN_PIPELINE_MAX = 16
# Receive-buffer fills per wake-up on the body fast path.
DIRECT_READS_PER_WAKEUP = 4
CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
CLIENT_CLOSED_REQUEST = 499  # nginx's access-log status for a client that left first
_EMPTY_HEADERS = Headers([])


class Stage(enum.Enum):
    """Where a connection is in its request cycle."""

    HEAD = 1        # waiting for (the rest of) a request head
    BODY = 2        # streaming a body into its sink
    HANDLING = 3    # the application is running
    RESPONDING = 4  # writing the response
    LINGER = 5      # answered an error; draining the client's bytes before closing
    HANDED_OFF = 6  # the socket belongs to another protocol now (WebSocket)
    CLOSED = 7


class Connection:
    """One client connection, from accept to close.

    Args:
        sock: the accepted, non-blocking socket.
        peer: the client address.
        server: the local address.
        loop: the worker's services.
        recv_buffer: the worker's reusable receive buffer.
    """

    def __init__(self, sock: socket.socket, peer: tuple[str, int], server: tuple[str, int],
                 loop: LoopServices, recv_buffer: memoryview) -> None:
        self.sock = sock
        self.peer = peer
        self.server = server
        self.loop = loop
        self.settings = loop.settings
        self._buffer = recv_buffer
        limits = loop.settings.http_limits
        self.parser = RequestParser(limits)
        # A head must fit, however large the limits allow it to be.
        self._input_bound = max(MAX_PIPELINE_BUFFER, limits.max_request_line + limits.max_header_bytes + 8)
        self.stage = Stage.HEAD
        self.out = OutputQueue()
        self.eof = False
        self.close_after_write = False
        self.reading = True
        self.writing = False
        now = time.monotonic()
        self.deadline = now + self.settings.header_timeout
        self.timeout_is_keepalive = False
        self.drain_responses = 0
        self._reset_request(now)
        self.upgrade_handler: Callable[[Connection, Request], bool] | None = None

    # --- request state ------------------------------------------------------
    def _reset_request(self, now: float) -> None:
        self.request: Request | None = None
        self.sink: BodySpool | FormSink | None = None
        self.body_received = 0
        self.started = now
        self.response: ResponseStream | None = None
        self.status = 0
        self.sent_body = 0
        self.chunked = False
        self.head_only = False
        self.remaining: int | None = None
        self.pulling = False
        self._pump_scheduled = False
        self.window_start = now
        self.window_bytes = 0
        self.uploading = False

    def fileno(self) -> int:
        """The socket's file descriptor."""
        return self.sock.fileno()

    # --- reading ------------------------------------------------------------
    def on_readable(self) -> None:
        """Receive what the socket has and advance the request cycle."""
        if self.stage is Stage.BODY and self.parser.direct_body_remaining():
            self._receive_body_directly()
            return
        room = len(self._buffer)
        if self.stage is not Stage.BODY and self.stage is not Stage.LINGER:
            room = min(room, self._input_bound - self.parser.buffered)
            if room <= 0:
                self._set_reading(False)
                return
        try:
            n = self.sock.recv_into(self._buffer, room)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._connection_lost()
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
        if self.stage in (Stage.HEAD, Stage.BODY):
            self.process()
        if self.parser.buffered >= self._input_bound:
            self._set_reading(False)

    def _receive_body_directly(self) -> None:
        """The fast path for Content-Length bodies: socket -> receive buffer -> sink.

        Only the declared remainder is received, so a pipelined next request stays
        in the socket for the parser. Several reads per wake-up (while the socket
        keeps filling the buffer) save a select() per 256 KiB.
        """
        buffer = self._buffer
        for _ in range(DIRECT_READS_PER_WAKEUP):
            remaining = self.parser.direct_body_remaining()
            if not remaining or self.stage is not Stage.BODY:
                break
            try:
                n = self.sock.recv_into(buffer, min(remaining, len(buffer)))
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self._connection_lost()
                return
            if n == 0:
                self._peer_closed()
                break
            if self.loop.slot is not None:
                self.loop.slot.add_received(n)
            self.parser.consume_body(n)
            try:
                self._on_body(buffer[:n])
            except ProtocolError as exc:
                self.fail(exc)
                return
            except OSError as exc:
                self.fail(_storage_error(exc))
                return
            if n < len(buffer):
                break  # the socket is drained for now
        self.process()

    def _peer_closed(self) -> None:
        """The client sent EOF: stop reading and let the parser see the end."""
        self.eof = True
        self._set_reading(False)
        self.parser.feed(b"")

    def process(self) -> None:
        """Turn buffered bytes into request events until the parser needs more or pauses."""
        try:
            while self.stage in (Stage.HEAD, Stage.BODY):
                event = self.parser.next_event()
                if isinstance(event, Data):
                    self._on_body(event.data)
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
            self.fail(_storage_error(exc))

    def _connection_lost(self) -> None:
        """The socket failed (reset): an upload in progress was aborted by its client."""
        if self.stage is Stage.BODY:
            self._client_aborted("reset the connection")
        else:
            self.abort()

    def _client_aborted(self, how: str) -> None:
        """The client went away in the middle of its request body: not a bad request.

        Logged as a client abort, with status 499 in the access log (nginx's "client
        closed request"); nobody is left to answer, and the staged body is discarded.
        """
        head = self.request
        assert head is not None
        declared = "?" if head.content_length is None else str(head.content_length)
        error_log.info("%s:%s %s: the client %s after %d of %s body bytes; upload discarded",
                       self.peer[0], self.peer[1], head, how, self.body_received, declared)
        self.status = CLIENT_CLOSED_REQUEST
        self.log_request()
        self.close()

    def _start_header_timer(self) -> None:
        self.timeout_is_keepalive = False
        self.deadline = time.monotonic() + self.settings.header_timeout

    def _on_head(self, head: Request) -> None:
        self.request = head
        self.started = time.monotonic()
        if head.upgrade is not None and self.upgrade_handler is not None:
            if self.upgrade_handler(self, head):
                return
        declared = head.content_length
        has_body = head.chunked or bool(declared)
        if has_body:
            self.sink = open_sink(head, self.settings, self.loop.slot, self.loop.wants_form(head),
                                  self.loop.write_behind)
            if declared is None or declared > self.settings.memory_threshold:
                self._track_upload(head, declared)
            if head.expects_continue and head.http_version == b"1.1":
                self.send(CONTINUE)
        self.stage = Stage.BODY
        self.deadline = self.started + self.settings.body_rate_window
        self.window_start = self.started

    def _track_upload(self, head: Request, declared: int | None) -> None:
        if self.loop.slot is not None:
            self.uploading = True
            self.loop.slot.upload_started(id(self), head.target.decode("latin-1"), declared)

    def _on_body(self, data: bytes | memoryview) -> None:
        assert self.sink is not None
        self.sink.write(data)
        self.body_received += len(data)
        self.window_bytes += len(data)
        if self.uploading and self.loop.slot is not None:
            self.loop.slot.upload_progress(id(self), self.body_received)

    def _on_complete(self, trailers: Headers) -> None:
        assert self.request is not None
        self._end_upload()
        if self.parser.state is ParserState.UPGRADED:
            self.parser.decline_upgrade()  # nobody took the upgrade: answer it as plain HTTP
        body: IO[bytes] = io.BytesIO()
        form = None
        if isinstance(self.sink, FormSink):
            form = self.sink.seal()
        elif self.sink is not None:
            self.sink.seal()
            body = self.sink  # type: ignore[assignment]
        self.stage = Stage.HANDLING
        self.deadline = float("inf")
        request = CompleteRequest(self.request, body, self.body_received, trailers or _EMPTY_HEADERS,
                                  self.peer, self.server, self.settings.url_scheme, form)
        self.loop.dispatch(self, request)

    def _end_upload(self) -> None:
        if self.uploading and self.loop.slot is not None:
            self.loop.slot.upload_finished(id(self))
        self.uploading = False

    # --- responding -----------------------------------------------------------
    def on_response(self, result: ResponseStream | BaseException) -> None:
        """The application finished: queue the response head and start the body."""
        if self.stage is Stage.CLOSED:
            if isinstance(result, ResponseStream):
                result.close()
            self._discard_body()
            return
        if isinstance(result, BaseException):
            self._log_app_error(result)
            result = ResponseStream(500, "Internal Server Error",
                                    [("Content-Type", "text/plain; charset=utf-8")],
                                    [b"Internal Server Error\n"])
        self.response = result
        self.stage = Stage.RESPONDING
        self.deadline = time.monotonic() + self.settings.send_timeout
        self.send(self._response_head(result), flush=False)
        self._pump()

    def on_handler_timeout(self, response: ResponseStream, running: bool) -> Callable[[], None] | None:
        """The handler overran ``handler_timeout``: answer with ``response`` (504).

        Args:
            response: the answer.
            running: a thread still runs the handler: it may be reading the body.

        Returns:
            The body's release, for when that thread is done with it (None: nothing kept).
        """
        release = None
        if running and self.sink is not None:
            release, self.sink = self.sink.close, None
        self.on_response(response)
        return release

    def _log_app_error(self, exc: BaseException) -> None:
        head = self.request
        target = head.target.decode("latin-1") if head is not None else "?"
        error_log.error("error handling request %s: %s", target, exc, exc_info=exc)

    def _response_head(self, resp: ResponseStream) -> bytes:
        head = self.request
        assert head is not None
        self.status = resp.status
        # A client that half-closed after pipelining still reads: answer what it already sent.
        keep_alive = head.keep_alive and not resp.close_connection and not (self.eof and not self.parser.buffered)
        if self.loop.draining:
            # Requests the client pipelined are already here: answer them too, then close.
            self.drain_responses += 1
            keep_alive = keep_alive and bool(self.parser.buffered) and self.drain_responses < DRAIN_PIPELINE_MAX
        known = (resp.file.count if resp.file is not None
                 else sum(len(c) for c in resp.chunks) if resp.rest is None else None)
        framing = frame_response(head.method, head.http_version, keep_alive, resp.status, resp.reason,
                                 resp.headers, resp.content_length, known)
        self.head_only = has_no_body(head.method, resp.status)
        self.remaining, self.chunked = framing.body_length, framing.chunked
        if framing.close:
            self.close_after_write = True
        return framing.head

    def _pump(self) -> None:
        """Move response body from the stream to the socket as far as it will go."""
        resp = self.response
        while resp is not None and self.stage is Stage.RESPONDING:
            if resp.chunks:
                self._queue_body(resp.chunks)
                resp.chunks = []
            if resp.rest is not None and self.head_only and not self.pulling:
                resp.rest = None  # HEAD/204/304: the body is never sent, so never produce it
                resp.close()
            if resp.rest is not None and not self.pulling and self.out.size < LOW_WATER:
                self.pulling = True
                self.loop.pull(self, resp, HIGH_WATER)
            if not self._flush():
                return
            if resp.chunks:
                continue
            if resp.rest is not None and not self.pulling:
                continue  # the queue drained in one write: ask the stream for more now
            if resp.file is not None and resp.file.count > 0 and not self.head_only:
                if not self._sendfile(resp):
                    return
                continue
            if resp.rest is None and not self.pulling:
                self._finish_response()
            return

    def on_chunk(self, chunk: bytes) -> None:
        """A pull job produced a chunk (loop thread): queue it for the client now."""
        if self.stage is not Stage.RESPONDING or self.response is None:
            return
        self.response.chunks.append(chunk)
        if not self._pump_scheduled:
            # Chunks that arrive together go out in one write: pump once they are all in.
            self._pump_scheduled = True
            self.loop.defer(self._scheduled_pump)

    def _scheduled_pump(self) -> None:
        self._pump_scheduled = False
        if self.stage is Stage.RESPONDING:
            self._pump()

    def on_pulled(self, error: BaseException | None) -> None:
        """A pull job returned: more chunks are ready, or the iterator failed."""
        self.pulling = False
        if self.stage is not Stage.RESPONDING:
            if self.response is not None:
                self.response.close()
            self._discard_body()
            return
        if error is not None:
            self._log_app_error(error)
            self.abort()
            return
        self._pump()

    def _queue_body(self, chunks: list[bytes]) -> None:
        if self.head_only:
            return
        pieces, size, self.remaining = frame_body(chunks, self.remaining, self.chunked)
        self.sent_body += size
        for piece in pieces:
            self.send(piece, flush=False)

    def _sendfile(self, resp: ResponseStream) -> bool:
        body = resp.file
        assert body is not None
        try:
            sent = os.sendfile(self.sock.fileno(), body.file.fileno(), body.offset, min(body.count, 1 << 30))
        except (BlockingIOError, InterruptedError):
            self._set_writing(True)
            return False
        except OSError:
            self.abort()
            return False
        if sent == 0:  # the file shrank under us: the promised length cannot be kept
            self.abort()
            return False
        body.offset += sent
        body.count -= sent
        self.sent_body += sent
        if self.remaining is not None:
            self.remaining -= sent
        return True

    def _finish_response(self) -> None:
        resp = self.response
        assert resp is not None and self.request is not None
        if self.chunked:
            self.send(b"0\r\n\r\n", flush=False)
        if self.remaining:  # the app promised more bytes than it produced
            error_log.error("response to %s ended %d bytes short of its Content-Length; closing",
                            self.request.target.decode("latin-1"), self.remaining)
            self.close_after_write = True
        resp.close()
        self.log_request()
        self._discard_body()
        if self.close_after_write:
            self.response = None
            if self._flush():
                self.close()
            return
        self._flush()  # the last chunk marker is still queued
        self._next_cycle()

    def log_request(self) -> None:
        head = self.request
        assert head is not None
        if self.loop.slot is not None:
            self.loop.slot.count_request()
        if not access_log_enabled():
            return
        log_access(self.peer[0], f"{head} HTTP/{head.http_version.decode('latin-1')}", self.status, self.sent_body,
                   (head.headers.get(b"referer") or b"").decode("latin-1"),
                   (head.headers.get(b"user-agent") or b"").decode("latin-1"),
                   time.monotonic() - self.started)

    def _discard_body(self) -> None:
        self._end_upload()
        if self.sink is not None:
            self.sink.close()
            self.sink = None

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
            self._set_reading(not self.eof and self.parser.buffered < self._input_bound)

    # --- errors and timeouts ---------------------------------------------------
    def fail(self, exc: ProtocolError, *, response: bytes | None = None) -> None:
        """Answer a protocol error with its status (or ``response``), log it, and close."""
        head = self.request
        what = head or "-"
        error_log.info("%s:%s %s -> %d: %s", self.peer[0], self.peer[1], what, exc.status, exc)
        self._discard_body()
        if self.stage in (Stage.RESPONDING, Stage.CLOSED, Stage.LINGER):
            self.abort()
            return
        self.status = exc.status
        if head is not None:
            self.log_request()
        self.out.clear()
        self.send(response or simple_error_response(exc.status, str(exc)), flush=False)
        self.stage = Stage.LINGER
        self.deadline = time.monotonic() + LINGER_SECONDS
        self._set_reading(not self.eof)
        if self._flush():
            self._linger()

    def _linger(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            self.close()
            return
        if self.eof:
            self.close()

    def check_timeouts(self, now: float) -> None:
        """Apply header, keep-alive, body-rate and linger timeouts."""
        if now < self.deadline:
            return
        if self.stage is Stage.HEAD:
            if self.timeout_is_keepalive or (self.loop.draining and not self.parser.buffered):
                self._close_idle()
            else:
                self.fail(RequestTimeout(
                    f"request head not complete within {self.settings.header_timeout:g} s"))
        elif self.stage is Stage.BODY:
            self._check_body_rate(now)
        elif self.stage is Stage.LINGER:
            self.close()
        elif self.stage is Stage.RESPONDING:
            if not self.out:  # waiting for the application, not for the client
                self.deadline = now + self.settings.send_timeout
                return
            error_log.info("%s:%s: no response bytes accepted for %g s; closing",
                           self.peer[0], self.peer[1], self.settings.send_timeout)
            self.abort()

    def _check_body_rate(self, now: float) -> None:
        window = now - self.window_start
        rate = self.window_bytes / window if window > 0 else 0.0
        if self.settings.body_min_rate and rate < self.settings.body_min_rate:
            self.fail(RequestTimeout(
                f"request body arrived at {rate:.0f} bytes/s over {window:.1f} s, "
                f"below the minimum of {self.settings.body_min_rate} bytes/s"))
            return
        self.window_start, self.window_bytes = now, 0
        self.deadline = now + self.settings.body_rate_window

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

    # --- output -------------------------------------------------------------------
    def send(self, data: bytes | memoryview, flush: bool = True) -> None:
        """Queue bytes for the client, and try to write them now unless told not to."""
        self.out.append(data)
        if flush:
            self._flush()

    def _flush(self) -> bool:
        """Write queued output; True when all of it went out."""
        before = self.out.size
        try:
            drained = self.out.write_to(self.sock)
        except OSError:
            self.abort()
            return False
        self._set_writing(not drained)
        if self.stage is Stage.RESPONDING and (drained or self.out.size < before):
            self.deadline = time.monotonic() + self.settings.send_timeout  # progress: the client reads
        return drained

    def on_writable(self) -> None:
        """The socket has room again."""
        if self.stage in (Stage.CLOSED, Stage.HANDED_OFF):
            return
        if self.stage is Stage.RESPONDING:
            if self.response is None:
                if self._flush():
                    self.close()
                return
            self._pump()
        elif self._flush() and self.stage is Stage.LINGER:
            self._linger()

    def _set_reading(self, on: bool) -> None:
        if on != self.reading and self.stage is not Stage.CLOSED:
            self.reading = on
            self.loop.watch(self, self.reading, self.writing)

    def _set_writing(self, on: bool) -> None:
        if on != self.writing and self.stage is not Stage.CLOSED:
            self.writing = on
            self.loop.watch(self, self.reading, self.writing)

    # --- teardown -----------------------------------------------------------------
    def abort(self) -> None:
        """Close at once (peer gone, or a response cannot be completed)."""
        self.close()

    def close(self) -> None:
        """Release everything the connection holds; idempotent."""
        if self.stage is Stage.CLOSED and self.sock.fileno() < 0:
            return
        was_handling = self.stage is Stage.HANDLING or self.pulling
        self.stage = Stage.CLOSED
        self._end_upload()
        if not was_handling:
            self._discard_body()
            if self.response is not None:
                self.response.close()
                self.response = None
        self.out.clear()
        self.loop.forget(self)
        try:
            self.sock.close()
        except OSError:
            pass

    def detach(self) -> socket.socket:
        """Hand the socket to another protocol (after a WebSocket upgrade)."""
        self.stage = Stage.HANDED_OFF
        return self.sock


def _storage_error(exc: OSError) -> ProtocolError:
    error_log.error("staging a request body failed: %s", exc)
    return storage_error(exc)
