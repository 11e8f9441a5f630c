"""WebSockets end to end against the real server (``tests.apps.ws_echo``).

Strategy: ``websocket-client`` where only messages matter (echo sizes,
broadcast); a hand-written raw client (``RawWS``: handshake by hand, frames
masked here, independent of ``prefork.protocol.websocket``) where the bytes on the wire
matter: many frames in one write, one byte per write, handshake and frame in
one write, protocol violations, permessage-deflate, pings nobody answers, a
peer that never reads. Every socket has a timeout, every wait a deadline.
Servers that several tests can share are module-scoped; tests that need their
own settings, or kill and stop processes, start their own.
"""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import socket
import struct
import threading
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import psutil
import pytest
import websocket

from tests.server import RawClient, Response, Server, accepted_connections, request, wait_for

APP = "tests.apps.ws_echo:app"
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
MiB = 1 << 20
TEXT, BINARY, CLOSE, PING, PONG, CONT = 0x1, 0x2, 0x8, 0x9, 0xA, 0x0
GOOD_ORIGIN = "http://good.example"
DEFLATE_TAIL = b"\x00\x00\xff\xff"


# --- a raw client -------------------------------------------------------------------------


def mask(data: bytes, key: bytes) -> bytes:
    """XOR ``data`` with the repeated 4-byte ``key`` (RFC 6455 §5.3)."""
    if not data:
        return b""
    n = len(data)
    keys = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "big") ^ int.from_bytes(keys, "big")).to_bytes(n, "big")


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, masked: bool = True,
          length: int | None = None) -> bytes:
    """A client frame; ``length`` overrides the declared payload length (header-only frames)."""
    n = len(payload) if length is None else length
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    bit = 0x80 if masked else 0
    if n < 126:
        head = struct.pack("!BB", b0, bit | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", b0, bit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, bit | 127, n)
    if not masked:
        return head + payload
    key = os.urandom(4)
    return head + key + mask(payload, key)


def close_frame(code: int, reason: bytes = b"") -> bytes:
    return frame(CLOSE, struct.pack("!H", code) + reason)


def handshake(path: str = "/", *, key: str | None = None, version: str = "13", origin: str | None = None,
              extensions: str | None = None, omit_key: bool = False) -> tuple[bytes, str]:
    """The handshake request and the key it carries."""
    key = key if key is not None else base64.b64encode(os.urandom(16)).decode()
    lines = [f"GET {path} HTTP/1.1", "Host: 127.0.0.1", "Upgrade: websocket", "Connection: Upgrade",
             f"Sec-WebSocket-Version: {version}"]
    if not omit_key:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if origin is not None:
        lines.append(f"Origin: {origin}")
    if extensions is not None:
        lines.append(f"Sec-WebSocket-Extensions: {extensions}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode(), key


def accept_value(key: str) -> str:
    return base64.b64encode(hashlib.sha1(key.encode() + GUID).digest()).decode()


class RawWS(RawClient):
    """A raw WebSocket client over ``RawClient``'s buffered reads."""

    def read_head(self) -> Response:
        """The handshake response head (a 101 has no body to frame)."""
        raw = self.read_until(b"\r\n\r\n")
        lines = raw[:-4].decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code, _, reason = rest.partition(" ")
        headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
        return Response(int(code), reason, version, headers, b"", raw)  # type: ignore[arg-type]

    def recv_frame(self) -> tuple[int, bytes, bool, int]:
        """One server frame: (opcode, payload, fin, rsv bits)."""
        b0, b1 = self.read_exactly(2)
        assert not b1 & 0x80, "server frames must not be masked"
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self.read_exactly(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self.read_exactly(8))
        return b0 & 0x0F, self.read_exactly(n), bool(b0 & 0x80), (b0 >> 4) & 0x7

    def recv_data(self) -> tuple[int, bytes]:
        """The next data frame (pings are answered, pongs skipped)."""
        while True:
            opcode, payload, _fin, _rsv = self.recv_frame()
            if opcode == PING:
                self.send(frame(PONG, payload))
            elif opcode != PONG:
                return opcode, payload

    def expect_close(self, code: int) -> bytes:
        """Read up to the server's close frame, check its code and that TCP closes; returns the reason."""
        while True:
            opcode, payload, _fin, _rsv = self.recv_frame()
            if opcode == CLOSE:
                break
        assert len(payload) >= 2, f"close frame without a code: {payload!r}"
        got = struct.unpack("!H", payload[:2])[0]
        assert got == code, f"expected close {code}, got {got} {payload[2:]!r}"
        assert self.at_eof(), "the server did not close the TCP connection after its close frame"
        return payload[2:]


@contextmanager
def raw_ws(server: Server, path: str = "/", timeout: float = 10.0, first: bytes = b"",
           **kwargs: object) -> Iterator[tuple[RawWS, Response]]:
    """A raw client after a successful handshake (``first`` goes in the same write)."""
    data, key = handshake(path, **kwargs)  # type: ignore[arg-type]
    client = RawWS(server.connect(timeout))
    try:
        client.send(data + first)
        head = client.read_head()
        assert head.status == 101, head.raw_head
        assert head.header("sec-websocket-accept") == accept_value(key)
        yield client, head
    finally:
        client.close()


def ws_connect(server: Server, path: str = "/", timeout: float = 30.0) -> websocket.WebSocket:
    # The client's own UTF-8 check is pure Python (8 s for 16 MiB); str decoding checks anyway.
    return websocket.create_connection(f"ws://127.0.0.1:{server.port}{path}", timeout=timeout,
                                       skip_utf8_validation=True)


def port_of(ws: websocket.WebSocket) -> int:
    assert ws.sock is not None
    return int(ws.sock.getsockname()[1])


def recv_text(ws: websocket.WebSocket) -> str:
    message = ws.recv()
    assert isinstance(message, str), message
    return message


# --- servers ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def echo_server(start_module_server: Callable[..., Server]) -> Server:
    """One worker (so "the worker keeps serving" means the same process), default limits."""
    return start_module_server(app=APP, workers=1)


@pytest.fixture(scope="module")
def small_server(start_module_server: Callable[..., Server]) -> Server:
    """max_message_size = 1MiB, compression on, an Origin allow-list."""
    return start_module_server(app=APP, workers=1, config={
        "websocket": f"max_message_size = 1MiB\nallowed_origins = {GOOD_ORIGIN}"})


# --- echo ---------------------------------------------------------------------------------

SIZES = [0, 125, 126, 64 * 1024, 16 * MiB]


@pytest.mark.parametrize("size", SIZES, ids=lambda n: f"{n}B")
def test_echo_text_and_binary(echo_server: Server, size: int) -> None:
    ws = ws_connect(echo_server)
    try:
        text = ("héllo wörld " * (size // 10 + 1)).encode()[:size].decode("utf-8", "ignore")
        text += "x" * (size - len(text.encode()))
        assert len(text.encode()) == size
        ws.send(text)
        assert ws.recv() == text
        data = os.urandom(size)
        ws.send_binary(data)
        assert ws.recv() == data
    finally:
        ws.close()


# --- bytes on the wire --------------------------------------------------------------------


def test_fifty_frames_in_one_write_get_fifty_echoes(echo_server: Server) -> None:
    with raw_ws(echo_server) as (client, _head):
        client.send(b"".join(frame(TEXT, b"same message") for _ in range(50)))
        for _ in range(50):
            assert client.recv_data() == (TEXT, b"same message")
        # Nothing more: echoes come in order, so a duplicate (or bytes replayed between
        # reads) would arrive before the echo of a message sent after them all.
        client.send(frame(TEXT, b"fence"))
        assert client.recv_data() == (TEXT, b"fence")


def test_frame_sent_one_byte_per_write(echo_server: Server) -> None:
    with raw_ws(echo_server) as (client, _head):
        client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        payload = b"one byte at a time " * 20  # > 125: a 16-bit length too
        for byte in frame(TEXT, payload):
            client.send(bytes([byte]))
        assert client.recv_data() == (TEXT, payload)


def test_handshake_and_first_frame_in_one_write(echo_server: Server) -> None:
    first = frame(TEXT, b"right after the request") + frame(BINARY, b"\x00\x01")
    with raw_ws(echo_server, first=first) as (client, _head):
        assert client.recv_data() == (TEXT, b"right after the request")
        assert client.recv_data() == (BINARY, b"\x00\x01")


# --- handshake errors ---------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    {"omit_key": True},
    {"key": "c2hvcnQ="},  # base64 of 5 bytes, not 16
    {"key": "not base64 at all!!"},
], ids=["missing-key", "short-key", "garbage-key"])
def test_bad_key_is_400(echo_server: Server, kwargs: dict[str, object]) -> None:
    data, _ = handshake(**kwargs)  # type: ignore[arg-type]
    assert request(echo_server, data).status == 400


def test_version_12_is_426_naming_13(echo_server: Server) -> None:
    resp = request(echo_server, handshake(version="12")[0])
    assert resp.status == 426
    assert resp.header("sec-websocket-version") == "13"


def test_origin_allow_list(small_server: Server) -> None:
    assert request(small_server, handshake(origin="http://evil.example")[0]).status == 403
    assert request(small_server, handshake()[0]).status == 403  # no Origin at all
    with raw_ws(small_server, origin=GOOD_ORIGIN) as (client, _head):
        client.send(frame(TEXT, b"ok"))
        assert client.recv_data() == (TEXT, b"ok")


def test_plain_get_still_served(echo_server: Server) -> None:
    resp = request(echo_server, b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert (resp.status, resp.body) == (200, b"ws echo")


# --- protocol violations ------------------------------------------------------------------

VIOLATIONS = {
    "unmasked": ([frame(TEXT, b"hi", masked=False)], 1002),
    "reserved-opcode-3": ([frame(0x3, b"x")], 1002),
    "reserved-opcode-B": ([frame(0xB, b"x")], 1002),
    "rsv1-no-extension": ([frame(TEXT, b"x", rsv=4)], 1002),
    "rsv2": ([frame(BINARY, b"x", rsv=2)], 1002),
    "fragmented-ping": ([frame(PING, b"p", fin=False)], 1002),
    "ping-126-bytes": ([frame(PING, b"p" * 126)], 1002),
    "continuation-first": ([frame(CONT, b"x")], 1002),
    "close-code-999": ([close_frame(999)], 1002),
    "close-code-1005": ([close_frame(1005)], 1002),
    "close-1-byte": ([frame(CLOSE, b"\x03")], 1002),
    "invalid-utf8": ([frame(TEXT, b"valid, then \xff")], 1007),
    # The bad byte is in the first fragment; the final fragment is never sent.
    "invalid-utf8-first-fragment": ([frame(TEXT, b"abc\xc0\xaf", fin=False)], 1007),
}


@pytest.mark.parametrize("name", list(VIOLATIONS))
def test_protocol_violation_closes_with_code(echo_server: Server, name: str) -> None:
    frames, code = VIOLATIONS[name]
    workers = [p.pid for p in echo_server.workers()]
    bystander = ws_connect(echo_server)
    try:
        with raw_ws(echo_server) as (client, _head):
            client.send(frame(TEXT, b"before"))
            assert client.recv_data() == (TEXT, b"before")
            client.send(b"".join(frames))
            client.expect_close(code)
        bystander.send("still here")
        assert bystander.recv() == "still here"
    finally:
        bystander.close()
    assert [p.pid for p in echo_server.workers()] == workers


def test_message_over_limit_is_1009_before_its_payload(small_server: Server) -> None:
    with raw_ws(small_server, origin=GOOD_ORIGIN) as (client, _head):
        client.send(frame(BINARY, b"", length=2 * MiB))  # the header (and mask key) only
        assert b"exceeds limit" in client.expect_close(1009)


def test_fragmented_message_over_limit_is_1009(small_server: Server) -> None:
    with raw_ws(small_server, origin=GOOD_ORIGIN) as (client, _head):
        client.send(frame(BINARY, b"\0" * (768 * 1024), fin=False))
        client.send(frame(CONT, b"", length=512 * 1024))
        client.expect_close(1009)


@pytest.mark.parametrize("code", [1000, 1001, 3000, 4999])
def test_close_handshake_echoes_code(echo_server: Server, code: int) -> None:
    with raw_ws(echo_server) as (client, _head):
        client.send(close_frame(code, b"bye"))
        client.expect_close(code)


# --- keep-alive pings ---------------------------------------------------------------------


def test_ping_unanswered_closes_answered_stays_open(start_server: Callable[..., Server]) -> None:
    server = start_server(app=APP, workers=1, config={
        "websocket": "ping_interval = 1s\nping_timeout = 1s\nclose_timeout = 1s"})
    outcome: dict[str, object] = {}

    def answering() -> None:
        try:
            with raw_ws(server, timeout=3.0) as (client, _head):
                pings, deadline = 0, time.monotonic() + 4.0
                while time.monotonic() < deadline:
                    try:
                        opcode, payload, _fin, _rsv = client.recv_frame()
                    except socket.timeout:
                        continue
                    assert opcode == PING, (opcode, payload)
                    pings += 1
                    client.send(frame(PONG, payload))
                client.send(frame(TEXT, b"alive"))
                outcome["answering"] = (pings, client.recv_data())
        except BaseException as exc:  # reported by the main thread
            outcome["answering"] = exc

    thread = threading.Thread(target=answering)
    thread.start()
    try:
        with raw_ws(server, timeout=8.0) as (client, _head):
            started = time.monotonic()
            opcode, payload, _fin, _rsv = client.recv_frame()
            assert opcode == PING and len(payload) <= 125
            opcode, payload, _fin, _rsv = client.recv_frame()  # never answered: the server gives up
            assert opcode == CLOSE and struct.unpack("!H", payload[:2])[0] == 1011, payload
            assert client.at_eof()  # we never answer its close either: close_timeout ends TCP
            assert time.monotonic() - started < 6.0
    finally:
        thread.join(15)
    assert not thread.is_alive()
    result = outcome["answering"]
    if isinstance(result, BaseException):
        raise result
    assert isinstance(result, tuple)
    pings, echo = result
    assert pings >= 2 and echo == (TEXT, b"alive")


# --- a peer that never reads --------------------------------------------------------------


def test_slow_reader_is_closed_and_memory_stays_bounded(start_server: Callable[..., Server]) -> None:
    server = start_server(app=APP, workers=1, config={"websocket": "send_buffer = 1MiB\nclose_timeout = 4s"})
    (worker,) = server.workers()
    base_rss = worker.memory_info().rss
    peak = [base_rss]
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(0.02):
            try:
                peak[0] = max(peak[0], worker.memory_info().rss)
            except psutil.NoSuchProcess:
                return

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)  # before connect: a small window
    sock.settimeout(15)  # longer than the test allows: a blocked send fails below, not here
    sock.connect(("127.0.0.1", server.port))
    client = RawWS(sock)
    data, _ = handshake()
    client.send(data)
    assert client.read_head().status == 101
    # 16 KiB messages, 16 per write: many handler calls per byte read, the hard case for memory.
    message = frame(BINARY, os.urandom(16 * 1024)) * 16
    sent = 0
    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.monotonic()
    error: OSError | None = None
    try:
        while time.monotonic() - started < 30:
            client.send(message)
            sent += len(message)
    except OSError as exc:  # EPIPE / ECONNRESET once the server gives up on us
        error = exc
    finally:
        elapsed = time.monotonic() - started
        stop.set()
        sampler.join(5)
        client.close()
    growth = peak[0] - base_rss
    assert error is not None and not isinstance(error, socket.timeout), error
    assert elapsed < 4 + 6, f"still open after {elapsed:.1f} s and {sent / MiB:.0f} MiB sent"
    assert growth < 64 * MiB, f"worker RSS grew by {growth / MiB:.1f} MiB"
    wait_for(lambda: "send buffer over" in server.output(), 5, what="the 1008 close logged")
    assert [p.pid for p in server.workers()] == [worker.pid]


# --- permessage-deflate ---------------------------------------------------------------------


def _extension_params(value: str) -> dict[str, str | None]:
    name, *params = [p.strip() for p in value.split(";")]
    assert name == "permessage-deflate", value
    out: dict[str, str | None] = {}
    for param in params:
        key, _, val = param.partition("=")
        out[key.strip()] = val.strip().strip('"') or None
    return out


def test_permessage_deflate_round_trip(small_server: Server) -> None:
    with raw_ws(small_server, origin=GOOD_ORIGIN,
                extensions="permessage-deflate; client_max_window_bits") as (client, head):
        params = _extension_params(head.header("sec-websocket-extensions") or "")
        client_bits = int(params.get("client_max_window_bits") or 15)
        compressor = zlib.compressobj(wbits=-client_bits)
        decompressor = zlib.decompressobj(wbits=-15)
        for text in ["compress me " * 200, "and me too, with the same context " * 50]:
            body = compressor.compress(text.encode()) + compressor.flush(zlib.Z_SYNC_FLUSH)
            assert body.endswith(DEFLATE_TAIL)
            client.send(frame(TEXT, body[:-4], rsv=4))
            opcode, payload, fin, rsv = client.recv_frame()
            assert (opcode, fin, rsv) == (TEXT, True, 4), "the echo is compressed (RSV1)"
            assert len(payload) < len(text) // 4
            assert decompressor.decompress(payload + DEFLATE_TAIL).decode() == text
            if "server_no_context_takeover" in params:
                decompressor = zlib.decompressobj(wbits=-15)


def test_compression_off_is_not_negotiated(start_server: Callable[..., Server]) -> None:
    server = start_server(app=APP, workers=1, config={"websocket": "compression = off"})
    with raw_ws(server, extensions="permessage-deflate; client_max_window_bits") as (client, head):
        assert head.header("sec-websocket-extensions") is None
        client.send(frame(TEXT, b"plain"))
        assert client.recv_frame() == (TEXT, b"plain", True, 0)
        compressor = zlib.compressobj(wbits=-15)
        body = compressor.compress(b"x" * 100) + compressor.flush(zlib.Z_SYNC_FLUSH)
        client.send(frame(TEXT, body[:-4], rsv=4))
        client.expect_close(1002)  # RSV1 without the extension


def test_zip_bomb_is_1009(small_server: Server) -> None:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    bomb = compressor.compress(b"\0" * (64 * MiB)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    assert len(bomb) < 128 * 1024
    workers = [p.pid for p in small_server.workers()]
    with raw_ws(small_server, origin=GOOD_ORIGIN, extensions="permessage-deflate") as (client, head):
        assert (head.header("sec-websocket-extensions") or "").startswith("permessage-deflate")
        client.send(frame(BINARY, bomb[:-4], rsv=4))
        client.expect_close(1009)
    assert [p.pid for p in small_server.workers()] == workers


# --- broadcast across workers -------------------------------------------------------------


def join_chat(server: Server, clients: list[websocket.WebSocket]) -> websocket.WebSocket:
    """Open a /chat client and wait until it is subscribed (its own join message comes back)."""
    ws = ws_connect(server, "/chat", timeout=10)
    tag = f"join-{uuid.uuid4().hex}"
    ws.send(tag)
    deadline = time.monotonic() + 10
    while recv_text(ws) != tag:  # other clients' joins may come first
        assert time.monotonic() < deadline
    clients.append(ws)
    return ws


def chat_round(clients: list[websocket.WebSocket]) -> None:
    """Every client sends one unique message; every client gets all of them exactly once."""
    sent = [f"msg-{i}-{uuid.uuid4().hex}" for i in range(len(clients))]
    for ws, text in zip(clients, sent):
        ws.send(text)
    expected = sorted(sent)
    deadline = time.monotonic() + 20
    received: list[list[str]] = []
    for ws in clients:
        got: list[str] = []
        while len(got) < len(sent):
            ws.settimeout(max(0.1, deadline - time.monotonic()))
            message = recv_text(ws)
            if message.startswith("msg-"):
                got.append(message)
        received.append(got)
    # Then nothing more: every copy of a message travels the same ordered path (worker ->
    # master -> workers -> connection) as a fence sent after all of them arrived, so a
    # duplicate would come before the fences. Each client waits for every client's fence.
    fences = {f"fence-{uuid.uuid4().hex}" for _ in clients}
    for ws, fence in zip(clients, fences):
        ws.send(fence)
    for ws, got in zip(clients, received):
        waiting = set(fences)
        while waiting:
            ws.settimeout(max(0.1, deadline - time.monotonic()))
            extra = recv_text(ws)
            waiting.discard(extra)
            if extra.startswith("msg-"):
                got.append(extra)
    for index, got in enumerate(received):
        assert sorted(got) == expected, f"client {index}: {len(got)} messages, {len(set(got))} distinct"


def spread_over_workers(server: Server, clients: list[websocket.WebSocket], count: int, limit: int,
                        must_include: int | None = None) -> dict[int, int]:
    """Join ``count`` clients, then more (up to ``limit``) until 2+ workers (and ``must_include``) hold them."""
    while True:
        join_chat(server, clients)
        if len(clients) < count:
            continue
        owners = accepted_connections(server)
        ports = [port_of(ws) for ws in clients]
        pids = {owners.get(port) for port in ports} - {None}
        if len(pids) >= 2 and (must_include is None or must_include in pids):
            return {port: owners[port] for port in ports if port in owners}
        assert len(clients) < limit, f"{len(clients)} connections all on workers {pids}"


def close_all(clients: list[websocket.WebSocket]) -> None:
    for ws in clients:
        try:
            ws.close(timeout=1)
        except Exception:
            pass


def test_broadcast_reaches_every_client_exactly_once(start_server: Callable[..., Server]) -> None:
    server = start_server(app=APP, workers=4)
    clients: list[websocket.WebSocket] = []
    try:
        owners = spread_over_workers(server, clients, 20, 80)
        assert len(set(owners.values())) >= 2
        chat_round(clients)
    finally:
        close_all(clients)


def test_broadcast_after_worker_respawn(start_server: Callable[..., Server]) -> None:
    server = start_server(app=APP, workers=4)
    clients: list[websocket.WebSocket] = []
    try:
        owners = spread_over_workers(server, clients, 8, 80)
        victim = max(set(owners.values()), key=list(owners.values()).count)
        os.kill(victim, signal.SIGKILL)
        new = wait_for(lambda: [p.pid for p in server.workers() if p.pid not in owners.values()]
                       if len(server.workers()) == 4 and victim not in [p.pid for p in server.workers()]
                       else None, 15, what="the killed worker replaced")
        server.wait_ready()
        survivors = [ws for ws in clients if owners.get(port_of(ws)) != victim]
        for ws in clients:
            if ws not in survivors:
                ws.close(timeout=1)
        clients[:] = survivors
        spread_over_workers(server, clients, len(clients) + 8, len(clients) + 80,
                            must_include=new[0])  # type: ignore[index]
        chat_round(clients)
    finally:
        close_all(clients)


# --- graceful stop ------------------------------------------------------------------------


def test_term_sends_1001_and_master_exits_0(start_server: Callable[..., Server]) -> None:
    server = start_server(app=APP, workers=2)
    clients = [RawWS(server.connect(15)) for _ in range(4)]
    try:
        for client in clients:
            data, _ = handshake()
            client.send(data)
            assert client.read_head().status == 101
            client.send(frame(TEXT, b"up"))
            assert client.recv_data() == (TEXT, b"up")
        started = time.monotonic()
        server.signal(signal.SIGTERM)
        for client in clients:
            opcode, payload, _fin, _rsv = client.recv_frame()
            assert opcode == CLOSE and struct.unpack("!H", payload[:2])[0] == 1001, payload
            client.send(close_frame(1001))
            assert client.at_eof()
        assert server.wait(15) == 0
        assert time.monotonic() - started < 10
    finally:
        for client in clients:
            client.close()
