"""Broadcast past one server: prefork masters sharing a real redis-server, behind haproxy.

Two masters (2 workers each, ``[websocket] broadcast = redis``) on loopback behind
Debian's haproxy with the shipped conf/haproxy.cfg, and the demo chat: every client,
whichever instance it reached, gets every message once and in each sender's order; the
history is the same from both instances; killing one instance costs only its own
connections. Also the server's start-up without the redis client, and with Redis down.
Every process is stopped by PID.
"""

from __future__ import annotations

import json
import re
import signal
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket

from tests.redis_helpers import RedisServer
from tests.server import REPO, Server, free_port, status, wait_for
from tests.test_behind_proxies import Proxy, _need

Start = Callable[..., Server]
WAIT = 30.0
SENDERS, PER_SENDER, CLIENTS = 3, 20, 12


def redis_config(redis_url: str, prefix: str = "chat-test") -> dict[str, str]:
    return {"websocket": f"broadcast = redis\nredis_url = {redis_url}\nredis_prefix = {prefix}\nredis_timeout = 1s"}


def two_server_haproxy(ports: tuple[int, int], listen: int) -> str:
    """conf/haproxy.cfg with its two example servers moved to loopback ports."""
    text = (REPO / "conf" / "haproxy.cfg").read_text()
    for name, address, port in (("app1", "10.0.0.11", ports[0]), ("app2", "10.0.0.12", ports[1])):
        text, count = re.subn(rf"server {name} {re.escape(address)}:8000 check",
                              f"server {name} 127.0.0.1:{port} check inter 500ms", text)
        assert count == 1, "conf/haproxy.cfg changed: update this test's rewrite"
    text, binds = re.subn(r"bind :80", f"bind 127.0.0.1:{listen}", text)
    assert binds == 1
    return re.sub(r"(?m)^(\s*maxconn) \d+", r"\1 1000", text)  # see tests/test_behind_proxies.py


class Cluster:
    def __init__(self, redis: RedisServer, servers: list[Server], proxy: Proxy) -> None:
        self.redis, self.servers, self.proxy = redis, servers, proxy


@pytest.fixture
def cluster(start_server: Start, tmp_path: Path) -> Iterator[Cluster]:
    redis = RedisServer(tmp_path)
    proxy = None
    try:
        servers = [start_server(app="", workers=2, config=redis_config(redis.url)) for _ in range(2)]
        for server in servers:  # every worker has subscribed before a client can be served by it
            wait_for(lambda server=server: status(server)["redis_connected"] == 2, WAIT)
        listen = free_port()
        cfg = tmp_path / "haproxy.cfg"
        cfg.write_text(two_server_haproxy((servers[0].port, servers[1].port), listen))
        proxy = Proxy([_need("haproxy"), "-db", "-f", str(cfg)], listen, tmp_path / "haproxy.out")
        yield Cluster(redis, servers, proxy)
    finally:
        if proxy is not None:
            proxy.stop()
        redis.stop()


def chat(port: int) -> tuple[websocket.WebSocket, list[dict[str, Any]]]:
    """A demo chat client; returns it and the history it was sent on joining."""
    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws/chat", timeout=WAIT)
    first = json.loads(ws.recv())
    assert first["type"] == "history"
    return ws, first["messages"]


def messages_of(ws: websocket.WebSocket, count: int) -> list[dict[str, Any]]:
    """The next ``count`` chat messages ``ws`` receives (gallery events skipped)."""
    got: list[dict[str, Any]] = []
    while len(got) < count:
        data = json.loads(ws.recv())
        if data["type"] == "message":
            got.append(data)
    return got


def websockets_per_server(servers: list[Server]) -> list[int]:
    return [sum(w["websockets"] for w in status(server)["workers"]) for server in servers]


def test_clients_on_both_instances_get_every_message_once_in_order(cluster: Cluster) -> None:
    clients = [chat(cluster.proxy.port)[0] for _ in range(CLIENTS)]
    try:
        spread = websockets_per_server(cluster.servers)
        assert sum(spread) == CLIENTS and min(spread) >= 1, spread  # haproxy used both instances
        for n in range(PER_SENDER):
            for sender in range(SENDERS):
                clients[sender].send(json.dumps({"name": f"s{sender}", "text": f"{n}"}))
        expected = SENDERS * PER_SENDER
        for ws in clients:
            got = messages_of(ws, expected)
            assert len({m["id"] for m in got}) == expected  # nothing twice
            for sender in range(SENDERS):
                assert [m["text"] for m in got if m["name"] == f"s{sender}"] == [f"{n}" for n in range(PER_SENDER)]
        # the history is kept in Redis: the same from either instance, directly
        histories = [chat(server.port) for server in cluster.servers]
        for ws, _history in histories:
            ws.close()
        assert histories[0][1] == histories[1][1]
        assert len(histories[0][1]) == 50 and histories[0][1][-1]["text"] == f"{PER_SENDER - 1}"
        counts = status(cluster.servers[0])["broadcast"]
        assert counts["local_only"] == 0 and counts["dropped"] == 0
    finally:
        for ws in clients:
            ws.close()


