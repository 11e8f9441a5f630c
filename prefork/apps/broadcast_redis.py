"""Broadcast through Redis pub/sub: every worker of every server that shares one Redis.

Strategy: each worker holds its own two Redis connections, one publishing and one
subscribed to the deployment's single channel (``<prefix>:broadcast``), each driven by
a thread of its own, because the ``redis`` client blocks and the event loop must not.
Per worker rather than per master: the master stays free of network clients and of
threads (it forks), and a message goes Redis -> worker directly instead of taking one
more hop through the master's hub. ``publish`` only appends to a bounded queue
(``redis_queue`` bytes; past it the oldest message is dropped and counted) that the
publisher thread empties in pipelined batches, one ``MULTI``/``EXEC`` per batch, so
one connection keeps each worker's messages in order and a channel's history (a
capped Redis list, ``<prefix>:history:<channel>``) lists them in the order they were
delivered. The subscriber hands what arrives to the loop in small batches, at most
``BATCHES_IN_FLIGHT`` at a time: a loop that falls behind leaves the backlog in Redis,
and gets back to writing to its sockets between two batches.

Delivery is at most once. While Redis is away (at start-up, or lost: a command
failing, or silence past ``redis_timeout`` after a PING), both threads reconnect with
capped exponential backoff and ``publish`` goes to the fallback transport, the
master's hub, so that this server's own clients still get every message; those
messages are counted as ``local_only``, the ones lost outright (queue overflow, a
batch whose send failed, with what queued behind it) as ``dropped``. Nothing
published during a gap is replayed to the other servers afterwards.

Frames in Redis are ``prefork.apps.broadcast.encode`` frames (channel, kind, payload).
"""

from __future__ import annotations

import random
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from prefork.apps.broadcast import Transport, decode, encode
from prefork.config.logs import error_log
from prefork.config.settings import BroadcastSettings
from prefork.config.deployment_values import redact_url

DeliverBatch = Callable[[list[tuple[str, "str | bytes"]]], None]
BACKOFF_FIRST = 0.1
BACKOFF_CAP = 5.0
# Messages the subscriber hands to the loop at once: one wake-up for a burst, not one each.
DELIVERY_BATCH = 256
# Batches handed to the loop and not yet delivered: the loop runs every callable handed
# to it before it writes to its sockets again, so what it is handed at once must stay
# small, or clients see nothing until all of it is done.
BATCHES_IN_FLIGHT = 2
# Messages one publishing round trip carries at most.
PUBLISH_BATCH = 256
# Bytes handed to the loop and not yet delivered there; past it the subscriber stops
# reading, so that a loop slower than Redis makes Redis hold the backlog (and apply its
# client-output-buffer-limit), never this worker's memory.
DELIVERY_BACKLOG = 4 * 1024 * 1024


class RedisExtraMissing(RuntimeError):
    """``broadcast = redis`` without the ``redis`` client installed."""


def import_redis() -> Any:
    """The ``redis`` client module, or RedisExtraMissing with the command that installs it."""
    try:
        import redis
    except ImportError as exc:
        raise RedisExtraMissing("[websocket] broadcast = redis needs the redis client: "
                                "pip install 'prefork[redis]'") from exc
    return redis


def redacted(url: str) -> str:
    """``url`` without its password, for logs."""
    return redact_url(url)


def read_password(path: str) -> str | None:
    """The first line of ``redis_password_file``, or None when no file is named."""
    if not path:
        return None
    with open(path, encoding="utf-8") as handle:
        return handle.readline().rstrip("\r\n")


def make_client(settings: BroadcastSettings) -> Any:
    """A ``redis.Redis`` for ``settings`` that fails fast instead of retrying on its own."""
    redis = import_redis()
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    options: dict[str, Any] = dict(socket_timeout=settings.redis_timeout,
                                   socket_connect_timeout=settings.redis_timeout,
                                   retry=Retry(NoBackoff(), 0), retry_on_timeout=False)
    password = settings.redis_password
    if password is None:
        password = read_password(settings.redis_password_file)
    if password is not None:
        options["password"] = password
    return redis.Redis.from_url(settings.redis_url, **options)


def startup_problem(settings: BroadcastSettings) -> str | None:
    """What makes ``broadcast = redis`` impossible to start with (the extra, the password file)."""
    try:
        import_redis()
        read_password(settings.redis_password_file)
    except RedisExtraMissing as exc:
        return str(exc)
    except OSError as exc:
        return f"[websocket] redis_password_file = {settings.redis_password_file!r}: {exc.strerror or exc}"
    return None


def probe(settings: BroadcastSettings) -> str | None:
    """None when Redis answers PING now, else why not (for a start-up warning)."""
    try:
        client = make_client(settings)
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:  # any client error is the answer
        return f"{type(exc).__name__}: {exc}"
    return None


