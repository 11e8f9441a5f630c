"""Handler threads: where application code runs, and how its results reach the loop.

Strategy: the event loop never runs application code (unless ``threads = 0``).
It gives each piece of work to a ``HandlerPool`` as a ``Job``; a thread runs it
and hands the result back through ``Wakeup`` — a queue plus a pipe byte the
selector watches (gunicorn gthread's PollableMethodQueue) — so pool threads
never touch the selector or a socket.

A streamed response body is produced by the thread that called the
application, for as long as the body lasts (``StreamProducer``): frameworks
bind request state to the thread or to its ``contextvars`` context (Flask's
``stream_with_context``, Django's thread-local connections), so a generator
started on one thread must not resume on another. That thread waits, without
holding anything the loop needs, until the loop asks for the next batch.

The pool knows which job each thread runs and since when, so the worker can
answer a request whose handler has hung (``handler_timeout``) and name it.
"""

from __future__ import annotations

import os
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefork.apps.handlers import ResponseStream
from prefork.config.logs import error_log


# A producing thread that has waited this long (seconds) for its client to read is
# parked: the pool starts another thread so that handlers keep running meanwhile.
PARK_AFTER = 0.1


class Wakeup:
    """Runs callables on the loop thread, deferred from other threads or signal handlers.

    Created on the loop thread. What the loop thread itself defers while it runs
    the pending callables needs no pipe byte: the same run picks it up. Without
    that shortcut each WebSocket message cost the loop a second wake-up (the burst
    flush that ``send_message`` defers): a pipe write, an epoll_wait and a read.
    """

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._queue: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]]] = queue.SimpleQueue()
        self._signalled = False
        self._loop_thread = threading.get_ident()
        self._running = False  # run_pending is draining the queue (loop thread)

    def fileno(self) -> int:
        """The pipe end the selector watches."""
        return self._read_fd

    def defer(self, fn: Callable[..., None], *args: Any) -> None:
        """Queue ``fn(*args)`` for the loop thread; thread-safe and signal-safe."""
        self._queue.put((fn, args))
        if self._running and threading.get_ident() == self._loop_thread:
            return  # run_pending is draining on this thread: it gets there without a wake-up
        if not self._signalled:
            self._signal()

    def _signal(self) -> None:
        self._signalled = True
        try:
            os.write(self._write_fd, b"\0")
        except BlockingIOError:
            pass  # the pipe is full, so the loop is already due to wake

    def run_pending(self) -> None:
        """Run everything deferred so far (on the loop thread)."""
        try:
            os.read(self._read_fd, 4096)
        except BlockingIOError:
            pass
        self._signalled = False
        get = self._queue.get_nowait
        self._running = True
        try:
            while True:
                try:
                    fn, args = get()
                except queue.Empty:
                    return
                try:
                    fn(*args)
                except Exception as exc:  # one failed callback must not take the worker down
                    error_log.error("internal error in %s: %s", getattr(fn, "__qualname__", fn), exc,
                                    exc_info=exc)
        finally:
            self._running = False
            # A signal handler may have deferred between the last get() and here.
            if not self._queue.empty() and not self._signalled:
                self._signal()


@dataclass(eq=False, slots=True)
class Job:
    """One call into application code, from submission to its result on the loop.

    Attributes:
        run: the call, made on a pool thread with the job itself.
        done: gets the result (or the exception) on the loop thread.
        label: what the job is, for log lines; formatted only when a line is written
            (a request head prints as "GET /report").
        submitted: when it was queued (monotonic).
        started: when a thread took it (monotonic), 0.0 while it waits in the queue.
        thread: the ident of that thread.
        abandoned: the loop gave up on it (it overran its deadline); its result is dropped.
        on_timeout: set while ``handler_timeout`` applies (an HTTP handler computing its
            response; cleared once the response has started, as a streamed body may
            last for hours). It answers the request (loop thread), is told whether a
            thread still runs the job, and returns what to release once that thread is done.
        cleanup: what to release once an abandoned job's thread is done with it.
    """

    run: Callable[[Job], Any]
    done: Callable[[Any], None]
    label: object = ""
    submitted: float = 0.0
    started: float = 0.0
    thread: int = 0
    abandoned: bool = False
    on_timeout: Callable[[bool], Callable[[], None] | None] | None = None
    cleanup: Callable[[], None] | None = None

    def stack(self) -> str:
        """The stack of the thread running this job now, for the error log."""
        frame = sys._current_frames().get(self.thread)
        return "".join(traceback.format_stack(frame)).rstrip() if frame is not None else "(thread gone)"


