"""Issue 12, high 1: a client that pipelines requests and never reads its answers.

Before the fix the worker read on after every answer however much input was
already waiting, so one such client grew a worker by hundreds of MiB. Now a
connection stops reading once its unread input passes a small bound: the
client's sends block on the TCP window, the worker's RSS stays flat, and once
the client reads, every request it sent is answered, in order.
"""

from __future__ import annotations

import select
import socket
import threading
from collections.abc import Callable

import psutil

from tests.server import RawClient, Server, wait_for

MiB = 1024 * 1024
PADDING = b"x" * 4000  # larger requests: fewer answers to read back at the end
REQUEST = b"GET /flood HTTP/1.1\r\nHost: t\r\nX-Pad: " + PADDING + b"\r\n\r\n"
SEND_CAP = 256 * MiB  # far beyond any kernel buffering: sending this much means nothing blocked
RSS_GROWTH_BOUND = 32 * MiB  # generous: the worker holds at most 256 KiB of this client's input
BLOCKED_FOR = 1.0  # seconds without room in the send buffer that count as "the sends block"


def _send_until_blocked(sock: socket.socket, batch: bytes) -> int:
    """Send ``batch`` over and over until the socket stays unwritable; bytes sent."""
    sent = 0
    view = memoryview(batch)
    offset = 0
    while sent < SEND_CAP:
        _, writable, _ = select.select([], [sock], [], BLOCKED_FOR)
        if not writable:
            return sent
        try:
            n = sock.send(view[offset:])
        except BlockingIOError:
            continue
        sent += n
        offset = (offset + n) % len(batch)
    return sent


def test_client_that_never_reads_blocks_and_costs_no_memory(start_server: Callable[..., Server]) -> None:
    server = start_server(app="tests.apps.echo:app")
    worker = psutil.Process(server.workers()[0].pid)
    before = worker.memory_info().rss
    sock = server.connect()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    sock.setblocking(False)
    batch = REQUEST * 64
    sent = _send_until_blocked(sock, batch)
    assert sent < SEND_CAP, f"{sent} bytes sent and the client's sends never blocked"
    growth = worker.memory_info().rss - before
    assert growth < RSS_GROWTH_BOUND, f"worker RSS grew by {growth / MiB:.1f} MiB"

    # The client reads now: every whole request it sent is answered, in order, and the
    # rest of the last one (if it was cut) completes the stream.
    whole, partial = divmod(sent, len(REQUEST))
    sock.setblocking(True)
    sock.settimeout(30)
    finisher = threading.Thread(target=sock.sendall, args=(REQUEST[partial:] if partial else b"",))
    finisher.start()
    client = RawClient(sock)
    expected = whole + (1 if partial else 0)
    for _ in range(expected):
        response = client.read_response()
        assert response.status == 200
        assert b'"path": "/flood"' in response.body
    finisher.join(timeout=30)
    client.send(b"GET /after HTTP/1.1\r\nHost: t\r\n\r\n")
    assert b'"path": "/after"' in client.read_response().body
    client.close()
    wait_for(lambda: worker.is_running(), 5, what="the worker is alive")


def test_unread_input_bound_fits_the_largest_allowed_head(start_server: Callable[..., Server]) -> None:
    """A head as large as max_header_bytes allows is still read, whatever the pipelining bound."""
    server = start_server(app="tests.apps.echo:app", config={"limits": "max_header_bytes = 600KiB"})
    big = b"X-Big: " + b"b" * (500 * 1024)
    with RawClient(server.connect()) as client:
        client.send(b"GET /big HTTP/1.1\r\nHost: t\r\n" + big + b"\r\n\r\n")
        response = client.read_response()
    assert response.status == 200
    assert b'"path": "/big"' in response.body


def test_a_client_that_half_closes_after_pipelining_gets_every_answer(start_server: Callable[..., Server]) -> None:
    server = start_server(app="tests.apps.echo:app")
    count = 20
    with RawClient(server.connect()) as client:
        client.send(b"".join(b"GET /n%d HTTP/1.1\r\nHost: t\r\n\r\n" % i for i in range(count)))
        client.sock.shutdown(socket.SHUT_WR)
        paths = [client.read_response().body for _ in range(count)]
        assert client.at_eof(), "the server closes after the last answer"
    assert [b'"path": "/n%d"' % i in body for i, body in enumerate(paths)] == [True] * count
