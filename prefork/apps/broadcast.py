"""WebSocket broadcast across workers: a hub in the master, a link in each worker.

Strategy: every worker holds one end of a Unix stream socketpair whose other
end the master keeps. ``publish`` sends a length-prefixed frame (channel,
message) up the link; the master's ``Hub`` copies each frame to every
worker's link, the publisher's included, and each worker delivers it to its
own subscribers. One hub and ordered streams give every subscriber every
message exactly once, in the order each publisher sent them, and a respawned
worker simply gets a new link. The transport sits behind ``Transport`` so a
Redis pub/sub transport can replace the hub for several machines. Nothing
here is a module global: the worker owns its transport and its
``Subscribers`` (who receives each channel in this process) and hands the
transport to the application in its ``prefork.apps.runtime.Runtime``.

Frame: ``!IBH`` = total length of what follows, kind (0 text, 1 bytes),
channel length; then the channel (UTF-8) and the payload.
"""

from __future__ import annotations

import socket
import struct
import threading
from collections import deque
from collections.abc import Callable
from typing import Protocol

from prefork.config.logs import error_log

_HEAD = struct.Struct("!IBH")
# A worker that stops reading its link must not make the master hold unbounded data.
MAX_LINK_BACKLOG = 256 * 1024 * 1024
Deliver = Callable[[str, "str | bytes"], None]


def encode(channel: str, message: str | bytes) -> bytes:
    """Frame one broadcast message."""
    name = channel.encode("utf-8")
    if isinstance(message, str):
        kind, payload = 0, message.encode("utf-8")
    else:
        kind, payload = 1, bytes(message)
    return _HEAD.pack(1 + 2 + len(name) + len(payload), kind, len(name)) + name + payload


def decode(frame: bytes) -> tuple[str, str | bytes]:
    """The (channel, message) of one whole frame.

    Raises:
        ValueError: not exactly one well-formed frame.
    """
    if len(frame) < _HEAD.size:
        raise ValueError("broadcast frame shorter than its head")
    length, kind, name_len = _HEAD.unpack_from(frame, 0)
    if length + 4 != len(frame) or _HEAD.size + name_len > len(frame) or kind not in (0, 1):
        raise ValueError("malformed broadcast frame")
    channel = frame[_HEAD.size:_HEAD.size + name_len].decode("utf-8")
    payload = frame[_HEAD.size + name_len:]
    return channel, (payload.decode("utf-8") if kind == 0 else bytes(payload))


class FrameReader:
    """Incremental decoder of broadcast frames from a byte stream."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[str, str | bytes, bytes]]:
        """Add bytes; return complete (channel, message, raw frame) triples."""
        self._buffer += data
        frames = []
        offset = 0
        buffer = self._buffer
        while len(buffer) - offset >= _HEAD.size:
            length, kind, name_len = _HEAD.unpack_from(buffer, offset)
            end = offset + 4 + length
            if len(buffer) < end:
                break
            start = offset + _HEAD.size
            channel = buffer[start:start + name_len].decode("utf-8")
            payload = bytes(buffer[start + name_len:end])
            message: str | bytes = payload.decode("utf-8") if kind == 0 else payload
            frames.append((channel, message, bytes(buffer[offset:end])))
            offset = end
        del buffer[:offset]
        return frames


class Transport(Protocol):
    """How a worker's published messages reach every worker."""

    def publish(self, channel: str, message: str | bytes) -> None:
        """Send a message to all workers (this one included); thread-safe."""

    def retain(self, channel: str, count: int) -> None:
        """Keep the last ``count`` messages of ``channel`` where every worker can read them."""

    def history(self, channel: str) -> list[str | bytes] | None:
        """The kept messages of ``channel``, oldest first; None: this transport keeps none
        (each worker's ``Subscribers`` record is the history)."""