class HandlerPool:
    """Daemon threads running jobs and deferring their results to the loop.

    ``threads`` of them are always free to take jobs. A thread that stops taking
    jobs for long — it waits for a slow client to read a streamed body it produces
    (``park``), or it is stuck in a handler that overran its deadline (``abandon``) —
    is replaced by a new one, up to ``threads + max_extra`` threads in all; when it
    comes back, the pool shrinks again. So slow readers and hung handlers cost a
    thread each, not the worker's ability to run handlers.

    Args:
        threads: how many threads take jobs.
        wakeup: the loop's wakeup, through which results come back.
        max_extra: bound on the threads added beyond ``threads``.
    """

    def __init__(self, threads: int, wakeup: Wakeup, max_extra: int = 256) -> None:
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._wakeup = wakeup
        self.size = threads
        self._limit = threads + max_extra
        # Jobs submitted whose result the loop still waits for (queued or running).
        self.busy = 0
        # Jobs given up on whose thread still runs them (a hung handler).
        self.stuck = 0
        self._queued: dict[Job, None] = {}
        self._running: dict[Job, None] = {}
        self._lock = threading.Lock()
        self._alive = 0
        self._taking = 0  # threads that take jobs: alive, minus parked and stuck ones
        with self._lock:
            for _ in range(threads):
                self._start_thread()

    def _start_thread(self) -> None:
        # Called with the lock held.
        self._alive += 1
        self._taking += 1
        threading.Thread(target=self._run, name=f"handler-{self._alive}", daemon=True).start()

    def _replace_if_short(self) -> None:
        # Called with the lock held, after a thread stopped taking jobs.
        if self._taking < self.size and self._alive < self._limit:
            self._start_thread()

    def submit(self, run: Callable[[Job], Any], done: Callable[[Any], None], *, label: object = "",
               on_timeout: Callable[[bool], Callable[[], None] | None] | None = None) -> Job:
        """Run ``run(job)`` in a thread, then ``done(result or exception)`` on the loop."""
        job = Job(run, done, label, time.monotonic(), on_timeout=on_timeout)
        self.busy += 1
        with self._lock:
            self._queued[job] = None
        self._jobs.put(job)
        return job

    @property
    def running(self) -> int:
        """Threads running a job right now (streaming and stuck ones included)."""
        return len(self._running)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            with self._lock:
                del self._queued[job]
                if job.abandoned:
                    continue  # answered while it waited in the queue
                job.thread = threading.get_ident()
                job.started = time.monotonic()
                self._running[job] = None
            try:
                result = job.run(job)
            except BaseException as exc:  # handed to the loop, which logs it
                result = exc
            with self._lock:
                del self._running[job]
                if job.abandoned:
                    self._taking += 1  # back from a hung handler
                retire = self._taking > self.size
                if retire:
                    self._taking -= 1
                    self._alive -= 1
            self._wakeup.defer(self._finished, job, result)
            if retire:
                return  # a thread added for a parked or stuck one: the pool shrinks back

    def _finished(self, job: Job, result: Any) -> None:
        if job.abandoned:
            self.stuck -= 1
            error_log.warning("the handler for %s finished %.1f s after it started, too late; its "
                              "result is dropped", job.label, time.monotonic() - job.started)
            if isinstance(result, ResponseStream):
                result.close()
            if job.cleanup is not None:
                job.cleanup()
            return
        self.busy -= 1
        job.done(result)

    def park(self) -> None:
        """The calling thread waits for a slow client for a while: let another take jobs."""
        with self._lock:
            self._taking -= 1
            self._replace_if_short()

    def unpark(self) -> None:
        """The calling thread, parked before, works again."""
        with self._lock:
            self._taking += 1

    def overdue(self, now: float, timeout: float) -> list[Job]:
        """Jobs under a deadline submitted more than ``timeout`` seconds ago and not done.

        Running ones count from when they started, queued ones from when they were
        submitted: a request that waits that long for a thread is answered too.
        """
        with self._lock:
            jobs = list(self._running) + list(self._queued)
        return [job for job in jobs if job.on_timeout is not None and not job.abandoned
                and now - (job.started or job.submitted) > timeout]

    def abandon(self, job: Job) -> bool:
        """Stop waiting for ``job`` (loop thread); its result, if it ever comes, is dropped.

        Returns:
            True when a thread is stuck in it (it had started), False when it was
            still queued (it will never run).
        """
        with self._lock:
            if job.abandoned:
                return False
            job.abandoned = True
            self.busy -= 1
            running = job in self._running
            if running:
                self.stuck += 1
                self._taking -= 1
                self._replace_if_short()
        return running


