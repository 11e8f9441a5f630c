"""A draining worker loses no request on its idle keep-alive connections.

Issue 11, §1: a worker told to stop (HUP, TTOU, max_requests) used to read each
idle keep-alive connection once and close it, racing requests that clients were
sending on it at that moment. Now idle connections stay open for a short
linger (at most 2 s, or their keep-alive time if sooner), closed after one last
read; a request that arrives meanwhile is answered with ``Connection: close``.
"""

from __future__ import annotations

import signal
from collections.abc import Callable

import psutil

from tests.server import RawClient, Server, process_gone, wait_for

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
    wait_for(lambda: process_gone(old), 10, what="the old worker gone once its connections are")
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
    wait_for(lambda: process_gone(old), 10, what="the old worker gone")


def test_a_graceful_stop_does_not_wait_for_idle_keepalive_connections(
        start_server: Callable[..., Server]) -> None:
    # keepalive_timeout above graceful_timeout (65 s is usual behind a cloud load balancer):
    # the idle connection lingers 2 s at most, so the stop needs no SIGKILL.
    server = start_server(app=UPLOAD_APP, workers=1,
                          config={"limits": "keepalive_timeout = 60s", "process": "graceful_timeout = 8s"})
    with RawClient(server.connect(timeout=30)) as client:
        client.send(_get("/idle"))
        assert client.read_response().status == 200
        server.signal(signal.SIGTERM)
        assert server.wait(6) == 0  # before graceful_timeout would have killed the worker
        assert client.at_eof()
    assert "did not stop in time" not in server.error_log.read_text()


def test_pipelined_requests_already_received_during_a_drain_are_answered(
        start_server: Callable[..., Server]) -> None:
    server = start_server(app=UPLOAD_APP, workers=1, config={"limits": "keepalive_timeout = 20s"})
    [old] = [p.pid for p in server.workers()]
    with RawClient(server.connect(timeout=10)) as client:
        client.send(_get("/first"))
        assert client.read_response().status == 200
        server.signal(signal.SIGHUP)
        wait_for(lambda: not _listening(old), 15, what="the old worker draining")
        client.send(_get("/pipelined-1") + _get("/pipelined-2"))
        first, second = client.read_response(), client.read_response()
        assert (first.status, first.header("connection")) == (200, None)  # more is already here
        assert (second.status, second.header("connection")) == (200, "close")
        assert client.at_eof()
