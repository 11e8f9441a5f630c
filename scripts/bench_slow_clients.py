"""Slow clients for ``scripts/bench.py slow``: slowloris heads and slow bodies, held open.

Strategy: one thread drives every socket from one ``selectors`` loop ticking
four times a second, so 550 slow connections cost the benchmark process almost
nothing. A slowloris socket sends a request line and Host, then one byte of an
endless header value per second; a slow-body socket sends a complete head with
``Content-Length: 10 MiB`` and then a few KiB/s of body. A socket the server
closes (or answers, e.g. 408 when its ``header_timeout`` expires) is counted
and replaced, so the load stays at full strength for the whole measurement;
``stats()`` says how many of the original sockets were still open.

Usage::

    with SlowClients(port, slowloris=500, slow_body=50) as slow:
        slow.wait_connected()
        ...                      # measure something
        print(slow.stats())
"""

from __future__ import annotations

import selectors
import socket
import threading
import time
from dataclasses import dataclass

HOST = "127.0.0.1"
TICK = 0.25  # seconds between sends
BODY_SIZE = 10 * 1024 * 1024  # declared Content-Length of a slow body
BODY_PER_TICK = 512  # bytes per slow-body socket per tick: 2 KiB/s
MAX_RECONNECTS = 20_000  # bound on replacements over the whole run


@dataclass
class _Slow:
    kind: str  # "loris" or "body"
    index: int
    sock: socket.socket
    original: bool
    sent: int = 0


class SlowClients:
    """``slowloris`` header-dripping sockets and ``slow_body`` body-dripping sockets to ``port``."""

    def __init__(self, port: int, slowloris: int = 500, slow_body: int = 50, path: str = "/") -> None:
        self.port = port
        self.counts = {"loris": slowloris, "body": slow_body}
        self.path = path
        self.sel = selectors.DefaultSelector()
        self.slots: dict[tuple[str, int], _Slow] = {}
        self.closed_by_server = {"loris": 0, "body": 0}
        self.reconnects = 0
        self.connect_errors = 0
        self.first_answers: list[bytes] = []
        self.bytes_sent = 0
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="slow-clients", daemon=True)
        self._lock = threading.Lock()

    # -- sockets ---------------------------------------------------------------
    def _head(self, kind: str, index: int) -> bytes:
        if kind == "loris":
            return (f"GET {self.path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\nX-Slow-{index}: ").encode()
        return (f"POST {self.path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {BODY_SIZE}\r\n\r\n").encode()

    def _open(self, kind: str, index: int, original: bool) -> None:
        try:
            sock = socket.create_connection((HOST, self.port), timeout=5)
            sock.sendall(self._head(kind, index))
            sock.setblocking(False)
        except OSError:
            self.connect_errors += 1
            return
        slot = _Slow(kind, index, sock, original)
        self.slots[(kind, index)] = slot
        self.sel.register(sock, selectors.EVENT_READ, slot)

    def _drop(self, slot: _Slow, answer: bytes = b"") -> None:
        self.closed_by_server[slot.kind] += 1
        if answer and len(self.first_answers) < 5:
            self.first_answers.append(answer[:80])
        self.sel.unregister(slot.sock)
        slot.sock.close()
        del self.slots[(slot.kind, slot.index)]
        if self.reconnects < MAX_RECONNECTS and not self._stop.is_set():
            self.reconnects += 1
            self._open(slot.kind, slot.index, original=False)

    # -- the loop ----------------------------------------------------------------
    def _run(self) -> None:
        for kind, n in self.counts.items():
            for i in range(n):
                self._open(kind, i, original=True)
        self._ready.set()
        tick = 0
        body_piece = b"x" * BODY_PER_TICK
        next_tick = time.monotonic()
        while not self._stop.is_set():
            # Server closes and answers: read them, replace the socket.
            timeout = max(0.0, next_tick - time.monotonic())
            for key, _ in self.sel.select(timeout):
                slot: _Slow = key.data
                try:
                    data = slot.sock.recv(4096)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                with self._lock:
                    self._drop(slot, data)
            if time.monotonic() < next_tick:
                continue
            next_tick += TICK
            tick += 1
            with self._lock:
                for slot in list(self.slots.values()):
                    if slot.kind == "loris":
                        if slot.index % 4 != tick % 4:  # one byte per second, spread over the ticks
                            continue
                        piece = b"a"
                    else:
                        if slot.sent + BODY_PER_TICK >= BODY_SIZE:
                            continue  # never complete the body
                        piece = body_piece
                    try:
                        n = slot.sock.send(piece)
                    except BlockingIOError:
                        continue
                    except OSError:
                        self._drop(slot)
                        continue
                    slot.sent += n
                    self.bytes_sent += n

    def wait_connected(self, timeout: float = 30.0) -> bool:
        return self._ready.wait(timeout)

    def stats(self) -> dict[str, float]:
        """Sockets open now (all, and those never replaced), closes by the server, replacements."""
        with self._lock:
            open_now = len(self.slots)
            originals = sum(1 for s in self.slots.values() if s.original)
            return {"slow_open": float(open_now), "slow_open_original": float(originals),
                    "slow_total": float(sum(self.counts.values())),
                    "slow_closed_loris": float(self.closed_by_server["loris"]),
                    "slow_closed_body": float(self.closed_by_server["body"]),
                    "slow_connect_errors": float(self.connect_errors),
                    "slow_kib_sent": self.bytes_sent / 1024}

    def __enter__(self) -> SlowClients:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        for slot in list(self.slots.values()):
            slot.sock.close()
        self.slots.clear()
        self.sel.close()
