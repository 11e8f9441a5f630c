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

from tests.server import RawClient, Server, request, wait_for
from tests.test_server_websocket import (
    APP,
    BINARY,
    CLOSE,
    CONT,
    PING,
    TEXT,
    RawWS,
    accept_value,
    frame,
    handshake,
    raw_ws,
)

MiB = 1 << 20


def upgrade_request(*lines: str, host: str = "127.0.0.1") -> tuple[bytes, str]:
    """A handshake with the given extra header lines (Upgrade included) and its key."""
    key = base64.b64encode(os.urandom(16)).decode()
    head = [f"GET / HTTP/1.1", f"Host: {host}", "Connection: Upgrade", "Sec-WebSocket-Version: 13",
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