def test_killing_one_instance_loses_only_its_own_connections(cluster: Cluster) -> None:
    clients = [chat(cluster.proxy.port)[0] for _ in range(CLIENTS)]
    try:
        doomed_count = websockets_per_server(cluster.servers)[1]
        assert 1 <= doomed_count < CLIENTS
        clients[0].send(json.dumps({"name": "before", "text": "kept in history"}))
        for ws in clients:
            assert messages_of(ws, 1)[0]["text"] == "kept in history"
        doomed = cluster.servers[1]
        doomed.signal(signal.SIGKILL)  # the master; its workers follow it (PR_SET_PDEATHSIG)
        doomed.wait()
        survivors, lost = [], 0
        for ws in clients:
            try:
                ws.settimeout(0.2)
                # nothing is due: a live connection times out, a dead one ends (haproxy closes
                # the client's side, which websocket-client reports as an empty message)
                assert ws.recv() in ("", b"", None)
                lost += 1
            except websocket.WebSocketTimeoutException:
                survivors.append(ws)
            except (websocket.WebSocketConnectionClosedException, ConnectionError, OSError):
                lost += 1
        wait_for(lambda: websockets_per_server(cluster.servers[:1])[0] == CLIENTS - doomed_count, WAIT)
        assert lost + len(survivors) == CLIENTS
        survivors[0].settimeout(WAIT)
        survivors[0].send(json.dumps({"name": "after", "text": "still here"}))
        for ws in survivors:
            ws.settimeout(WAIT)
            assert messages_of(ws, 1)[0]["text"] == "still here"
        # a client that reconnects through haproxy reaches the live instance and sees the history
        rejoined, history = _reconnect(cluster.proxy.port)
        rejoined.close()
        assert [m["text"] for m in history][-2:] == ["kept in history", "still here"]
    finally:
        for ws in clients:
            ws.close()


def _reconnect(port: int) -> tuple[websocket.WebSocket, list[dict[str, Any]]]:
    """Join through haproxy, retrying while it has not yet marked the dead server down."""
    joined: list[tuple[websocket.WebSocket, list[dict[str, Any]]]] = []

    def attempt() -> bool:
        try:
            joined.append(chat(port))
            return True
        except (websocket.WebSocketException, OSError):
            return False

    wait_for(attempt, WAIT)
    return joined[0]


def test_redis_down_at_start_the_server_starts_and_broadcasts_stay_local(start_server: Start,
                                                                        tmp_path: Path) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    server = start_server(app="", workers=2, config=redis_config(url))
    assert re.search(rf"WARNING.*Redis at redis://127\.0\.0\.1:{port}/0 does not answer", server.output())
    # every client of this server, on either worker, still gets the chat
    clients: list[websocket.WebSocket] = []
    redis = None
    try:
        while len(clients) < 40 and len({w["pid"] for w in status(server)["workers"] if w["websockets"]}) < 2:
            clients.append(chat(server.port)[0])
        assert len({w["pid"] for w in status(server)["workers"] if w["websockets"]}) == 2
        clients[0].send(json.dumps({"name": "x", "text": "no redis"}))
        for ws in clients:
            assert messages_of(ws, 1)[0]["text"] == "no redis"
        snapshot = status(server)
        assert snapshot["broadcast"]["local_only"] == 1 and snapshot["redis_connected"] == 0
        redis = RedisServer(tmp_path, port)
        wait_for(lambda: status(server)["redis_connected"] == 2, WAIT)
        clients[1].send(json.dumps({"name": "x", "text": "via redis"}))
        for ws in clients:
            assert messages_of(ws, 1)[0]["text"] == "via redis"
        metrics = _get(server, "/server-status?format=prometheus")
        assert 'prefork_broadcast_messages_total{outcome="local_only"} 1' in metrics
        assert 'prefork_broadcast_messages_total{outcome="published"} 1' in metrics
        assert "prefork_broadcast_redis_connected 2" in metrics
        assert "broadcast via Redis: 2/2 workers connected" in _get(server, "/server-status")
    finally:
        for ws in clients:
            ws.close()
        if redis is not None:
            redis.stop()


def test_without_the_redis_client_start_up_says_how_to_install_it(start_server: Start, tmp_path: Path) -> None:
    shadow = tmp_path / "shadow" / "redis"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text("raise ImportError('No module named redis (test shadow)')\n")
    server = start_server(wait=False, app="", config=redis_config("redis://127.0.0.1:1/0"),
                          env={"PYTHONPATH": f"{shadow.parent}:{REPO}"})
    assert server.wait() == 2
    assert "pip install 'prefork[redis]'" in server.output()
    assert "[websocket] broadcast = redis" in server.output()


def _get(server: Server, path: str) -> str:
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    return data.partition(b"\r\n\r\n")[2].decode()
