"""A real redis-server on a loopback port for tests (Debian's, installed by .ci/run), and a
``Node``: one worker's Redis broadcast transport, driven by the test instead of a loop.

The server is started with no persistence and stopped by its PID; ``pause``/``resume``
freeze it with SIGSTOP/SIGCONT to play a slow or hung Redis, ``stop``/``start`` play an
outage on the same port.
"""

from __future__ import annotations

import queue
import shutil
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from prefork.apps.broadcast_redis import BroadcastCounts, RedisTransport
from prefork.config.settings import BroadcastSettings
from tests.server import free_port, wait_for

STOP_TIMEOUT = 10.0
WAIT = 20.0


def redis_server_path() -> str:
    path = shutil.which("redis-server") or shutil.which("redis-server", path="/usr/bin:/usr/sbin")
    if path is None:
        pytest.fail("redis-server is not installed (.ci/run installs Debian's redis-server)")
    return path


class RedisServer:
    """One redis-server process on 127.0.0.1 (``port`` stays the same across restarts)."""

    def __init__(self, tmp: Path, port: int | None = None) -> None:
        self.tmp = tmp
        self.port = port or free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log = tmp / f"redis-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        """Start (again) on the same port, empty: nothing is persisted."""
        args = [redis_server_path(), "--port", str(self.port), "--bind", "127.0.0.1",
                "--save", "", "--appendonly", "no", "--daemonize", "no", "--dir", str(self.tmp),
                "--logfile", str(self.log)]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        proc = self.proc
        wait_for(lambda: proc.poll() is not None or self.ping(), 20)
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode}: "
                               f"{self.log.read_text() if self.log.exists() else ''}")

    def ping(self) -> bool:
        """True when the server answers PING."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False

    def pause(self) -> None:
        """Freeze the server: connections stay open, nothing is answered."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        """Stop by PID (a paused server is woken first so that it can exit)."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGCONT)
        proc.terminate()
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT)


class Node:
    """One worker's transport; ``received`` is what its loop was handed, in order."""

    def __init__(self, settings: BroadcastSettings) -> None:
        self.loop: queue.Queue[Any] = queue.Queue()
        self.received: list[tuple[str, str | bytes]] = []
        self.local: list[tuple[str, str | bytes]] = []
        self.reported: list[BroadcastCounts] = []

        class Fallback:
            def publish(inner, channel: str, message: str | bytes) -> None:
                self.local.append((channel, message))

            def retain(inner, channel: str, count: int) -> None:
                pass

            def history(inner, channel: str) -> list[str | bytes] | None:
                return None

        def defer(fn: Any, *args: Any) -> None:
            self.loop.put((fn, args))

        self.transport = RedisTransport(settings, Fallback(), self.received.extend, defer, self.reported.append)

    def run_loop(self) -> None:
        """Run what the transport handed to the loop so far."""
        while True:
            try:
                fn, args = self.loop.get_nowait()
            except queue.Empty:
                return
            fn(*args)

    def has(self, count: int) -> bool:
        self.run_loop()
        return len(self.received) >= count


def from_handler(fn: Any, *args: Any) -> Any:
    """``fn(*args)`` on another thread, as a handler thread calls it (``start`` ran on this one: the loop)."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(fn(*args)))
    thread.start()
    thread.join(WAIT)
    return result[0]


def settings_for(url: str, **overrides: Any) -> BroadcastSettings:
    values: dict[str, Any] = dict(backend="redis", redis_url=url, redis_prefix=f"t{free_port()}",
                                  redis_timeout=1.0)
    values.update(overrides)
    return BroadcastSettings(**values)


def start(made: list[Node], settings: BroadcastSettings, *, connected: bool = True) -> Node:
    node = Node(settings)
    made.append(node)
    node.transport.start()
    if connected:
        wait_for(lambda: node.transport.connected, WAIT)
    return node
