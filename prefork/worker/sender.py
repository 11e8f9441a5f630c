"""Sending a connection's responses: from the application's stream to the channel.

Strategy: the application answers with a ``ResponseStream`` — the chunks it
has so far, and an iterator for the rest or a file. ``ResponseSender`` frames
it with the connection's ``ResponseWriter`` and queues it on the ``Channel``;
the next part of a streamed body is asked of the handler pool only once the
queue has drained below ``LOW_WATER``, so a slow reader costs a bounded
buffer, not a whole response. File bodies go out with ``sendfile``. Chunks
that arrive together from the pool go out in one write. The sender runs on
the loop thread and never runs application code itself (a body's close hook
aside, as before). The connection keeps the policy — when to keep the
connection alive, what the access log says, when to close.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prefork.worker.channel import Channel
from prefork.apps.handlers import ResponseStream
from prefork.protocol.http.events import Request
from prefork.protocol.http.response import ResponseWriter
from prefork.config.logs import error_log
from prefork.worker.loop_services import LoopServices

if TYPE_CHECKING:
    from prefork.worker.connection import Connection

# Output below this many bytes asks the handler pool for more of a streamed body;
# above HIGH_WATER no more is queued. 256 KiB keeps a socket send buffer busy.
LOW_WATER = 64 * 1024
HIGH_WATER = 256 * 1024


class ResponseSender:
    """Moves one response after another of a connection onto its channel.

    Args:
        conn: the connection (told when a response is done; it flushes and closes).
        channel: the connection's channel.
        loop: the worker's services (body pulls, deferred pumps).

    Attributes:
        writer: the connection's response framing.
        response: the response being sent, or None.
        sending: a response is being sent (from ``start`` to its end or the close).
        pulling: a pull job is producing more of the body in the pool.
    """

    __slots__ = ("_conn", "_channel", "_loop", "writer", "response", "sending", "pulling", "_pump_scheduled")

    def __init__(self, conn: Connection, channel: Channel, loop: LoopServices) -> None:
        self._conn = conn
        self._channel = channel
        self._loop = loop
        self.writer = ResponseWriter()
        self.response: ResponseStream | None = None
        self.sending = False
        self.pulling = False
        self._pump_scheduled = False

    def start(self, head: Request, response: ResponseStream, may_keep_alive: bool) -> None:
        """Queue the head of ``response`` to ``head`` and send as much as goes."""
        self.response = response
        self.sending = True
        known = (response.file.count if response.file is not None
                 else sum(len(c) for c in response.chunks) if response.rest is None else None)
        self._channel.queue(self.writer.start(head, response, known, may_keep_alive))
        self.pump()

    def pump(self) -> None:
        """Move response body from the stream to the socket as far as it will go."""
        resp = self.response
        writer = self.writer
        channel = self._channel
        while resp is not None and self.sending:
            if resp.chunks:
                for piece in writer.frame(resp.chunks):
                    channel.queue(piece)
                resp.chunks = []
            if resp.rest is not None and writer.no_body and not self.pulling:
                resp.rest = None  # HEAD/204/304: the body is never sent, so never produce it
                resp.close()
            if resp.rest is not None and not self.pulling and channel.queued < LOW_WATER:
                self.pulling = True
                self._loop.pull(self._conn, resp, HIGH_WATER)
            if not self._conn.flush():
                return
            if resp.chunks:
                continue
            if resp.rest is not None and not self.pulling:
                continue  # the queue drained in one write: ask the stream for more now
            if resp.file is not None and resp.file.count > 0 and not writer.no_body:
                if not self._sendfile(resp):
                    return
                continue
            if resp.rest is None and not self.pulling:
                self._finish(resp)
            return

    def on_chunk(self, chunk: bytes) -> None:
        """A pull job produced a chunk (loop thread): queue it for the client now."""
        if not self.sending or self.response is None:
            return
        self.response.chunks.append(chunk)
        if not self._pump_scheduled:
            # Chunks that arrive together go out in one write: pump once they are all in.
            self._pump_scheduled = True
            self._loop.defer(self._scheduled_pump)

    def _scheduled_pump(self) -> None:
        self._pump_scheduled = False
        if self.sending:
            self.pump()

    def on_pulled(self, error: BaseException | None) -> None:
        """A pull job returned: more chunks are ready, or the iterator failed."""
        self.pulling = False
        if not self.sending:  # the connection closed meanwhile: the body was waiting for this job
            if self.response is not None:
                self.response.close()
            self._conn.body.discard()
            return
        if error is not None:
            self._conn.log_app_error(error)
            self._conn.close()
            return
        self.pump()

    def _sendfile(self, resp: ResponseStream) -> bool:
        body = resp.file
        assert body is not None
        try:
            sent = self._channel.sendfile(body.file.fileno(), body.offset, min(body.count, 1 << 30))
        except OSError:
            self._conn.close()
            return False
        if sent is None:
            return False  # the socket is full: on_writable goes on
        if sent == 0:  # the file shrank under us: the promised length cannot be kept
            self._conn.close()
            return False
        body.offset += sent
        body.count -= sent
        self.writer.sent_file(sent)
        return True

    def _finish(self, resp: ResponseStream) -> None:
        writer = self.writer
        self._channel.queue(writer.end())
        if writer.remaining:  # the app promised more bytes than it produced: the writer closes
            head = self._conn.request
            error_log.error("response to %s ended %d bytes short of its Content-Length; closing",
                            head.target.decode("latin-1") if head is not None else "?", writer.remaining)
        resp.close()
        self.response = None
        self.sending = False
        self._conn.response_sent(writer.close)

    def stop(self) -> bool:
        """The connection closes: send no more.

        Returns:
            True when a pull job still holds the response (it closes it, and the
            request's body must wait for it too); else the response is closed here.
        """
        self.sending = False
        if self.pulling:
            return True
        if self.response is not None:
            self.response.close()
            self.response = None
        return False
