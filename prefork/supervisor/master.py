"""The master process: bind, fork workers, supervise, reload, stop.

Strategy: gunicorn's arbiter, kept small. Signal handlers do nothing but let
``signal.set_wakeup_fd`` write the signal number into a pipe; the loop reads
it and calls ``handle_<name>`` (``signal_pipe.py``). Children are reaped with ``waitpid(WNOHANG)``
and their cause of death logged; a worker that exits with WORKER_BOOT_ERROR
(it could not load the app) stops the master with that code instead of a
respawn loop. Liveness comes from the heartbeat each worker writes into its
scoreboard slot. The master never parses a request.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import time
from dataclasses import dataclass
from typing import Any

from prefork.process import systemd
from prefork.supervisor.boot_backoff import BootBackoff, describe_status
from prefork.supervisor.signal_pipe import SignalPipe
from prefork.apps.broadcast import Hub
from prefork.config.config import Config, load_config
from prefork.process.tls_context import ListenerContexts, reloaded_contexts
from prefork.protocol.errors import ConfigError
from prefork.process.exit_codes import EXIT_CONFIG
from prefork.config.logs import error_log, flush_access_log, reopen_logs, setup_logging
from prefork.process.privileges import drop_privileges, give_directories, service_owner
from prefork.process.scoreboard import Scoreboard, WorkerState
from prefork.process.sockets import describe_listener
from prefork.staging.spool import remove_stale_files
from prefork.worker.broadcast_wiring import refuse_unusable_redis, with_redis_password
from prefork.worker.loop import WORKER_BOOT_ERROR, Worker
from prefork.worker.settings import WorkerSettings, worker_settings

TICK = 0.5
STATUS_INTERVAL = 5.0
# Slots beyond the worker count: during a reload old and new workers overlap.
SPARE_SLOTS = 2
# Between SIGABRT (stacks to the error log) and SIGKILL for a worker whose heartbeat stopped.
ABORT_GRACE = 2.0


@dataclass(slots=True)
class WorkerInfo:
    """The master's record of one worker."""

    pid: int
    slot: int
    generation: int
    started: float
    stopping: bool = False
    aborted_at: float = 0.0  # when it was sent SIGABRT for a missed heartbeat
    killed: bool = False