@dataclass(slots=True)
class BroadcastCounts:
    """What one worker's Redis transport has done (monotonic, except ``connected``)."""

    connected: bool = False
    published: int = 0   # messages sent to Redis
    received: int = 0    # messages that came back from Redis (any server's)
    local_only: int = 0  # messages that reached this server's workers only (Redis away)
    dropped: int = 0     # messages lost: queue overflow, or a send that failed


class _Backoff:
    """Capped exponential backoff with jitter, waited on a stop event."""

    def __init__(self, stopped: threading.Event) -> None:
        self._stopped = stopped
        self._delay = BACKOFF_FIRST

    def wait(self) -> None:
        self._stopped.wait(self._delay * random.uniform(0.5, 1.0))
        self._delay = min(self._delay * 2, BACKOFF_CAP)

    def reset(self) -> None:
        self._delay = BACKOFF_FIRST


class RedisTransport:
    """Publishes every message to Redis and delivers what Redis sends back.

    Args:
        settings: the ``[websocket]`` broadcast settings.
        fallback: the transport used while Redis is away (the master's hub).
        deliver: called on the loop thread with each batch of (channel, message).
        defer: runs a callable on the loop thread (the worker's Wakeup.defer).
        on_counts: called with a copy of the counts whenever they change (any thread,
            serialised by the transport's lock).
        client_factory: makes a Redis client (tests); by default from ``settings``.
    """

    def __init__(self, settings: BroadcastSettings, fallback: Transport, deliver: DeliverBatch,
                 defer: Callable[..., None], on_counts: Callable[[BroadcastCounts], None] = lambda counts: None,
                 client_factory: Callable[[], Any] | None = None) -> None:
        self.settings = settings
        self.url = redacted(settings.redis_url)
        self._fallback = fallback
        self._deliver = deliver
        self._defer = defer
        self._on_counts = on_counts
        self._client_factory = client_factory or (lambda: make_client(settings))
        self._channel = f"{settings.redis_prefix}:broadcast"
        self._retained: dict[str, int] = {}
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._queue: deque[tuple[str, bytes]] = deque()
        self._queued_bytes = 0
        self._subscribed = False
        self._publisher_ok = False
        self._ever_connected = False
        self._told_oversized = False
        self._told_unreached = False
        self._loop_thread: int | None = None
        self._response_errors: set[str] = set()
        self._local_at_loss = 0
        self._stopped = threading.Event()
        self.counts = BroadcastCounts()
        self._threads: list[threading.Thread] = []
        self._backlog = 0  # bytes handed to the loop, not delivered yet
        self._in_flight = 0  # batches handed to the loop, not delivered yet
        self._delivered = threading.Condition(threading.Lock())
        self._history_client: Any = None

    # --- the application's side (any thread) -------------------------------------------
    def retain(self, channel: str, count: int) -> None:
        """Keep the last ``count`` messages of ``channel`` in Redis (before ``start``)."""
        self._retained[channel] = count

    def history_key(self, channel: str) -> str:
        """The Redis list holding ``channel``'s last messages, newest first."""
        return f"{self.settings.redis_prefix}:history:{channel}"

    def publish(self, channel: str, message: str | bytes) -> None:
        """Queue ``message`` for Redis; while Redis is away, deliver it on this server only."""
        frame = encode(channel, message)
        oversized = False
        with self._lock:
            if not (self._subscribed and self._publisher_ok):
                self._count(local_only=1)
                local = True
            elif len(frame) > self.settings.redis_queue:
                # bigger than the whole queue: dropped by itself, evicting nothing else
                local = False
                self._count(dropped=1)
                oversized = not self._told_oversized
                self._told_oversized = True
            else:
                local = False
                dropped = 0
                while self._queued_bytes + len(frame) > self.settings.redis_queue:
                    self._queued_bytes -= len(self._queue.popleft()[1])
                    dropped += 1
                self._queue.append((channel, frame))
                self._queued_bytes += len(frame)
                self._ready.notify()
                if dropped:
                    self._count(dropped=dropped)
        if local:
            self._fallback.publish(channel, message)
        if oversized:
            error_log.warning("broadcast: a %d-byte message on %r is larger than [websocket] redis_queue (%d): "
                              "dropped (logged once per worker)", len(frame), channel, self.settings.redis_queue)

    def history(self, channel: str) -> list[str | bytes] | None:
        """``channel``'s kept messages, oldest first; None when Redis cannot be asked.

        Blocks for a round trip to Redis: call it from a handler thread, not the loop.
        """
        count = self._retained.get(channel)
        if count is None or not self.connected or threading.get_ident() == self._loop_thread:
            return None  # on the loop (handlers without threads): never wait for Redis there
        try:
            if self._history_client is None:
                self._history_client = self._client_factory()
            frames = self._history_client.lrange(self.history_key(channel), 0, count - 1)
        except Exception as exc:  # any client error: the caller falls back to its own record
            error_log.info("broadcast: reading the history of %r from Redis at %s failed: %s", channel, self.url, exc)
            return None
        return [message for _channel, message in _decoded(reversed(frames))]

    @property
    def connected(self) -> bool:
        """Both connections are up: publishing goes to Redis."""
        return self._subscribed and self._publisher_ok

    # --- running --------------------------------------------------------------------------
    def start(self) -> None:
        """Start the publisher and subscriber threads (in the worker, after the fork, on its loop thread)."""
        self._loop_thread = threading.get_ident()
        for target, name in ((self._publish_loop, "redis-publish"), (self._subscribe_loop, "redis-subscribe")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 2.0) -> None:
        """Stop both threads (what is still queued is dropped and counted)."""
        self._stopped.set()
        with self._lock:
            self._ready.notify_all()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            if self._queue:
                self._count(dropped=len(self._queue))
                self._queue.clear()
                self._queued_bytes = 0

    def _count(self, **deltas: int) -> None:
        """Add to the counts (lock held) and report them."""
        for name, delta in deltas.items():
            setattr(self.counts, name, getattr(self.counts, name) + delta)
        self.counts.connected = self._subscribed and self._publisher_ok
        self._on_counts(BroadcastCounts(self.counts.connected, self.counts.published, self.counts.received,
                                        self.counts.local_only, self.counts.dropped))

    def _set_state(self, *, subscribed: bool | None = None, publisher_ok: bool | None = None,
                   reason: object = None) -> None:
        """Record a connection's state; log when the transport as a whole connects or is lost."""
        with self._lock:
            was = self.counts.connected  # every _count() leaves it current
            if subscribed is not None:
                self._subscribed = subscribed
            if publisher_ok is not None:
                self._publisher_ok = publisher_ok
            self._count()
            connected = self.counts.connected
            changed = connected != was
            first = connected and not self._ever_connected
            self._ever_connected = self._ever_connected or connected
            local_since = self.counts.local_only - self._local_at_loss
            if changed and not connected:
                self._local_at_loss = self.counts.local_only
            unreached = (not connected and not self._ever_connected and reason is not None
                         and not self._told_unreached)
            self._told_unreached = self._told_unreached or unreached
        if unreached:
            error_log.warning("broadcast: cannot reach Redis at %s (%s); messages reach this server's workers "
                              "only until it answers", self.url, _reason(reason))
        if changed and connected:
            error_log.info("broadcast: connected to Redis at %s%s", self.url,
                           "" if first else f"; {local_since} messages reached this server only meanwhile")
        elif changed:
            error_log.warning("broadcast: lost Redis at %s (%s); messages reach this server's workers only "
                              "until it is back", self.url, _reason(reason))

    # --- the publisher thread ---------------------------------------------------------
    def _publish_loop(self) -> None:
        backoff = _Backoff(self._stopped)
        client: Any = None
        while not self._stopped.is_set():
            if client is None or not self._publisher_ok:
                try:
                    client = client or self._client_factory()
                    client.ping()
                except Exception as exc:  # any failure to reach Redis: try again later
                    self._set_state(publisher_ok=False, reason=exc)
                    backoff.wait()
                    continue
                backoff.reset()
                self._set_state(publisher_ok=True)
            batch = self._next_batch()
            if not batch:
                continue
            try:
                published = self._send(client, batch)
            except Exception as exc:  # the batch may or may not have arrived: at most once, so drop it
                with self._lock:
                    # and what queued behind it: sent after the reconnection, it would arrive
                    # after messages that the gap kept local although published later
                    self._count(dropped=len(batch) + len(self._queue))
                    self._queue.clear()
                    self._queued_bytes = 0
                self._set_state(publisher_ok=False, reason=exc)
                _close(client)
                client = None
                continue
            with self._lock:
                self._count(published=published, dropped=len(batch) - published)
        _close(client)

    def _next_batch(self) -> list[tuple[str, bytes]]:
        with self._lock:
            while not self._queue and not self._stopped.is_set():
                self._ready.wait(1.0)
            batch: list[tuple[str, bytes]] = []
            while self._queue and len(batch) < PUBLISH_BATCH:
                item = self._queue.popleft()
                self._queued_bytes -= len(item[1])
                batch.append(item)
            return batch

    def _send(self, client: Any, batch: list[tuple[str, bytes]]) -> int:
        """Publish ``batch`` in one transaction; returns how many PUBLISH commands Redis took.

        An error reply (a history key of another type, OOM, a read-only replica) is Redis
        refusing commands, not a lost connection: logged once per kind, the connection
        and the queue kept. Raises when the connection fails.
        """
        redis = import_redis()
        pipe = client.pipeline(transaction=True)
        publishes = []
        for channel, frame in batch:
            publishes.append(len(pipe))
            pipe.publish(self._channel, frame)
            keep = self._retained.get(channel)
            if keep:
                key = self.history_key(channel)
                pipe.lpush(key, frame)
                pipe.ltrim(key, 0, keep - 1)
        try:
            replies = pipe.execute(raise_on_error=False)
        except redis.exceptions.ResponseError as exc:  # the whole transaction refused (EXECABORT)
            self._refused(exc)
            return 0
        for reply in replies:
            if isinstance(reply, Exception):
                self._refused(reply)
        return sum(1 for index in publishes if not isinstance(replies[index], Exception))

    def _refused(self, error: Exception) -> None:
        kind = _reason(error).split(" ", 1)[0]
        if kind not in self._response_errors:  # publisher thread only
            self._response_errors.add(kind)
            error_log.warning("broadcast: Redis at %s refused a command: %s (logged once per kind of error)",
                              self.url, _reason(error))

    # --- the subscriber thread --------------------------------------------------------
    def _subscribe_loop(self) -> None:
        backoff = _Backoff(self._stopped)
        while not self._stopped.is_set():
            pubsub: Any = None
            try:
                pubsub = self._client_factory().pubsub()
                pubsub.subscribe(self._channel)
                self._listen(pubsub, backoff)
            except Exception as exc:  # lost, or never reached: reconnect after a pause
                self._set_state(subscribed=False, reason=exc)
                if pubsub is not None:
                    _close(pubsub)
                backoff.wait()

    def _listen(self, pubsub: Any, backoff: _Backoff) -> None:
        """Deliver until stopped; raises when Redis is lost (an error, or silence past the timeout)."""
        timeout = self.settings.redis_timeout
        heard = time.monotonic()
        pinged = 0.0
        while not self._stopped.is_set():
            message = pubsub.get_message(timeout=min(1.0, timeout))
            now = time.monotonic()
            if message is None:
                if pinged and now - pinged > timeout:
                    raise TimeoutError(f"no answer to PING within {timeout:g}s")
                if not pinged and now - heard > timeout:
                    pubsub.ping()
                    pinged = now
                continue
            heard, pinged = now, 0.0
            batch: list[tuple[str, str | bytes]] = []
            batch_bytes = 0
            while message is not None:
                kind = message.get("type")
                if kind == "subscribe":
                    backoff.reset()
                    self._set_state(subscribed=True)
                elif kind == "message":
                    batch.extend(_decoded([message["data"]]))
                    batch_bytes += len(message["data"])
                if len(batch) >= DELIVERY_BATCH or batch_bytes >= DELIVERY_BACKLOG // 4:
                    break
                message = pubsub.get_message(timeout=0)
            if batch:
                with self._lock:
                    self._count(received=len(batch))
                self._hand_to_loop(batch)
                heard = time.monotonic()  # a wait for the loop is no silence of Redis
        _close(pubsub)

    def _hand_to_loop(self, batch: list[tuple[str, str | bytes]]) -> None:
        """Defer ``batch`` to the loop, first waiting while the loop is DELIVERY_BACKLOG or
        BATCHES_IN_FLIGHT behind."""
        size = sum(len(message) for _channel, message in batch)
        with self._delivered:
            while ((self._backlog >= DELIVERY_BACKLOG or self._in_flight >= BATCHES_IN_FLIGHT)
                   and not self._stopped.is_set()):
                self._delivered.wait(0.5)
            self._backlog += size
            self._in_flight += 1
        self._defer(self._deliver_on_loop, batch, size)

    def _deliver_on_loop(self, batch: list[tuple[str, str | bytes]], size: int) -> None:
        try:
            self._deliver(batch)
        finally:
            with self._delivered:
                self._backlog -= size
                self._in_flight -= 1
                self._delivered.notify()


def _decoded(frames: Iterable[bytes]) -> list[tuple[str, str | bytes]]:
    """Decode frames from Redis; one that is not ours (another program on the channel) is logged and skipped."""
    decoded = []
    for frame in frames:
        try:
            decoded.append(decode(frame))
        except (ValueError, TypeError) as exc:
            error_log.warning("broadcast: skipping a message from Redis that is not a prefork frame: %s", exc)
    return decoded


def _reason(error: object) -> str:
    """An error for the log: redis-py quotes the failed command, a message included; keep Redis's words only."""
    text = str(error)
    return text.rpartition(" caused error: ")[2] if " caused error: " in text else text


def _close(resource: Any) -> None:
    if resource is None:
        return
    try:
        resource.close()
    except Exception as exc:  # closing a broken connection: nothing more to do with it
        error_log.debug("broadcast: closing a Redis connection: %s", exc)
