"""A connection's two ways of taking a body that are not staging it whole: streams and resumable uploads.

Strategy: most request bodies are staged before the application runs
(``body_sinks``). Two kinds are not, and what is particular to them lives here,
as a base class of ``Connection`` (like its timeouts, ``connection_timeouts``):

- a streamed body (``[streaming]``, native ``stream=True``): the application is
  called at the head and reads a ``BodyStream`` while the loop fills it; when the
  stream is full the loop stops reading the socket, and the reading thread's
  ``on_room`` (through the loop's ``defer``) starts it again. The response may go
  out while the body still arrives (full duplex), so "reading a body" is a stage
  or a streamed body not yet ended while responding (``_in_body``);
- a request to the resumable-upload URL space: weighed at its head
  (``prefork.staging.partial_intake``); refused unread, or its content goes to its
  upload's sink, after the ``104`` that tells the client where the upload is.
"""

from __future__ import annotations

import time
from typing import IO, TYPE_CHECKING, cast

from prefork.apps.handlers import CompleteRequest
from prefork.config.logs import error_log
from prefork.protocol.http.events import Request
from prefork.protocol.http.headers import Headers
from prefork.protocol.http.response import CONTINUE
from prefork.protocol.resumable import Dialect, ResumableError, error_response
from prefork.staging.body_stream import BodyStream
from prefork.staging.partial_intake import ResumableExchange, ResumableUploads
from prefork.worker.body_sinks import StreamSink
from prefork.worker.connection_timeouts import ConnectionTimeouts
from prefork.worker.stage import Stage

if TYPE_CHECKING:
    from prefork.worker.connection import Connection
    from prefork.worker.request_origin import RequestOrigin

__all__ = ["ConnectionIntake"]

_NO_TRAILERS = Headers([])


class ConnectionIntake(ConnectionTimeouts):
    """Streamed bodies and resumable uploads of a ``Connection`` (its base class)."""

    stream: BodyStream | None
    exchange: ResumableExchange | None
    origin: RequestOrigin
    request: Request | None
    eof: bool
    started: float
    status: int

    if TYPE_CHECKING:  # the cycle's own methods, defined by Connection
        def process(self) -> None: ...
        def flush(self) -> bool: ...
        def log_request(self) -> None: ...

    # --- streamed bodies --------------------------------------------------------------------
    def _in_body(self) -> bool:
        """Whether a request body is being read: in its stage, or a streamed one while the
        response already goes out (full duplex)."""
        if self.stage is Stage.BODY:
            return True
        return self.stream is not None and not self.stream.ended and self.stage is Stage.RESPONDING

    def _enter_body(self, head: Request) -> bool:
        """The body's sink is chosen: answer ``Expect: 100-continue`` when there is a body to
        ask for, and wait for it under the body rate rule. False when the client is gone."""
        if head.expects_continue and head.http_version == b"1.1" and self.body.sink is not None:
            self.channel.queue(CONTINUE)
            if not self.flush() and self.stage is Stage.CLOSED:
                return False
        self.stage = Stage.BODY
        self.deadline = self.started + self.settings.body_rate_window
        return True

    def _start_stream(self, head: Request) -> None:
        """A streaming route: the application is called now and reads the body as it arrives."""
        refusal = self.loop.admit_stream()
        if refusal is not None:
            self.fail(refusal)
            return
        stream = self.stream = BodyStream(self.settings.stream_buffer, length=head.content_length,
                                          on_room=lambda: self.loop.defer(self.stream_room))
        self.body.start(head, self.started, StreamSink(stream))
        if not self._enter_body(head):
            return  # the client is gone already (the close counted the stream out)
        origin = self.origin
        size = head.content_length if head.content_length is not None else -1
        body = cast(IO[bytes], stream)  # a RawIOBase with IO[bytes]'s reading API
        connection = cast("Connection", self)  # this base class is only ever a Connection's
        self.loop.dispatch(connection, CompleteRequest(head, body, size, _NO_TRAILERS, origin.client, origin.server,
                                                       origin.scheme, None, self.channel.tls_info()))

    def body_streaming(self) -> bool:
        """A streamed body still arriving while its response goes out (full duplex)."""
        return self.stream is not None and not self.stream.ended

    def body_paused(self) -> bool:
        """A full stream: the socket is not read until the application reads (``stream_room``)."""
        return self.stream is not None and not self.stream.room()

    def _end_stream(self) -> None:
        if self.stream is not None:
            self.stream = None
            self.loop.stream_done()

    def stream_room(self) -> None:
        """The application read its streamed body down: read on (on the loop thread)."""
        if self._in_body():
            self.body.restart_window(time.monotonic())  # the pause was the application's, not the client's
            self.channel.set_reading(not self.eof)
            self.process()

    def body_fate(self) -> str:
        """What became of a body whose client went away, for the log line."""
        if self.stream is not None:
            return "its handler reads ClientDisconnected"
        if self.exchange is not None and self.exchange.sink is not None:
            return "kept for resumption"
        return "upload discarded"

    # --- resumable uploads ------------------------------------------------------------------
    def _begin_resumable(self, head: Request, resumable: ResumableUploads) -> bool:
        """Weigh a request to the resumable URL space at its head; False when it was refused."""
        exchange = self.exchange = resumable.begin(head, self.origin.client[0])
        if exchange.error is not None and (head.chunked or head.content_length):
            self.fail(exchange.error)  # refused before its content: answered unread
            return False
        self.body.start(head, self.started, exchange.sink)  # first: a close from here on releases the upload
        if exchange.interim is not None:  # the client learns the upload's URL before it sends the content
            self.channel.queue(exchange.interim)
            if not self.flush() and self.stage is Stage.CLOSED:
                return False
        return True

    def resumable_error_response(self, error: ResumableError) -> bytes:
        """The whole response for a refusal of a resumable request, in its dialect."""
        exchange = self.exchange
        request = exchange.request if exchange is not None else None
        return error_response(error, exchange.dialect if exchange is not None else Dialect.DRAFT,
                              request.interop_version if request is not None else None, close=True)

    def superseded(self) -> None:
        """A newer request for the resumable upload this one appends to asked it to let go
        (draft §4.6: the client has given up on this one): what arrived is kept, and the
        connection closes."""
        error_log.info("%s:%s %s: a newer request for this upload took over after %d body bytes; closing",
                       self.peer[0], self.peer[1], self.request, self.body.received)
        self.status = 409
        self.log_request()
        self.close()