class _Link:
    """One non-blocking stream socket with an output queue."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.out: deque[bytes] = deque()
        self.out_bytes = 0
        self.reader = FrameReader()
        self.eof = False

    def fileno(self) -> int:
        return self.sock.fileno()

    def queue(self, data: bytes) -> None:
        self.out.append(data)
        self.out_bytes += len(data)

    def flush(self) -> bool:
        """Write what the socket takes; True when nothing is left (or the peer is gone)."""
        while self.out:
            try:
                sent = self.sock.send(self.out[0])
            except (BlockingIOError, InterruptedError):
                return False
            except OSError:  # the other side exited: drop what was meant for it
                self.eof = True
                self.out.clear()
                self.out_bytes = 0
                return True
            self.out_bytes -= sent
            if sent == len(self.out[0]):
                self.out.popleft()
            else:
                self.out[0] = self.out[0][sent:]
        return True

    def receive(self) -> bytes | None:
        """Read what is there; None at EOF or error."""
        try:
            data = self.sock.recv(256 * 1024)
        except (BlockingIOError, InterruptedError):
            return b""
        except OSError:
            return None
        return data or None


class Hub:
    """The master's side: fans every frame from any worker out to all workers."""

    def __init__(self, on_error: Callable[[str], None] = lambda message: None) -> None:
        self.links: dict[int, _Link] = {}
        self._on_error = on_error

    def pair(self) -> tuple[socket.socket, socket.socket]:
        """A new (master end, worker end) socketpair for a worker about to be forked."""
        return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)

    def attach(self, pid: int, master_end: socket.socket) -> None:
        """Start serving a forked worker's link."""
        self.links[pid] = _Link(master_end)

    def detach(self, pid: int) -> None:
        """Forget a dead worker's link."""
        link = self.links.pop(pid, None)
        if link is not None:
            link.sock.close()

    def close_inherited(self) -> None:
        """In a freshly forked worker: close the master's ends of every other link."""
        for link in self.links.values():
            link.sock.close()
        self.links.clear()

    def readers(self) -> list[_Link]:
        """Links to watch for reading."""
        return [link for link in self.links.values() if not link.eof]

    def writers(self) -> list[_Link]:
        """Links with output pending."""
        return [link for link in self.links.values() if link.out and not link.eof]

    def on_readable(self, link: _Link) -> None:
        """Relay every complete frame from ``link`` to all links."""
        data = link.receive()
        if data is None:
            link.eof = True  # the worker is gone; the reaper detaches it
            return
        for _channel, _message, raw in link.reader.feed(data):
            for target in self.links.values():
                if target.eof:
                    continue
                if target.out_bytes + len(raw) > MAX_LINK_BACKLOG:
                    self._on_error(f"broadcast link to worker {target.sock.fileno()} is over "
                                   f"{MAX_LINK_BACKLOG} bytes behind; dropping a message for it")
                    continue
                target.queue(raw)
        for target in self.links.values():
            target.flush()

    def on_writable(self, link: _Link) -> None:
        """Continue writing to a link."""
        link.flush()


class WorkerLink:
    """A worker's side of the hub link: publishes up, delivers what comes down.

    Args:
        sock: the worker's end of the socketpair.
        deliver: called on the loop thread with each (channel, message).
        defer: runs a callable on the loop thread (the worker's Wakeup.defer).
    """

    def __init__(self, sock: socket.socket, deliver: Deliver,
                 defer: Callable[..., None]) -> None:
        self.link = _Link(sock)
        self.deliver = deliver
        self.defer = defer
        self.on_blocked: Callable[[bool], None] = lambda blocked: None
        self.on_eof: Callable[[], None] = lambda: None

    def fileno(self) -> int:
        """The link's file descriptor."""
        return self.link.fileno()

    def publish(self, channel: str, message: str | bytes) -> None:
        """Thread-safe: the frame is written by the loop thread."""
        self.defer(self._send, encode(channel, message))

    def retain(self, channel: str, count: int) -> None:
        """The hub keeps no history: each worker records what reaches it."""

    def history(self, channel: str) -> list[str | bytes] | None:
        """None: see ``Subscribers.recent``."""
        return None

    def _send(self, frame: bytes) -> None:
        self.link.queue(frame)
        self.on_blocked(not self.link.flush())

    def on_readable(self) -> None:
        """Deliver every complete frame."""
        data = self.link.receive()
        if data is None:
            self.on_eof()  # the master is gone: stop watching a socket that stays readable
            return
        for channel, message, _raw in self.link.reader.feed(data):
            self.deliver(channel, message)

    def on_writable(self) -> None:
        """Continue a blocked write."""
        self.on_blocked(not self.link.flush())


