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
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from prefork.handlers import ResponseStream
from prefork.logs import error_log


class Wakeup:
    """Runs callables on the loop thread, deferred from other threads or signal handlers."""

    def __init__(self) -> None:
        self._read_fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._queue: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]]] = queue.SimpleQueue()
        self._signalled = False

    def fileno(self) -> int:
        """The pipe end the selector watches."""
        return self._read_fd

    def defer(self, fn: Callable[..., None], *args: Any) -> None:
        """Queue ``fn(*args)`` for the loop thread; thread-safe and signal-safe."""
        self._queue.put((fn, args))
        if not self._signalled:
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
        while True:
            try:
                fn, args = get()
            except queue.Empty:
                return
            try:
                fn(*args)
            except Exception as exc:  # one failed callback must not take the worker down
                error_log.error("internal error in %s: %s", getattr(fn, "__qualname__", fn), exc, exc_info=exc)


@dataclass(eq=False, slots=True)
class Job:
    """One call into application code, from submission to its result on the loop.

    Attributes:
        run: the call, made on a pool thread with the job itself.
        done: gets the result (or the exception) on the loop thread.
        label: what the job is, for log lines ("GET /report").
        deadline: whether ``handler_timeout`` applies to it now. True while an HTTP
            handler computes its response; the loop clears it once the response has
            started (a streamed body may legitimately last for hours).
        started: when a thread took it (monotonic), 0.0 while it waits in the queue.
        thread: the ident of that thread.
        abandoned: the loop gave up on it (it overran its deadline); its result is dropped.
    """

    run: Callable[[Job], Any]
    done: Callable[[Any], None]
    label: str = ""
    deadline: bool = False
    started: float = 0.0
    thread: int = 0
    abandoned: bool = False


class HandlerPool:
    """A fixed set of daemon threads running jobs and deferring their results to the loop.

    Args:
        threads: how many threads.
        wakeup: the loop's wakeup, through which results come back.
    """

    def __init__(self, threads: int, wakeup: Wakeup) -> None:
        self._jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._wakeup = wakeup
        self.size = threads
        # Jobs submitted whose result the loop still waits for (queued or running).
        self.busy = 0
        # Jobs given up on whose thread still runs them (a hung handler).
        self.stuck = 0
        self._running: dict[Job, None] = {}
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, name=f"handler-{n}", daemon=True)
                         for n in range(threads)]
        for thread in self._threads:
            thread.start()

    def submit(self, run: Callable[[Job], Any], done: Callable[[Any], None], *, label: str = "",
               deadline: bool = False) -> Job:
        """Run ``run(job)`` in a thread, then ``done(result or exception)`` on the loop."""
        job = Job(run, done, label, deadline)
        self.busy += 1
        self._jobs.put(job)
        return job

    @property
    def running(self) -> int:
        """Threads running a job right now (streaming and stuck ones included)."""
        return len(self._running)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            job.thread = threading.get_ident()
            job.started = time.monotonic()
            with self._lock:
                self._running[job] = None
            try:
                result = job.run(job)
            except BaseException as exc:  # handed to the loop, which logs it
                result = exc
            finally:
                with self._lock:
                    del self._running[job]
            self._wakeup.defer(self._finished, job, result)

    def _finished(self, job: Job, result: Any) -> None:
        if job.abandoned:
            self.stuck -= 1
            error_log.warning("the handler for %s finished %.1f s after it started, too late; its "
                              "result is dropped", job.label, time.monotonic() - job.started)
            if isinstance(result, ResponseStream):
                result.close()
            return
        self.busy -= 1
        job.done(result)

    def overdue(self, now: float, timeout: float) -> list[Job]:
        """Running jobs under a deadline that started more than ``timeout`` seconds ago."""
        with self._lock:
            running = list(self._running)
        return [job for job in running
                if job.deadline and not job.abandoned and now - job.started > timeout]

    def abandon(self, job: Job) -> None:
        """Stop waiting for ``job`` (loop thread): its thread keeps it, its result is dropped."""
        if not job.abandoned:
            job.abandoned = True
            self.busy -= 1
            self.stuck += 1


class StreamProducer:
    """Produces a streamed body on the thread that called the application.

    The loop asks for a batch (``request``) whenever its output queue runs low;
    the producing thread, blocked in ``serve``, pulls about that many bytes from
    the app's iterator and hands every chunk to the loop. ``cancel`` (the client
    went away, or a HEAD request needs no body) makes that thread close the
    iterator, where it ran.

    Args:
        stream: the response whose ``rest`` is produced.
    """

    def __init__(self, stream: ResponseStream) -> None:
        self._stream = stream
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
            while not self._budget and not self._cancelled:
                self._cond.wait()
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
