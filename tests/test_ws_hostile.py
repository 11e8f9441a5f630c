"""Issue 12, WebSocket: hostile peers against the real server (``tests.apps.ws_echo``).

Strategy: the raw client of ``tests/test_server_websocket.py`` (handshake by
hand, frames masked there), so the bytes on the wire are exactly the attack's.
The memory cases (a ping flood from a peer that never reads; unfinished
compressed messages on many connections) sample the worker's RSS with psutil
while the attack runs and bound its growth generously; each also checks the
answer the peer gets and the one log line that says why. Handshake cases:
every Upgrade token counts, and a cross-origin browser is refused by default.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable

import psutil
import pytest

from tests.server import Server, request, wait_for
from tests.test_server_websocket import (
    APP,
    BINARY,
    CLOSE,
    CONT,
    PING,
    PONG,
    TEXT,
    RawWS,
    accept_value,
    frame,
    handshake,
    raw_ws,
)

MiB = 1 << 20


class PeakRss:
    """The worker's peak RSS, sampled every 10 ms in a thread while the block runs."""

    def __init__(self, proc: psutil.Process) -> None:
        self.proc = proc
        self.base = proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except psutil.NoSuchProcess:
                return

    @property
    def growth(self) -> int:
        return self.peak - self.base

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def frames_until_close(sock: socket.socket) -> tuple[int, int, bytes]:
    """Read server frames (offsets into one buffer: megabytes of pongs are cheap) up to a close.

    Returns:
        (frames before the close, the close code, the close reason).
    """
    buf, pos, count = bytearray(), 0, 0
    while True:
        while True:
            if len(buf) - pos < 2:
                break
            b0, b1 = buf[pos], buf[pos + 1]
            n, head = b1 & 0x7F, 2
            if n == 126:
                if len(buf) - pos < 4:
                    break
                n, head = struct.unpack_from("!H", buf, pos + 2)[0], 4
            if len(buf) - pos < head + n:
                break
            payload = bytes(buf[pos + head : pos + head + n])
            pos += head + n
            if b0 & 0x0F == CLOSE:
                return count, struct.unpack("!H", payload[:2])[0], payload[2:]
            count += 1
        del buf[:pos]
        pos = 0
        data = sock.recv(1 << 20)
        if not data:
            raise EOFError(f"no close frame after {count} frames")
        buf += data


def upgrade_request(*lines: str, host: str = "127.0.0.1") -> tuple[bytes, str]:
    """A handshake with the given extra header lines (Upgrade included) and its key."""
    key = base64.b64encode(os.urandom(16)).decode()
    head = ["GET / HTTP/1.1", f"Host: {host}", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
            f"Sec-WebSocket-Key: {key}", *lines]
    return ("\r\n".join(head) + "\r\n\r\n").encode(), key


@pytest.fixture(scope="module")
def default_server(start_module_server: Callable[..., Server]) -> Server:
    """Shipped WebSocket defaults (one worker)."""
    return start_module_server(app=APP, workers=1)


# --- handshake ----------------------------------------------------------------------------


@pytest.mark.parametrize("upgrade", ["foo, websocket", "h2c, WebSocket", "WEBSOCKET"])
def test_websocket_anywhere_in_upgrade_is_an_upgrade(default_server: Server, upgrade: str) -> None:
    data, key = upgrade_request(f"Upgrade: {upgrade}")
    with RawWS(default_server.connect(10)) as client:
        client.send(data)
        head = client.read_head()
        assert head.status == 101, head.raw_head
        assert head.header("sec-websocket-accept") == accept_value(key)
        client.send(frame(TEXT, b"upgraded"))
        assert client.recv_data() == (TEXT, b"upgraded")


def test_upgrade_without_websocket_is_plain_http(default_server: Server) -> None:
    data, _key = upgrade_request("Upgrade: foo, h2c")
    resp = request(default_server, data)
    assert (resp.status, resp.body) == (200, b"ws echo")


def test_cross_origin_browser_is_403_by_default(default_server: Server) -> None:
    host = f"127.0.0.1:{default_server.port}"
    data, _key = upgrade_request("Upgrade: websocket", "Origin: http://evil.example", host=host)
    resp = request(default_server, data)
    assert resp.status == 403
    wait_for(lambda: f"cross-origin handshake: Origin 'http://evil.example' is not Host '{host}'"
             in default_server.output(), 5, what="the 403 logged")
    lines = [line for line in default_server.output().splitlines() if "evil.example" in line]
    assert len(lines) == 1, lines  # one line, no traceback
    # Same origin (what a browser sends for a page served here), and no Origin at all.
    for origin in [f"Origin: http://{host}", f"Origin: HTTP://127.0.0.1:{default_server.port}"]:
        data, key = upgrade_request("Upgrade: websocket", origin, host=host)
        with RawWS(default_server.connect(10)) as client:
            client.send(data)
            assert client.read_head().status == 101
            client.send(frame(TEXT, b"welcome"))
            assert client.recv_data() == (TEXT, b"welcome")
    with raw_ws(default_server) as (client, _head):
        client.send(frame(TEXT, b"no origin"))
        assert client.recv_data() == (TEXT, b"no origin")


def test_star_allows_every_origin(start_server: Callable[..., Server]) -> None:
    server = start_server(app=APP, workers=1, config={"websocket": "allowed_origins = *"})
    with raw_ws(server, origin="http://anywhere.example") as (client, _head):
        client.send(frame(TEXT, b"any"))
        assert client.recv_data() == (TEXT, b"any")