class LocalTransport:
    """Delivery within this process only (no server, e.g. unit tests of an App)."""

    def __init__(self, deliver: Deliver) -> None:
        self.deliver = deliver

    def publish(self, channel: str, message: str | bytes) -> None:
        """Deliver at once."""
        self.deliver(channel, message)

    def retain(self, channel: str, count: int) -> None:
        """Nothing beyond this process: ``Subscribers`` records the history."""

    def history(self, channel: str) -> list[str | bytes] | None:
        """None: see ``Subscribers.recent``."""
        return None


class Subscriber(Protocol):
    """A WebSocket session, as the registry sees it."""

    @property
    def ended(self) -> bool:
        """Closed, or its handler was already told the connection ended."""
        ...

    def send_message(self, message: str | bytes) -> None:
        """Queue one message to the client."""
        ...


class Subscribers:
    """One worker's broadcast registry: who receives each channel in this process.

    A channel's members are WebSocket sessions; its observers are callbacks that
    see every message on it whether anyone is subscribed or not (e.g. to keep a
    chat history). The worker owns one instance and delivers every message that
    reaches it, from its transport, here. Loop thread only: sessions subscribe
    through the loop's ``defer``, and applications register observers when they
    are bound (``App.bind``), before the loop runs; so no lock is needed.
    """

    def __init__(self) -> None:
        self._members: dict[str, set[Subscriber]] = {}
        self._observers: dict[str, list[Deliver]] = {}
        self._recent: dict[str, deque[str | bytes]] = {}
        self._recent_lock = threading.Lock()  # ``recent`` is read from handler threads

    def retain(self, channel: str, count: int) -> None:
        """Record the last ``count`` messages of ``channel`` that reach this worker."""
        with self._recent_lock:
            old = self._recent.get(channel, ())
            self._recent[channel] = deque(old, maxlen=count)

    def recent(self, channel: str) -> list[str | bytes]:
        """What ``retain`` recorded of ``channel``, oldest first (any thread)."""
        with self._recent_lock:
            return list(self._recent.get(channel, ()))

    def subscribe(self, session: Subscriber, channel: str) -> None:
        """Add ``session`` to ``channel``; a session that has ended is not added."""
        if not session.ended:
            self._members.setdefault(channel, set()).add(session)

    def unsubscribe(self, session: Subscriber, channel: str | None) -> None:
        """Remove ``session`` from ``channel``, or from every channel when it is None."""
        names = [channel] if channel is not None else list(self._members)
        for name in names:
            members = self._members.get(name)
            if members is not None:
                members.discard(session)
                if not members:
                    del self._members[name]

    def members(self, channel: str) -> frozenset[Subscriber]:
        """The sessions subscribed to ``channel`` now."""
        return frozenset(self._members.get(channel, ()))

    def observe(self, channel: str, callback: Deliver) -> None:
        """Call ``callback(channel, message)`` for every message on ``channel``
        (once, however often it is registered); it runs on the loop and must be quick."""
        callbacks = self._observers.setdefault(channel, [])
        if callback not in callbacks:
            callbacks.append(callback)

    def observers(self, channel: str) -> list[Deliver]:
        """The callbacks registered for ``channel``."""
        return list(self._observers.get(channel, ()))

    def deliver(self, channel: str, message: str | bytes) -> None:
        """A message reached this worker: to the observers first, then to every member.

        An observer that raises is logged and does not keep the message from the
        others or from the sessions.
        """
        recent = self._recent.get(channel)
        if recent is not None:
            with self._recent_lock:
                recent.append(message)
        for observer in self._observers.get(channel, ()):
            try:
                observer(channel, message)
            except Exception as exc:
                error_log.error("broadcast observer for %r failed: %s", channel, exc, exc_info=exc)
        for session in list(self._members.get(channel, ())):
            session.send_message(message)

