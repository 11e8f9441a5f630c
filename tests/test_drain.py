"""A draining worker loses no request on its idle keep-alive connections.

Issue 11, §1: a worker told to stop (HUP, TTOU, max_requests) used to read each
idle keep-alive connection once and close it, racing requests that clients were
sending on it at that moment. Now idle connections stay open until their
keep-alive time is up; a request that arrives meanwhile is answered with
``Connection: close``.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import psutil

from tests.server import RawClient, Server, wait_for

UPLOAD_APP = "tests.apps.upload:app"
IDLE_CONNECTIONS = 20


def _get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: t\r\n\r\n".encode()


def _listening(pid: int) -> bool:
    try:
        return any(c.status == psutil.CONN_LISTEN for c in psutil.Process(pid).net_connections("inet"))
    except psutil.NoSuchProcess:
        return False


def _idle_clients(server: Server, count: int) -> list[RawClient]:
    clients = []
    for n in range(count):
        client = RawClient(server.connect(timeout=10))
        client.send(_get(f"/first-{n}"))
        resp = client.read_response()
        assert resp.status == 200 and resp.header("connection") is None, resp.raw_head
        clients.append(client)
    return clients


def test_requests_on_idle_keepalive_connections_are_answered_during_a_drain(
        start_server: Callable[..., Server]) -> None:
    server = start_server(app=UPLOAD_APP, workers=1, config={"limits": "keepalive_timeout = 30s"})
    [old] = [p.pid for p in server.workers()]
    clients = _idle_clients(server, IDLE_CONNECTIONS)
    try:
        server.signal(signal.SIGHUP)
        # The old worker drains once its replacement serves: it closes its copy of the listener.
        wait_for(lambda: not _listening(old), 15, what="the old worker draining")
        for n, client in enumerate(clients):
            client.send(_get(f"/during-drain-{n}"))
        for n, client in enumerate(clients):
            resp = client.read_response()
            assert resp.status == 200, (n, resp.raw_head)
            assert resp.header("connection") == "close", (n, resp.raw_head)
            assert client.at_eof(), n
    finally:
        for client in clients:
            client.close()
    wait_for(lambda: not psutil.pid_exists(old) or psutil.Process(old).status() == psutil.STATUS_ZOMBIE,
             10, what="the old worker gone once its connections are")
    access = server.access_log.read_text()
    assert all(f"/during-drain-{n} " in access for n in range(IDLE_CONNECTIONS))


def test_a_draining_worker_closes_connections_that_stay_idle(start_server: Callable[..., Server]) -> None:
    server = start_server(app=UPLOAD_APP, workers=1, config={"limits": "keepalive_timeout = 1s"})
    [old] = [p.pid for p in server.workers()]
    clients = _idle_clients(server, 3)
    try:
        server.signal(signal.SIGHUP)
        wait_for(lambda: not _listening(old), 15, what="the old worker draining")
        for client in clients:
            assert client.at_eof()  # within the socket timeout (10 s): after keepalive_timeout
    finally:
        for client in clients:
            client.close()
    wait_for(lambda: not psutil.pid_exists(old) or psutil.Process(old).status() == psutil.STATUS_ZOMBIE,
             10, what="the old worker gone")
