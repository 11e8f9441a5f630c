"""Issue 12, medium 5: a worker at max_connections sheds the idlest connections without a request.

Before, a worker at its limit stopped accepting: a normal GET waited in the
backlog until idle sockets timed out (22 s behind 10,000 of them). Now each new
connection is let in by closing the connection that has waited longest for a
request head; connections with a body on its way are never shed. The log and
the status page say so.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable

import psutil

from tests.server import RawClient, Server, request, wait_for

LIMIT = 8
CLIENT_TIMEOUT = 15.0  # far below header_timeout: an answer means no idle socket had to time out


def _held_peer_ports(server: Server) -> set[int]:
    """Client ports of the connections the worker holds open now."""
    ports = set()
    for worker in server.workers():
        for conn in psutil.Process(worker.pid).net_connections("tcp"):
            if conn.laddr and conn.laddr.port == server.port and conn.raddr and conn.status == "ESTABLISHED":
                ports.add(conn.raddr.port)
    return ports


def _start(start_server: Callable[..., Server]) -> Server:
    return start_server(app="tests.apps.echo:app",
                        config={"server": f"max_connections = {LIMIT}", "limits": "header_timeout = 120s"})


def _idle_connections(server: Server, count: int) -> list[socket.socket]:
    idle = []
    for _ in range(count):
        idle.append(server.connect())
        port = idle[-1].getsockname()[1]
        wait_for(lambda: port in _held_peer_ports(server), 10, what="the worker holds the idle connection")
    return idle


def test_new_client_is_served_while_idle_sockets_fill_the_worker(start_server: Callable[..., Server]) -> None:
    server = _start(start_server)
    idle = _idle_connections(server, LIMIT - 1)
    idle.append(server.connect())
    idle[-1].sendall(b"GET /partial HTTP/1.1\r\nHost: t\r\n")  # a head that never completes
    newest = idle[-1].getsockname()[1]
    wait_for(lambda: newest in _held_peer_ports(server), 10, what="the worker is at its limit")

    response = request(server, b"GET /fresh HTTP/1.1\r\nHost: t\r\n\r\n", timeout=CLIENT_TIMEOUT)
    assert response.status == 200
    held = _held_peer_ports(server)
    assert idle[0].getsockname()[1] not in held, "the oldest idle connection was not the one shed"
    assert newest in held, "a newer connection was shed before the oldest"
    idle[0].settimeout(CLIENT_TIMEOUT)
    assert idle[0].recv(1) == b"", "the shed connection was not closed"

    wait_for(lambda: f"at max_connections ({LIMIT}): closed" in server.error_log.read_text(), 10,
             what="the log line about shedding")
    status = request(server, b"GET /server-status?format=json HTTP/1.1\r\nHost: t\r\n\r\n", timeout=CLIENT_TIMEOUT)
    snapshot = json.loads(status.body)
    assert snapshot["shed_total"] >= 1
    prometheus = request(server, b"GET /server-status?format=prometheus HTTP/1.1\r\nHost: t\r\n\r\n",
                         timeout=CLIENT_TIMEOUT)
    assert b"prefork_connections_shed_total " in prometheus.body
    for sock in idle:
        sock.close()


def test_connections_sending_a_body_are_never_shed(start_server: Callable[..., Server]) -> None:
    server = _start(start_server)
    uploaders = []
    for _ in range(LIMIT - 1):
        client = RawClient(server.connect(CLIENT_TIMEOUT))
        client.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 20\r\n\r\n0123456789")
        uploaders.append(client)
        port = client.sock.getsockname()[1]
        wait_for(lambda: port in _held_peer_ports(server), 10, what="the worker holds the upload")
    idle = _idle_connections(server, 1)[0]

    response = request(server, b"GET /fresh HTTP/1.1\r\nHost: t\r\n\r\n", timeout=CLIENT_TIMEOUT)
    assert response.status == 200
    idle.settimeout(CLIENT_TIMEOUT)
    assert idle.recv(1) == b"", "the idle connection was not the one shed"
    for client in uploaders:
        client.send(b"abcdefghij")
        answer = client.read_response()
        assert answer.status == 200
        assert b'"path": "/up"' in answer.body
        client.close()
    idle.close()


def test_when_every_connection_is_busy_new_ones_wait(start_server: Callable[..., Server]) -> None:
    """Nothing to shed: the new connection waits in the backlog and is served once one frees up."""
    server = _start(start_server)
    uploaders = []
    for _ in range(LIMIT):
        client = RawClient(server.connect(CLIENT_TIMEOUT))
        client.send(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 20\r\n\r\n0123456789")
        uploaders.append(client)
        port = client.sock.getsockname()[1]
        wait_for(lambda: port in _held_peer_ports(server), 10, what="the worker holds the upload")
    waiting = RawClient(server.connect(CLIENT_TIMEOUT))
    waiting.send(b"GET /waiting HTTP/1.1\r\nHost: t\r\n\r\n")
    assert waiting.sock.getsockname()[1] not in _held_peer_ports(server), "accepted past the limit"
    first = uploaders.pop(0)
    first.send(b"abcdefghij")
    assert first.read_response().status == 200
    first.close()
    assert b'"path": "/waiting"' in waiting.read_response().body
    for client in uploaders:
        client.send(b"abcdefghij")
        assert client.read_response().status == 200
        client.close()
    waiting.close()


class _Fake:
    """A connection as the shedder sees it."""

    def __init__(self, since: float | None, arrives: bool = False) -> None:
        self.since = since
        self.arrives = arrives  # a request head turns up on the last read
        self.closed = False

    def waiting_since(self) -> float | None:
        return None if self.closed else self.since

    def shed(self) -> bool:
        if self.arrives:
            self.since = None
            return False
        self.closed = True
        return True


def test_shedder_takes_the_oldest_waiting_first_and_skips_busy_ones() -> None:
    from prefork.worker.shedding import IdleShedder

    busy, old, older, fresh = _Fake(None), _Fake(5.0), _Fake(1.0, arrives=True), _Fake(9.0)
    shedder = IdleShedder(4)
    assert shedder.has_candidate([busy, old, older, fresh])
    assert shedder.shed_one()
    assert not older.closed and older.waiting_since() is None, "a request arrived: served, not shed"
    assert old.closed and not fresh.closed and not busy.closed
    assert shedder.has_candidate([busy, old, older, fresh])
    assert shedder.shed_one() and fresh.closed
    assert not shedder.has_candidate([busy, old, older, fresh])
    assert not shedder.shed_one()
    assert shedder.take_shed() == 2 and shedder.take_shed() == 0