# --- a ping flood from a peer that never reads ---------------------------------------------

FLOOD = 96 * MiB


def test_ping_flood_from_a_peer_that_never_reads(start_server: Callable[..., Server]) -> None:
    """Issue 12 High 2: 400 MB of 125-byte pings, never reading, took the worker from 23 to
    322 MiB. Now the pongs it cannot send are coalesced (RFC 6455 §5.5.3), count against
    send_buffer, and the peer is closed with 1008 and one log line."""
    server = start_server(app=APP, workers=1, config={"websocket": "send_buffer = 1MiB\nclose_timeout = 5s"})
    (worker,) = server.workers()
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)  # before connect: a small window
    sock.settimeout(20)
    sock.connect(("127.0.0.1", server.port))
    client = RawWS(sock)
    data, _key = handshake()
    client.send(data)
    assert client.read_head().status == 101
    block = b"".join(frame(PING, os.urandom(125)) for _ in range(8192))  # 1 MiB of pings
    sent = 0
    with PeakRss(worker) as rss:
        try:
            while sent < FLOOD and "send buffer over" not in server.output():
                client.send(block)
                sent += len(block)
        except OSError:  # the server may give up on us before we stop
            pass
    assert rss.growth < 64 * MiB, f"worker RSS grew by {rss.growth / MiB:.1f} MiB after {sent / MiB:.0f} MiB of pings"
    wait_for(lambda: "send buffer over 1048576 bytes" in server.output(), 10, what="the 1008 close logged")
    lines = [line for line in server.output().splitlines() if "send buffer over" in line]
    assert len(lines) == 1 and "for a peer that does not read; closing 1008" in lines[0], lines
    assert "Traceback" not in server.output()
    pongs, code, reason = frames_until_close(sock)  # the pongs the kernel held, then the close
    assert (code, reason) == (1008, b"send buffer overflow"), (pongs, code, reason)
    assert sent < FLOOD, "the server read every ping"
    client.close()
    assert [p.pid for p in server.workers()] == [worker.pid]


# --- unfinished compressed messages ---------------------------------------------------------

CONNECTIONS = 10
EACH = 15 * MiB  # inflated, per connection: under max_message_size, so only the budget can stop it
BUDGET_REASON = b"unfinished compressed messages would hold over 67108864 bytes of this worker's inflate budget"


def deflate_start(size: int) -> bytes:
    """The first frame of a compressed message that never ends: ``size`` zero bytes inflated."""
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    payload = comp.compress(bytes(size)) + comp.flush(zlib.Z_SYNC_FLUSH)
    return frame(BINARY, payload, fin=False, rsv=4)


def test_unfinished_compressed_messages_are_bounded_per_worker(start_server: Callable[..., Server]) -> None:
    """Issue 12 Medium 4: 10 connections, 0.6 MB of never-finished deflate, ~615 MiB held.
    Now the worker's inflate_budget (64 MiB by default) bounds their sum: the connection
    that would go past it is closed with 1009 and one log line."""
    server = start_server(app=APP, workers=1, config={"websocket": "max_message_size = 16MiB"})
    (worker,) = server.workers()
    start = deflate_start(EACH)
    assert len(start) < 64 * 1024
    clients: list[RawWS] = []
    closed: list[tuple[int, bytes]] = []
    try:
        with PeakRss(worker) as rss:
            for _ in range(CONNECTIONS):
                client = RawWS(server.connect(10))
                clients.append(client)
                data, _key = handshake(extensions="permessage-deflate")
                client.send(data)
                head = client.read_head()
                assert head.status == 101 and "permessage-deflate" in (head.header("sec-websocket-extensions") or "")
                client.send(start)
            for client in clients:  # each message is held (the ping is answered) or refused
                client.send(frame(PING, b"still there?"))
                opcode, payload, _fin, _rsv = client.recv_frame()
                if opcode == CLOSE:
                    closed.append((struct.unpack("!H", payload[:2])[0], payload[2:]))
                else:
                    assert (opcode, payload) == (PONG, b"still there?")
    finally:
        for client in clients:
            client.close()
    # The budget, plus the inflate of one piece in flight (its output blocks and their
    # join); it was 10 x 15 MiB and more before.
    assert rss.growth < 64 * MiB + 3 * 16 * MiB, f"worker RSS grew by {rss.growth / MiB:.1f} MiB"
    assert len(closed) >= CONNECTIONS - 64 // 15, closed
    assert set(closed) == {(1009, BUDGET_REASON)}, closed
    wait_for(lambda: server.output().count("inflate budget; closing 1009") == len(closed), 5,
             what="one log line per refused connection")
    assert "Traceback" not in server.output()


def test_message_not_finished_in_time_is_1008(start_server: Callable[..., Server]) -> None:
    server = start_server(app=APP, workers=1, config={"websocket": "message_timeout = 1s"})
    with raw_ws(server) as (client, _head):
        started = time.monotonic()
        client.send(frame(TEXT, b"the start of a message that never ends", fin=False))
        assert client.expect_close(1008) == b"message not finished within 1 s"
        assert 0.9 < time.monotonic() - started < 5
    wait_for(lambda: "message not finished within 1 s; closing 1008" in server.output(), 5,
             what="the timeout logged")
    with raw_ws(server) as (client, _head):  # a message finished in time is not affected
        client.send(frame(TEXT, b"split ", fin=False))
        client.send(frame(CONT, b"but finished"))
        assert client.recv_data() == (TEXT, b"split but finished")
