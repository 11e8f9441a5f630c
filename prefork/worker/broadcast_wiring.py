"""How a worker's ``app.broadcast`` travels: the master's hub, Redis, or this process only.

Strategy: the worker builds its transport before it loads the application (the app
is bound to it through ``Runtime``), and wires it into the loop once the selector
exists: the hub link is a socket the loop watches; the Redis transport runs threads
of its own and falls back to the hub link while Redis is away, and its counts go to
this worker's scoreboard slot for the status page.
"""

from __future__ import annotations

import dataclasses
import os
import selectors
import socket
from collections.abc import Callable

from prefork.apps import broadcast
from prefork.apps.broadcast import Subscribers
from prefork.apps.broadcast_redis import BroadcastCounts, RedisTransport, read_password, startup_problem
from prefork.config.config import Config
from prefork.config.logs import error_log
from prefork.config.settings import BroadcastSettings
from prefork.process.scoreboard import WorkerSlot
from prefork.protocol.errors import ConfigError
from prefork.worker.settings import WorkerSettings, broadcast_settings


class BroadcastWiring:
    """The worker's broadcast transport and what the loop must do for it.

    Args:
        settings: ``[websocket] broadcast`` and its Redis keys.
        link_socket: this worker's end of the master's hub, or None (no master: tests).
        subscribers: the worker's registry, where every arriving message is delivered.
        defer: runs a callable on the loop thread.
        slot: this worker's scoreboard slot (counts), or None.
    """

    def __init__(self, settings: BroadcastSettings, link_socket: socket.socket | None,
                 subscribers: Subscribers, defer: Callable[..., None], slot: WorkerSlot | None) -> None:
        deliver = subscribers.deliver
        self.link: broadcast.WorkerLink | None = None
        local: broadcast.Transport
        if link_socket is None:
            local = broadcast.LocalTransport(lambda channel, message: defer(deliver, channel, message))
        else:
            self.link = broadcast.WorkerLink(link_socket, deliver, defer)
            local = self.link
        self.redis: RedisTransport | None = None
        self.transport: broadcast.Transport = local
        if settings.backend == "redis":
            def deliver_batch(batch: list[tuple[str, str | bytes]]) -> None:
                for channel, message in batch:
                    deliver(channel, message)

            def counts(now: BroadcastCounts) -> None:
                if slot is not None:
                    slot.set_broadcast(now.connected, now.published, now.received, now.local_only, now.dropped)

            self.redis = RedisTransport(settings, local, deliver_batch, defer, counts)
            self.transport = self.redis

    def start(self, selector: selectors.BaseSelector, begin_drain: Callable[[], None],
              draining: Callable[[], bool]) -> None:
        """Watch the hub link and start the Redis threads (the loop is about to run)."""
        link = self.link
        if link is not None:
            selector.register(link, selectors.EVENT_READ, link)

            def blocked(on: bool) -> None:
                selector.modify(link, selectors.EVENT_READ | (selectors.EVENT_WRITE if on else 0), link)

            def master_gone() -> None:
                selector.unregister(link)
                link.on_blocked = lambda on: None
                if not draining():
                    error_log.warning("worker %d: the master closed the broadcast link; stopping", os.getpid())
                    begin_drain()

            link.on_blocked = blocked
            link.on_eof = master_gone
        if self.redis is not None:
            self.redis.start()

    def stop(self) -> None:
        """Stop the Redis threads (the loop has ended)."""
        if self.redis is not None:
            self.redis.stop()


def with_redis_password(settings: WorkerSettings) -> WorkerSettings:
    """``settings`` with the Redis password read here, by the master: the file may be root's only.

    A file that cannot be read now is logged and the worker tries it itself; a spawn never fails on it.
    """
    wanted = settings.broadcast
    if wanted.backend != "redis" or not wanted.redis_password_file:
        return settings
    try:
        password = read_password(wanted.redis_password_file)
    except OSError as exc:
        error_log.error("[websocket] redis_password_file = %r: %s", wanted.redis_password_file, exc.strerror or exc)
        return settings
    return dataclasses.replace(settings, broadcast=dataclasses.replace(wanted, redis_password=password))


def redis_problem(cfg: Config) -> str | None:
    """What makes ``broadcast = redis`` in ``cfg`` unusable (no client, no password file), or None."""
    return startup_problem(broadcast_settings(cfg)) if cfg.websocket.broadcast == "redis" else None


def refuse_unusable_redis(cfg: Config) -> None:
    """On reload: ``broadcast = redis`` without its client or password file is refused like at start-up.

    Raises:
        ConfigError: what is missing.
    """
    problem = redis_problem(cfg)
    if problem:
        raise ConfigError(problem)
