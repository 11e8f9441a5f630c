"""Running the application for a complete request, in the handler pool or inline.

Strategy: the worker's loop hands each complete request to ``AppRunner.run``.
With handler threads, a pool job calls the app; a complete response comes
back through the loop's wakeup, while a streamed one is produced by that same
thread for as long as it lasts (``StreamProducer``: frameworks bind request
state to the thread that called them). With ``threads = 0`` the app runs
inline on the loop. ``expire`` enforces ``handler_timeout``: a handler that
has not started its response in time gets its client a 504 and its thread's
stack logged; the caller recycles the worker, since a thread cannot be stopped.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

from prefork.worker.connection import Connection
from prefork.apps.handlers import Application, CompleteRequest, ResponseStream
from prefork.config.logs import error_log
from prefork.staging.body_stream import BodyStream
from prefork.worker.pool import HandlerPool, Job, StreamProducer, Wakeup

# What a handler job returns when its thread went on to stream the body itself.
_STREAMING = object()


class AppRunner:
    """Calls the application and carries its response back to the connection.

    Args:
        app: the loaded application.
        pool: the handler threads, or None to run handlers inline (``threads = 0``).
        wakeup: the loop's wakeup (results and chunks come back through it).
        handler_timeout: seconds a handler may take to start its response; 0 = no limit.
    """

    def __init__(self, app: Application, pool: HandlerPool | None, wakeup: Wakeup, handler_timeout: float) -> None:
        self.app = app
        self.pool = pool
        self.wakeup = wakeup
        self.handler_timeout = handler_timeout

    def run(self, conn: Connection, request: CompleteRequest) -> None:
        """Run the application for ``request``; the answer goes to ``conn.on_response``."""
        if self.pool is None:
            try:
                result: ResponseStream | BaseException = self.app(request)
            except Exception as exc:
                result = exc
            conn.on_response(result)
            return
        # A streaming handler reads its body for as long as it lasts: the body rate rules bound it, not
        # handler_timeout.
        timed = self.handler_timeout and not isinstance(request.body, BodyStream)
        on_timeout = functools.partial(self._answer_timeout, conn) if timed else None
        self.pool.submit(functools.partial(self._handle, request, conn), functools.partial(self._handled, conn),
                         label=request.head, on_timeout=on_timeout)

    def _answer_timeout(self, conn: Connection, running: bool) -> Callable[[], None] | None:
        body = f"Gateway Timeout: the application did not answer within {self.handler_timeout:g} s.\n".encode()
        response = ResponseStream(504, "Gateway Timeout", [("Content-Type", "text/plain; charset=utf-8")], [body],
                                  close_connection=True)
        # A thread still running the handler may be reading the body: it is released when
        # that thread is done with it, not now.
        release = conn.body.let_go() if running else None
        conn.on_response(response)
        return release

    def _handle(self, request: CompleteRequest, conn: Connection, job: Job) -> object:
        """Call the application (pool thread); a streamed body goes on being produced here."""
        response = self.app(request)
        if response.rest is None:
            return response
        assert self.pool is not None
        producer = StreamProducer(response, self.pool)
        response.producer = producer
        defer = self.wakeup.defer
        defer(self._stream_started, job, conn, response)
        try:
            producer.serve(emit=lambda chunk: defer(conn.sender.on_chunk, chunk),
                           pulled=lambda error: defer(conn.sender.on_pulled, error))
        except BaseException as exc:  # from the app's close(): the response is the loop's by now
            error_log.error("closing the body of %s failed: %r", job.label, exc, exc_info=exc)
        return _STREAMING

    def _stream_started(self, job: Job, conn: Connection, response: ResponseStream) -> None:
        if job.abandoned:  # answered with 504 already: the producing thread closes the body
            response.close()
            return
        job.on_timeout = None  # the response has started: a stream may last as long as it likes
        conn.on_response(response)

    def _handled(self, conn: Connection, result: object) -> None:
        if result is not _STREAMING:
            conn.on_response(result)  # type: ignore[arg-type]

    def pull(self, conn: Connection, stream: ResponseStream, budget: int) -> None:
        """Have more of a streamed body produced, by the thread that started it."""
        if stream.producer is not None:
            stream.producer.request(budget)
            return
        # Inline mode (threads = 0): produce here, and finish on the next loop turn
        # rather than by recursing into the connection.
        try:
            stream.pull(budget, emit=lambda chunk: self.wakeup.defer(conn.sender.on_chunk, chunk))
            self.wakeup.defer(conn.sender.on_pulled, None)
        except Exception as exc:
            self.wakeup.defer(conn.sender.on_pulled, exc)

    def expire(self, now: float) -> bool:
        """Answer requests whose handler has hung (or never got a thread), with 504.

        A hung handler is left to its thread (its result is dropped if it ever
        ends, and the request's body is released only then) and the pool starts
        another thread in its place. A request that waited in the queue for that
        long is answered too, and never run.

        Returns:
            True when a handler thread is stuck: the worker should be replaced.
        """
        timeout = self.handler_timeout
        if self.pool is None or not timeout:
            return False
        stuck = False
        for job in self.pool.overdue(now, timeout):
            waited = now - (job.started or job.submitted)
            running = self.pool.abandon(job)
            if running:
                error_log.error("worker %d: the handler for %s has run for %.1f s (handler_timeout %g s); "
                                "answering 504 and recycling the worker. Its thread's stack:\n%s",
                                os.getpid(), job.label, waited, timeout, job.stack())
            else:
                error_log.error("worker %d: %s waited %.1f s for a handler thread (handler_timeout %g s); "
                                "answering 504", os.getpid(), job.label, waited, timeout)
            if job.on_timeout is not None:
                job.cleanup = job.on_timeout(running)
            stuck = stuck or running
        return stuck
