"""A worker process: one event loop over many connections, plus a handler pool.

Strategy: the loop thread owns every socket and the selector. It accepts,
reads, feeds parsers and writes; it never runs application code (unless
``threads = 0`` asks for handlers inline). Complete requests go to a pool of
handler threads; their results come back through ``Wakeup`` — a queue plus a
pipe byte — so pool threads never touch the selector (gunicorn gthread's
PollableMethodQueue). Signal handlers only set flags and write the wakeup byte.
Once a second the loop sweeps connection timeouts and writes its heartbeat.
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import random
import selectors
import signal
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import psutil


from prefork.staging import memory

from prefork.staging import writebehind
from prefork.apps.broadcast import Subscribers
from prefork.worker.broadcast_wiring import BroadcastWiring
from prefork.worker.channel import Channel
from prefork.worker.proxy_gate import ProxyHeaderGate
from prefork.worker.tls_channel import TlsChannel
from prefork.worker.connection import Connection
from prefork.apps.handlers import CompleteRequest, LoadedApp, ResponseStream
from prefork.apps.loader import AppWrapper
from prefork.apps.resumable import ResumableEndpoint
from prefork.staging.partial_intake import ResumableUploads
from prefork.protocol.errors import ProtocolError
from prefork.worker.stream_slots import StreamSlots
from prefork.protocol.http.events import Request
from prefork.worker.app_runner import AppRunner
from prefork.process.exit_codes import EXIT_BOOT
from prefork.config.logs import dump_stacks_to_error_log, error_log, flush_access_log, reopen_logs
from prefork.worker.loop_services import LoopTarget, Upgrade
from prefork.worker.pool import HandlerPool, Wakeup
from prefork.apps.runtime import Runtime
from prefork.process.scoreboard import WorkerSlot, WorkerState
from prefork.process.status import StatusPage
from prefork.worker.shedding import IdleShedder
from prefork.worker.settings import WorkerSettings
from prefork.worker.ws_upgrade import WebSocketSide

WORKER_BOOT_ERROR = EXIT_BOOT  # the app cannot be imported: the master stops, no respawn loop
# Large enough that a fast upload costs few recv/write calls per MiB (256 KiB
# measured twice the throughput of 64 KiB, 1 MiB another ~10%); one buffer per
# worker, and only the bytes received are ever copied out of it.
RECV_BUFFER_SIZE = 1024 * 1024
SWEEP_INTERVAL = 0.5
# Seconds between two sweeps of expired partial uploads (a directory listing each).
RESUMABLE_SWEEP_INTERVAL = 60.0
# One accept per wake-up (nginx's multi_accept off): every worker is woken for a
# pending connection, so each takes its share instead of the first one taking all.
ACCEPT_BURST = 1
PR_SET_PDEATHSIG = 1


class _Readable:
    """A selector target that only reads (listeners, the wakeup pipe)."""

    __slots__ = ("on_readable",)

    def __init__(self, on_readable: Callable[[], None]) -> None:
        self.on_readable = on_readable

    def on_writable(self) -> None:
        """Never asked for."""


class Worker:
    """One worker process's event loop.

    Args:
        listeners: the listening sockets inherited from the master.
        settings: worker and connection settings.
        slot: this worker's scoreboard slot, or None (tests).
        app: an already loaded application, else ``settings.app`` is loaded in ``run``.
        link: this worker's end of the master's broadcast hub, or None (local delivery).
    """

    def __init__(self, listeners: Sequence[socket.socket], settings: WorkerSettings,
                 slot: WorkerSlot | None = None, app: LoadedApp | None = None,
                 link: socket.socket | None = None, tls: Mapping[int, ssl.SSLContext] | None = None,
                 proxy_protocol: frozenset[int] = frozenset()) -> None:
        self.listeners = list(listeners)
        self._tls = dict(tls or {})  # listener fd -> context: connections accepted there speak TLS
        self._proxy_protocol = proxy_protocol  # listener fds whose connections start with a PROXY header
        self.settings = settings.connection
        self.worker_settings = settings
        self.slot = slot
        self.app = app
        self.draining = False
        self.stopping_now = False
        self.connections: set[LoopTarget] = set()
        self._registered: dict[Channel, int] = {}
        self.subscribers = Subscribers()
        self._link_socket = link
        self._accepting = False
        self._accept_retry = 0.0
        jitter = random.randint(0, settings.max_requests_jitter) if settings.max_requests_jitter else 0
        self._max_requests = settings.max_requests + jitter if settings.max_requests else 0
        self.requests = 0
        self._orphan_deadline = 0.0
        self.resumable: ResumableUploads | None = None
        self.streams = StreamSlots(settings.max_streams, bool(settings.threads), slot)
        self._next_resumable_sweep = 0.0

    # --- start-up -------------------------------------------------------------
    def run(self) -> int:
        """Post-fork set-up, then the loop until stopped; returns the exit code."""
        self._ppid = os.getppid()
        _die_with_parent()
        memory.tune()  # allocator policy before any thread starts (prefork/staging/memory.py)
        self.wakeup = Wakeup()
        self.write_behind = writebehind.WriteBehindHelper()
        # what uploads used goes back to the OS once they are over: the ring, then malloc's free memory
        self._trimmer = memory.IdleTrimmer(hooks=[self.write_behind.release_idle])
        self._broadcast = BroadcastWiring(self.worker_settings.broadcast, self._link_socket, self.subscribers,
                                          self.wakeup.defer, self.slot)
        self._transport = self._broadcast.transport
        if self.app is None:
            try:
                if self.worker_settings.resumable.prefix and not self.worker_settings.threads:
                    error_log.warning("worker %d: resumable uploads are off: they wait for the disk and for "
                                      "each other, which needs handler threads ([server] threads = 0)", os.getpid())
                elif self.worker_settings.resumable.prefix:
                    self.resumable = ResumableUploads(self.worker_settings.resumable, self.write_behind,
                                                      self.settings.min_free_disk, self.settings.checksum)
                self.app = self._load_app()
            except BaseException as exc:
                error_log.error("worker %d failed to load the application %r: %s",
                                os.getpid(), self.worker_settings.app or "(demo)", exc, exc_info=exc)
                return WORKER_BOOT_ERROR
        if self.worker_settings.reload:
            from prefork.apps.reloader import start_reloader
            start_reloader(lambda: self.wakeup.defer(self.begin_drain))
        self._install_signals()
        dump_stacks_to_error_log()  # the master's SIGABRT for a stalled loop writes every stack
        self.pool = HandlerPool(self.worker_settings.threads, self.wakeup) if self.worker_settings.threads else None
        self.runner = AppRunner(self.app.call, self.pool, self.wakeup, self.worker_settings.handler_timeout)
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.wakeup, selectors.EVENT_READ, _Readable(self.wakeup.run_pending))
        self._recv_buffer = memoryview(bytearray(RECV_BUFFER_SIZE))
        self._server_names = {lsock.fileno(): _local_address(lsock) for lsock in self.listeners}
        self._listener_targets = {lsock: _Readable(functools.partial(self._accept, lsock))
                                  for lsock in self.listeners}
        self._shedder = IdleShedder(self.worker_settings.max_connections)
        self._upgrades = WebSocketSide(self.app, self.worker_settings.websocket, self, self.pool,
                                       self._recv_buffer, self.subscribers)
        self._broadcast.start(self.selector, self.begin_drain, lambda: self.draining)
        self._set_accepting(True)
        if self.slot is not None:
            self.slot.set_state(WorkerState.READY)
        error_log.debug("worker %d ready", os.getpid())
        self._loop()
        self._broadcast.stop()
        if self.resumable is not None:  # the last commits of uploads cut off by the stop, before exit
            self.resumable.flush(timeout=self.worker_settings.graceful_timeout)
        return 0

    def _load_app(self) -> LoadedApp:
        """Import the app, bound to this worker's Runtime, with the status page in front."""
        from prefork.apps.loader import load_application

        settings = self.worker_settings
        facts = Runtime(uploads_dir=settings.uploads_dir, staging_dir=self.settings.staging_dir or "",
                        transport=self._transport, subscribers=self.subscribers)
        wrappers: list[AppWrapper] = []
        if self.resumable is not None:
            wrappers.append(ResumableEndpoint(self.resumable))
        if settings.status_path and self.slot is not None:
            wrappers.append(StatusPage(self.slot.board, self._ppid, settings.status_path, settings.status_allow))
        return load_application(settings.app, threads=settings.threads, reload=settings.reload,
                                runtime=facts, wrappers=wrappers)

    def _install_signals(self) -> None:
        signal.signal(signal.SIGTERM, lambda *_: self.wakeup.defer(self.begin_drain))
        # Ctrl-C signals the whole process group: the master turns INT into a graceful stop.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGQUIT, lambda *_: self.wakeup.defer(self.stop_now))
        signal.signal(signal.SIGUSR1, lambda *_: self.wakeup.defer(reopen_logs))
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGTTIN, signal.SIG_IGN)
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)

    # --- the loop ---------------------------------------------------------------
    def _loop(self) -> None:
        select = self.selector.select
        next_sweep = time.monotonic()
        while not self.stopping_now:
            for key, mask in select(SWEEP_INTERVAL):
                target = key.data
                try:
                    if mask & selectors.EVENT_READ:
                        target.on_readable()
                    if mask & selectors.EVENT_WRITE:
                        target.on_writable()
                except Exception as exc:
                    self._contain(target, exc)
            flush_access_log()  # one write per turn, not per request
            now = time.monotonic()
            if now >= next_sweep:
                next_sweep = now + SWEEP_INTERVAL
                self._sweep(now)
            # Threads stuck in a handler that timed out do not hold the exit: they are daemons.
            if self.draining and not self.connections and not (self.pool and self.pool.busy):
                break
        self.selector.close()

    def _contain(self, target: Any, exc: Exception) -> None:
        # A bug reached the loop: lose this one connection, not every connection of the worker.
        error_log.error("internal error on %r: %s", target, exc, exc_info=exc)
        close = getattr(target, "close", None)
        if close is not None:
            try:
                close()
            except Exception as again:
                error_log.error("closing after an internal error failed: %s", again)

    def _sweep(self, now: float) -> None:
        shed = self._shedder.take_shed()
        if self.slot is not None:
            self.slot.heartbeat(now)
            if shed:
                self.slot.count_shed(shed)
            self._trimmer.sweep(self.slot.read())  # memory back to the OS once uploads are over
        if self.runner.expire(now):
            self.begin_drain()  # a handler thread is stuck for good: a fresh worker takes over
        if self.pool is not None and self.slot is not None:
            self.slot.set_threads(self.pool.size, self.pool.running)
        if not self._accepting and not self.draining and now >= self._accept_retry:
            self._set_accepting(True)
        for conn in list(self.connections):
            conn.check_timeouts(now)
        if self.resumable is not None and now >= self._next_resumable_sweep:
            self._next_resumable_sweep = now + RESUMABLE_SWEEP_INTERVAL
            self._sweep_resumable()
        if os.getppid() != self._ppid:
            self._orphaned(now)
        if self.worker_settings.max_worker_memory and not self.draining:
            rss = psutil.Process().memory_info().rss
            if rss > self.worker_settings.max_worker_memory:
                error_log.info("worker %d: RSS %d bytes over max_worker_memory, recycling", os.getpid(), rss)
                self.begin_drain()

    def _sweep_resumable(self) -> None:
        """Remove expired partial uploads (every worker sweeps; the store's locks keep it safe)."""
        assert self.resumable is not None
        try:
            removed = self.resumable.sweep()
        except Exception as exc:  # a full disk or a bug: the uploads wait for the next sweep, the loop goes on
            error_log.error("sweeping partial uploads in %s failed: %s", self.resumable.store.dir, exc,
                            exc_info=not isinstance(exc, OSError))
            return
        if removed:
            error_log.info("worker %d removed %d expired partial upload(s)", os.getpid(), removed)

    def _orphaned(self, now: float) -> None:
        """The master is gone: nobody will enforce graceful_timeout, so this worker does."""
        grace = self.worker_settings.graceful_timeout
        if not self._orphan_deadline:
            self._orphan_deadline = now + grace
            error_log.warning("worker %d: the master is gone; finishing what is in flight for at most "
                              "%g s (graceful_timeout)", os.getpid(), grace)
            self.begin_drain()
        elif now >= self._orphan_deadline and not self.stopping_now:
            error_log.warning("worker %d: graceful_timeout (%g s) is over without a master; closing %d "
                              "connections", os.getpid(), grace, len(self.connections))
            self.stop_now()

    # --- accepting --------------------------------------------------------------
    def _set_accepting(self, on: bool) -> None:
        if on == self._accepting:
            return
        self._accepting = on
        for lsock in self.listeners:
            if on:
                self.selector.register(lsock, selectors.EVENT_READ, self._listener_targets[lsock])
            else:
                self.selector.unregister(lsock)

    def _accept(self, lsock: socket.socket) -> None:
        if not self._accepting:
            # A stale event from the same select() batch: a request handled just before it made
            # this worker drain, which closed its copy of the listener (accept would get EBADF).
            return
        for _ in range(ACCEPT_BURST):
            at_limit = len(self.connections) >= self.worker_settings.max_connections
            if at_limit and not self._shedder.has_candidate(self.connections):
                self._set_accepting(False)  # every connection is busy: new ones wait in the backlog
                return
            try:
                sock, peer = lsock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # Out of descriptors: stop watching the listener (it would stay
                    # readable and spin the loop) until a connection closes or 1 s passes.
                    self._set_accepting(False)
                    self._accept_retry = time.monotonic() + 1.0
                error_log.warning("accept failed on %s: %s", self._server_names.get(lsock.fileno(), "?"), exc)
                return
            if at_limit:
                self._shedder.shed_one()
            sock.setblocking(False)
            if sock.family != socket.AF_UNIX:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            else:
                peer = ("unix", 0)
            fd = lsock.fileno()
            if fd in self._proxy_protocol:
                gate = ProxyHeaderGate(Channel(sock, self.watch), peer, self.settings, self.forget,
                                       functools.partial(self._start_connection, fd))
                self._watch_and_read(gate)
            else:
                self._start_connection(fd, sock, peer)

    def _start_connection(self, listener: int, sock: socket.socket, peer: tuple[str, int]) -> None:
        """An HTTP connection on ``sock`` from ``peer``, accepted on listener fd ``listener``."""
        context = self._tls.get(listener)
        channel = (Channel(sock, self.watch) if context is None
                   else TlsChannel(sock, self.watch, context, self.defer, peer))
        self._watch_and_read(Connection(channel, peer, self._server_names[listener], self, self._recv_buffer))

    def _watch_and_read(self, target: LoopTarget) -> None:
        self.connections.add(target)
        self.selector.register(target.channel.sock, selectors.EVENT_READ, target)
        self._registered[target.channel] = selectors.EVENT_READ
        # Clients send right after connecting, so the first bytes are usually
        # here already: read them now rather than one select() later.
        try:
            target.on_readable()
        except Exception as exc:
            self._contain(target, exc)

    # --- LoopServices for connections --------------------------------------------------
    def watch(self, channel: Channel, read: bool, write: bool) -> None:
        """Set the readiness events reported to ``channel``'s owner."""
        mask = (selectors.EVENT_READ if read else 0) | (selectors.EVENT_WRITE if write else 0)
        current = self._registered.get(channel, 0)
        if mask == current:
            return
        if not mask:
            self.selector.unregister(channel.sock)
            del self._registered[channel]
        elif not current:
            self.selector.register(channel.sock, mask, channel.owner)
            self._registered[channel] = mask
        else:
            self.selector.modify(channel.sock, mask, channel.owner)
            self._registered[channel] = mask

    def switch(self, old: LoopTarget, new: LoopTarget) -> None:
        """``new`` (an upgraded protocol) now owns ``old``'s channel: report its events to it."""
        mask = self._registered.get(new.channel, 0)
        if mask:
            self.selector.modify(new.channel.sock, mask, new)
        self.connections.discard(old)
        self.connections.add(new)

    def dispatch(self, conn: Connection, request: CompleteRequest) -> None:
        """Run the application for a complete request."""
        assert self.app is not None
        answer = self.app.answer_on_loop(request)  # the status page: no handler thread needed
        if answer is not None:
            conn.on_response(answer)
            return
        self.requests += 1
        if self._max_requests and self.requests >= self._max_requests and not self.draining:
            error_log.info("worker %d: served %d requests, recycling", os.getpid(), self.requests)
            self.begin_drain()
        self.runner.run(conn, request)

    def pull(self, conn: Connection, stream: ResponseStream, budget: int) -> None:
        """Have more of a streamed body produced (``AppRunner.pull``)."""
        self.runner.pull(conn, stream, budget)

    def wants_form(self, head: Request) -> bool:
        """Whether the application wants this request's multipart body parsed as it arrives."""
        assert self.app is not None
        return self.app.wants_form(head)

    def wants_stream(self, head: Request) -> bool:
        """Whether the request's handler reads its body while it arrives: a ``[streaming] paths``
        prefix, or a native route declared ``stream=True``."""
        assert self.app is not None
        if not (head.chunked or head.content_length):  # nothing to stream: served like any request
            return False
        path = head.path
        return any(path.startswith(prefix) for prefix in self.worker_settings.streaming_paths) or \
            self.app.wants_stream(head)

    def admit_stream(self) -> ProtocolError | None:
        """Count a streamed body in, or say why not (503)."""
        return self.streams.admit()

    def stream_done(self) -> None:
        self.streams.done()

    def wants_upgrade(self, head: Request) -> bool:
        """Whether a request that asks to switch protocols is taken (``WebSocketSide.wants``)."""
        return self._upgrades.wants(head)

    def upgrade(self, conn: Connection, upgrade: Upgrade) -> None:
        """Switch protocols (``WebSocketSide.take``)."""
        self._upgrades.take(conn, upgrade)

    def forget(self, target: LoopTarget) -> None:
        """Drop a closed connection."""
        if self._registered.pop(target.channel, 0):
            self.selector.unregister(target.channel.sock)
        self.connections.discard(target)
        if not self._accepting and not self.draining:
            self._set_accepting(True)

    def defer(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn(*args)`` on the loop thread."""
        self.wakeup.defer(fn, *args)

    # --- stopping -----------------------------------------------------------------
    def begin_drain(self) -> None:
        """Graceful stop: accept no more, finish what is in flight, then exit."""
        if self.draining:
            return
        self.draining = True
        error_log.debug("worker %d draining: %d connections open", os.getpid(), len(self.connections))
        if self.slot is not None:
            self.slot.set_state(WorkerState.STOPPING)
        self._set_accepting(False)
        for lsock in self.listeners:
            lsock.close()  # our copy only: the master's stays open, so queued clients wait for others
        for conn in list(self.connections):
            conn.on_drain()

    def stop_now(self) -> None:
        """Immediate stop: drop every connection."""
        self.stopping_now = True
        for conn in list(self.connections):
            conn.close()


def _local_address(lsock: socket.socket) -> tuple[str, int]:
    name = lsock.getsockname()
    if isinstance(name, str):
        return (name or "unix", 0)
    return (name[0], name[1])


def _die_with_parent() -> None:
    # A worker must never outlive its master: ask the kernel for SIGTERM when it dies.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # the getppid() check in the sweep still catches it