class Master:
    """Supervises the workers serving ``listeners``.

    Args:
        cfg: the loaded configuration.
        listeners: bound, listening sockets (bound by the caller, before forking).
        overrides: the command-line settings, applied again over the file on every reload.
    """

    def __init__(self, cfg: Config, listeners: list[socket.socket], *, owns_unix_paths: bool = True,
                 overrides: dict[str, dict[str, object]] | None = None, tls: ListenerContexts | None = None,
                 proxy_protocol: frozenset[int] = frozenset()) -> None:
        self.cfg = cfg
        self.tls: ListenerContexts = tls or {}  # built before the fork: workers inherit the certificates
        self.proxy_protocol = proxy_protocol  # listener fds expecting a PROXY header (fixed until a restart)
        self.listeners = listeners
        self.owns_unix_paths = owns_unix_paths
        self.overrides = overrides
        self.num_workers = cfg.server.workers
        self.generation = 1
        self.workers: dict[int, WorkerInfo] = {}
        self.stopping = False
        self.stop_deadline = 0.0
        self.exit_code = 0
        self.ready_sent = False
        self.reloading = False
        # Workers of the current generation seen serving, while waiting for it to be ready.
        self.served: set[int] = set()
        # The configuration and worker count before the reload in progress (rollback).
        self.previous: tuple[Config, int, ListenerContexts] | None = None
        self.board = Scoreboard(max(64, self.num_workers * 2 + SPARE_SLOTS), cfg.staging.memory_budget)
        self.hub = Hub(on_error=error_log.error)
        self.watchdog_interval = systemd.watchdog_interval()
        self.next_watchdog = 0.0
        self.next_status = time.monotonic() + STATUS_INTERVAL
        self.boot = BootBackoff()  # workers in a row that died before they were ready
        self.pidfile = ""  # the pidfile written (the one removed at exit, even after a HUP)

    # --- main loop ----------------------------------------------------------
    def run(self) -> int:
        """Start the workers and supervise them until stopped; returns the exit code."""
        try:
            self._write_pidfile()
        except OSError as exc:
            error_log.error("[server] pidfile = %r: cannot write it: %s", self.cfg.server.pidfile,
                            exc.strerror or exc)
            self.exit_code = EXIT_CONFIG
            self._cleanup()
            return self.exit_code
        self._signals = SignalPipe()
        names = ", ".join(describe_listener(s) for s in self.listeners)
        error_log.info("prefork master %d listening on %s with %d workers", os.getpid(), names,
                       self.num_workers)
        try:
            self._spawn_missing()
            while self.workers or not self.stopping:
                # Wake for the next watchdog ping on time: a whole TICK late could bring the
                # gap between pings close to WATCHDOG_USEC.
                wait = TICK
                if self.watchdog_interval and not self.stopping:
                    wait = min(TICK, max(self.next_watchdog - time.monotonic(), 0.01))
                self._wait_for_signals(wait)
                self._reap()
                if self.stopping:
                    self._enforce_stop_deadline()
                    continue
                self._check_heartbeats()
                self._spawn_missing()
                self._stop_surplus()
                self._advance_reload()
                self._notify_ready()
                self._notify_systemd()
        finally:
            self._cleanup()
        return self.exit_code

    def _wait_for_signals(self, timeout: float) -> None:
        readers: list[Any] = [self._signals.fd, *self.hub.readers()]
        ready, writable, _ = select.select(readers, self.hub.writers(), [], timeout)
        for link in writable:
            self.hub.on_writable(link)
        for link in ready:
            if link != self._signals.fd:
                self.hub.on_readable(link)
        if self._signals.fd in ready:
            self._signals.dispatch(self)

    # --- workers ----------------------------------------------------------------
    def _spawn_missing(self) -> None:
        for info in self.workers.values():
            if self.boot.failures and self.board.view(info.slot).state == WorkerState.READY:
                self.boot.ready(info.started)
            # A worker recycling itself (max_requests, max_worker_memory) is replaced as soon as
            # it starts draining, not when it exits: its in-flight uploads may take minutes.
            if not info.stopping and self.board.view(info.slot).state == WorkerState.STOPPING:
                info.stopping = True
                error_log.debug("worker %d is recycling itself; starting its replacement", info.pid)
        current = [w for w in self.workers.values() if w.generation == self.generation and not w.stopping]
        if len(current) < self.num_workers and not self.boot.may_spawn(time.monotonic()):
            return  # backing off after workers that failed to boot
        for _ in range(self.num_workers - len(current)):
            try:
                self._spawn()
            except RuntimeError as exc:  # scoreboard full: draining workers hold every slot
                error_log.error("cannot start a worker now: %s", exc)
                return

    def _spawn(self) -> None:
        settings = with_redis_password(worker_settings(self.cfg))
        index = self.board.claim(0, self.generation)
        master_end, worker_end = self.hub.pair()
        pid = os.fork()
        if pid == 0:
            master_end.close()
            self.hub.close_inherited()
            self._become_worker(settings, index, worker_end)
        worker_end.close()
        self.hub.attach(pid, master_end)
        self.board.set_pid(index, pid)
        self.workers[pid] = WorkerInfo(pid, index, self.generation, time.monotonic())
        error_log.debug("spawned worker %d (slot %d, generation %d)", pid, index, self.generation)

    def _become_worker(self, settings: WorkerSettings, index: int, link: socket.socket) -> None:
        code = 1
        try:
            self._signals.close_in_child()
            try:
                drop_privileges(self.cfg.server.user, self.cfg.server.group)
            except (ValueError, OSError) as exc:
                error_log.error("worker %d cannot switch to user %r / group %r: %s", os.getpid(),
                                self.cfg.server.user, self.cfg.server.group, exc)
                code = WORKER_BOOT_ERROR  # a configuration problem: no respawn loop
                return
            code = Worker(self.listeners, settings, self.board.slot(index), link=link, tls=self.tls,
                          proxy_protocol=self.proxy_protocol).run()
        except BaseException as exc:
            error_log.error("worker %d crashed: %s", os.getpid(), exc, exc_info=exc)
        finally:
            try:
                flush_access_log()  # os._exit skips atexit: the last turn's lines go out here
            finally:
                os._exit(code)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            info = self.workers.pop(pid, None)
            if info is None:
                error_log.warning("reaped process %d, which is not one of this master's workers (%s)",
                                  pid, describe_status(status))
                continue
            booted = self.board.view(info.slot).state != WorkerState.BOOTING
            self._log_exit(info, status, booted)
            if (info.generation == self.generation and (self.reloading or not self.ready_sent)
                    and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
                self.served.add(pid)  # a clean exit comes after serving (it recycled between ticks)
            self.hub.detach(pid)
            self.board.retire(info.slot)  # counters into the totals, slot freed: one step for readers
            if self.cfg.staging.dir:
                remove_stale_files(self.cfg.staging.dir, pid)
            if not booted and not info.stopping and not self.stopping:
                self._on_boot_failure(info, status)

    def _on_boot_failure(self, info: WorkerInfo, status: int) -> None:
        """A worker died before it was ready: roll a reload back, back off, or stop.

        A worker that cannot import the application stops the master at once; any
        other early death is retried with a growing delay (``BootBackoff``), so a
        broken deployment ends with the worker's error instead of a respawn loop.
        """
        if info.generation > self.generation:
            return  # another worker of a reload that was already rolled back
        cannot_import = os.WIFEXITED(status) and os.WEXITSTATUS(status) == WORKER_BOOT_ERROR
        if self.reloading and info.generation == self.generation and self.previous is not None:
            error_log.error("reload failed: worker %d %s; keeping generation %d", info.pid,
                            "could not load the application" if cannot_import else "died while starting",
                            self.generation - 1)
            for other in list(self.workers.values()):
                if other.generation == self.generation and not other.stopping:
                    self._stop_worker(other)
            self.cfg, self.num_workers, self.tls = self.previous
            self.generation -= 1
            self.reloading = False
            systemd.notify("READY=1\nSTATUS=reload failed: the application could not be loaded")
            return
        if cannot_import:
            error_log.error("worker %d could not load the application; stopping", info.pid)
        else:
            delay = self.boot.failed(time.monotonic())
            if delay is not None:
                error_log.error("worker %d died while starting (%s); starting another in %g s",
                                info.pid, describe_status(status), delay)
                return
            error_log.error("%d workers in a row died while starting, the last %s; stopping (see their "
                            "errors above)", self.boot.failures, describe_status(status))
        self.exit_code = WORKER_BOOT_ERROR
        self.begin_stop(graceful=False)

    def _log_exit(self, info: WorkerInfo, status: int, booted: bool) -> None:
        expected = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 or (
            info.stopping and os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL)
        level = error_log.info if expected else error_log.warning
        level("worker %d %s%s", info.pid, describe_status(status), "" if booted else " before it was ready")

    def _stop_surplus(self) -> None:
        """After TTOU, stop the oldest worker over the count, once none is still booting.

        A booting worker is never the one stopped: it has not served yet, and the
        ones that stay should all be ready when one goes.
        """
        current = sorted((w for w in self.workers.values() if w.generation == self.generation
                          and not w.stopping), key=lambda w: w.started)
        if len(current) <= self.num_workers:
            return
        if any(self.board.view(w.slot).state == WorkerState.BOOTING for w in current):
            return
        self._stop_worker(current[0])

    def _check_heartbeats(self) -> None:
        now = time.monotonic()
        timeout = self.cfg.process.timeout
        for info in list(self.workers.values()):
            if info.aborted_at:
                # SIGABRT had the worker write every thread's stack to the error log
                # (faulthandler); one that is still there now is stuck beyond that.
                if now - info.aborted_at > ABORT_GRACE and not info.killed:
                    info.killed = True
                    self._kill(info.pid, signal.SIGKILL)
                continue
            view = self.board.view(info.slot)
            if now - max(view.heartbeat, info.started) > timeout:
                error_log.error("worker %d missed its heartbeat for %.0f s (timeout %g s); aborting it "
                                "(its threads' stacks follow in the error log)",
                                info.pid, now - view.heartbeat, timeout)
                info.aborted_at = now
                self._kill(info.pid, signal.SIGABRT)

    def _kill(self, pid: int, sig: int) -> None:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass

    def _stop_worker(self, info: WorkerInfo) -> None:
        info.stopping = True
        # Shown as stopping from now on (the status page, READY=1 after a reload),
        # not only once the worker has handled the signal.
        self.board.slot(info.slot).set_state(WorkerState.STOPPING)
        self._kill(info.pid, signal.SIGTERM)

    # --- readiness and reload ----------------------------------------------------------
    def _generation_ready(self) -> bool:
        """Every worker of the current generation has served, and one accepts now.

        Not "all are READY at this tick": with max_requests under load, a worker may recycle
        (and its replacement boot) between two ticks, so that moment may never be seen.
        """
        current = [w for w in self.workers.values() if w.generation == self.generation and not w.stopping]
        for info in self.workers.values():
            if info.generation == self.generation and self.board.view(info.slot).state in (
                    WorkerState.READY, WorkerState.STOPPING):
                self.served.add(info.pid)
        return len(self.served) >= self.num_workers and any(
            self.board.view(w.slot).state == WorkerState.READY for w in current)

    def _notify_ready(self) -> None:
        if not self.ready_sent and self._generation_ready():
            self.ready_sent = True
            systemd.notify(f"READY=1\nSTATUS=serving with {self.num_workers} workers\nMAINPID={os.getpid()}")

    def _healthy(self) -> bool:
        """All current workers are up and their heartbeats are fresh."""
        now = time.monotonic()
        current = [w for w in self.workers.values() if w.generation == self.generation and not w.stopping]
        return len(current) >= self.num_workers and all(
            now - self.board.view(w.slot).heartbeat < self.cfg.process.timeout for w in current)

    def _notify_systemd(self) -> None:
        # WATCHDOG=1 only while the workers are healthy, so systemd restarts a server
        # whose workers are stuck, not merely one whose master is alive (sd_watchdog_enabled(3)).
        now = time.monotonic()
        if self.watchdog_interval and now >= self.next_watchdog:
            if self._healthy():
                self.next_watchdog = now + self.watchdog_interval
                systemd.notify("WATCHDOG=1")
            else:
                self.next_watchdog = now + min(TICK, self.watchdog_interval)  # look again soon
        if now >= self.next_status:
            self.next_status = now + STATUS_INTERVAL
            views = self.board.views()
            systemd.notify(
                f"STATUS={len(self.workers)} workers, "
                f"{self.board.retired_requests + sum(v.requests for v in views)} requests, "
                f"{sum(v.connections + v.ws_connections for v in views)} connections, "
                f"{sum(len(v.uploads) for v in views)} uploads in progress")

    def _advance_reload(self) -> None:
        # Old workers stop only once their replacements accept, so the backlog always drains.
        if not self.reloading or not self._generation_ready():
            return
        self.reloading = False
        for info in list(self.workers.values()):
            if info.generation != self.generation and not info.stopping:
                self._stop_worker(info)
        systemd.notify(f"READY=1\nSTATUS=reloaded, serving with {self.num_workers} workers")
        error_log.info("reload complete (generation %d)", self.generation)

    # --- signals ------------------------------------------------------------------
    def handle_hup(self) -> None:
        """Reload the config and replace the workers gracefully."""
        if self.stopping:
            return
        systemd.notify(f"RELOADING=1\nMONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}")
        self.previous = (self.cfg, self.num_workers, self.tls)
        if self.cfg.source:
            try:
                new_cfg, new_tls = self._load_new_config()
            except ConfigError as exc:
                error_log.error("reload failed, keeping the running configuration: %s", exc)
                systemd.notify("READY=1\nSTATUS=reload failed: bad configuration")
                return
            if new_cfg.server.bind != self.cfg.server.bind:
                error_log.warning("reload: bind addresses changed; a restart is needed to apply them")
            self.cfg, self.tls = new_cfg, new_tls
            self.num_workers = new_cfg.server.workers
        self.generation += 1
        self.served.clear()
        self.reloading = True
        error_log.info("reloading: starting generation %d", self.generation)
        self._spawn_missing()

    def _load_new_config(self) -> tuple[Config, ListenerContexts]:
        """Read the config file and certificates again and switch the logs: all of it, or nothing.

        Raises:
            ConfigError: the file is invalid, names an unknown user or group, a log file
                that cannot be opened or a certificate that cannot be used; the running
                configuration, certificates and logs stay.
        """
        assert self.cfg.source is not None
        new_cfg = load_config(self.cfg.source, self.overrides)
        try:
            owner = service_owner(new_cfg.server.user, new_cfg.server.group)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        try:
            give_directories(new_cfg.server.user, new_cfg.server.group, [new_cfg.staging.dir, new_cfg.uploads.dir])
        except OSError as exc:
            raise ConfigError(f"cannot prepare the staging and uploads directories: {exc}") from None
        refuse_unusable_redis(new_cfg)
        new_tls = reloaded_contexts(self.tls, new_cfg)  # certificates read again: new connections get them
        setup_logging(new_cfg.logging.error_log, new_cfg.logging.access_log, new_cfg.logging.level, owner)
        return new_cfg, new_tls

    def handle_term(self) -> None:
        """Graceful stop."""
        self.begin_stop(graceful=True)

    handle_int = handle_term

    def handle_quit(self) -> None:
        """Immediate stop."""
        self.begin_stop(graceful=False)

    def handle_ttin(self) -> None:
        """One worker more."""
        self.num_workers += 1
        error_log.info("TTIN: %d workers", self.num_workers)

    def handle_ttou(self) -> None:
        """One worker less (the oldest ready one of the current generation stops gracefully)."""
        if self.num_workers <= 1:
            return
        self.num_workers -= 1
        error_log.info("TTOU: %d workers", self.num_workers)
        self._stop_surplus()

    def handle_usr1(self) -> None:
        """Reopen log files, and have the workers do the same."""
        reopen_logs()
        for pid in self.workers:
            self._kill(pid, signal.SIGUSR1)

    def handle_chld(self) -> None:
        """A child exited: reaped in the loop right after."""

    # --- stopping -------------------------------------------------------------------
    def begin_stop(self, *, graceful: bool) -> None:
        """Stop accepting; let workers finish (graceful) or end them now."""
        if self.stopping and graceful:
            return
        self.stopping = True
        systemd.notify("STOPPING=1")
        for sock in self.listeners:
            sock.close()  # new clients are refused, not queued where no one will accept
        timeout = self.cfg.process.graceful_timeout if graceful else 1.0
        self.stop_deadline = time.monotonic() + timeout
        error_log.info("%s stop: %d workers", "graceful" if graceful else "immediate", len(self.workers))
        for info in self.workers.values():
            info.stopping = True
            self._kill(info.pid, signal.SIGTERM if graceful else signal.SIGQUIT)

    def _enforce_stop_deadline(self) -> None:
        if self.workers and time.monotonic() > self.stop_deadline:
            for pid in list(self.workers):
                error_log.warning("worker %d did not stop in time; killing", pid)
                self._kill(pid, signal.SIGKILL)
            self.stop_deadline = time.monotonic() + 5.0

    def _write_pidfile(self) -> None:
        # As the user the master was started as (root for a service): /run is root's.
        path = self.cfg.server.pidfile
        if path:
            with open(path, "w", encoding="ascii") as handle:
                handle.write(f"{os.getpid()}\n")
            self.pidfile = path

    def _cleanup(self) -> None:
        for pid in list(self.workers):
            self._kill(pid, signal.SIGKILL)
        for sock in self.listeners:
            sock.close()
        if self.owns_unix_paths:
            for bind in self.cfg.server.bind:
                if bind.startswith("unix:"):
                    try:
                        os.unlink(bind[5:])
                    except FileNotFoundError:
                        pass
        if self.pidfile:
            try:
                os.unlink(self.pidfile)
            except OSError as exc:
                error_log.warning("cannot remove the pidfile %s: %s", self.pidfile, exc.strerror or exc)
        error_log.info("master %d exiting with code %d", os.getpid(), self.exit_code)