class StreamProducer:
    """Produces a streamed body on the thread that called the application.

    The loop asks for a batch (``request``) whenever its output queue runs low;
    the producing thread, blocked in ``serve``, pulls about that many bytes from
    the app's iterator and hands every chunk to the loop. ``cancel`` (the client
    went away, or a HEAD request needs no body) makes that thread close the
    iterator, where it ran.

    Args:
        stream: the response whose ``rest`` is produced.
        pool: the pool the producing thread belongs to: told when the thread waits
            long for the client (so that another takes its jobs meanwhile).
    """

    def __init__(self, stream: ResponseStream, pool: HandlerPool) -> None:
        self._stream = stream
        self._pool = pool
        self._owner = threading.get_ident()
        self._cond = threading.Condition(threading.Lock())
        self._budget = 0
        self._cancelled = False

    def on_own_thread(self) -> bool:
        """Whether the caller is the producing thread."""
        return threading.get_ident() == self._owner

    def request(self, budget: int) -> None:
        """Ask for about ``budget`` more bytes (loop thread)."""
        with self._cond:
            self._budget = budget
            self._cond.notify()

    def cancel(self) -> None:
        """Stop producing; the producing thread closes the iterator (any thread)."""
        with self._cond:
            self._cancelled = True
            self._cond.notify()

    def _next_budget(self) -> int | None:
        with self._cond:
            if not self._budget and not self._cancelled:
                self._cond.wait(PARK_AFTER)
            if not self._budget and not self._cancelled:
                # The client reads slowly (or not at all): stop counting against the pool.
                self._pool.park()
                try:
                    while not self._budget and not self._cancelled:
                        self._cond.wait()
                finally:
                    self._pool.unpark()
            if self._cancelled:
                return None
            budget, self._budget = self._budget, 0
            return budget

    def serve(self, emit: Callable[[bytes], None], pulled: Callable[[BaseException | None], None]) -> None:
        """Produce the body batch by batch until it ends or is cancelled (producing thread).

        Args:
            emit: gets each chunk the moment it exists (it defers to the loop).
            pulled: called after each batch, with the iterator's exception if it failed.
        """
        stream = self._stream
        while True:
            budget = self._next_budget()
            if budget is None:
                stream.close()
                return
            try:
                stream.pull(budget, emit)
            except BaseException as exc:  # pull() has closed the stream; the loop logs it
                pulled(exc)
                return
            pulled(None)
            if stream.rest is None:  # exhausted: pull() has closed it, on this thread
                return
