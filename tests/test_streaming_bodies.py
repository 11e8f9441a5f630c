"""Streamed request bodies against the real server: read while they arrive, bounded, full duplex.

Native routes declared ``stream=True`` (``tests/apps/stream_body.py``) and WSGI routes
under ``[streaming] paths`` (``tests/apps/stream_wsgi.py``) get their handler called at
the head. The tests check what users of such routes rely on: the body arrives whole
(Content-Length and chunked), the response can go out while the body still streams, a
handler that does not read makes the client's sends block instead of the worker's
memory grow, a client that vanishes is a ``ClientDisconnected`` in the handler, streams
are counted and bounded (503), and neither handler_timeout nor the body rate rule
blames a stream for the handler's own slowness.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests

from tests.server import RawClient, Server, status, wait_for

MiB = 1 << 20
WAIT = 10.0
NATIVE = "tests.apps.stream_body:app"


def chunked(data: bytes, piece: int = 256 * 1024) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + piece]), data[i:i + piece])
                    for i in range(0, len(data), piece)) + b"0\r\n\r\n"


def streaming_head(path: str, extra: str = "Transfer-Encoding: chunked\r\n") -> bytes:
    return f"POST {path} HTTP/1.1\r\nHost: t\r\n{extra}\r\n".encode()


def streams_in_progress(server: Server) -> int:
    return sum(w["streams"] for w in status(server)["workers"])


def received_in_flight(server: Server) -> list[int]:
    return [u["received"] for w in status(server)["workers"] for u in w["uploads"]]


@pytest.fixture
def native(start_server: Callable[..., Server], tmp_path: Path) -> Server:
    env = {"STREAM_GATE": str(tmp_path / "gate"), "STREAM_REPORT": str(tmp_path / "report.json")}
    return start_server(app=NATIVE, env=env, config={"streaming": "max_streams = 2"})


def test_a_streamed_body_arrives_whole_with_content_length_and_chunked(native: Server) -> None:
    data = os.urandom(12 * MiB + 7)
    expected = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert requests.post(native.url + "/ingest", data=data, timeout=WAIT).json() == expected
    pieces = (data[i:i + MiB] for i in range(0, len(data), MiB))  # a generator: requests sends it chunked
    assert requests.post(native.url + "/ingest", data=pieces, timeout=WAIT).json() == expected


def test_other_routes_keep_staging_and_the_connection_serves_on(native: Server) -> None:
    body = b"x" * 1000
    with RawClient(native.connect()) as client:
        client.send(streaming_head("/ingest", f"Content-Length: {len(body)}\r\n") + body)
        first = client.read_response()
        client.send(b"POST /staged HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello")
        second = client.read_response()
    assert json.loads(first.body)["bytes"] == 1000
    assert json.loads(second.body) == {"bytes": 5, "stream": False}


def test_the_response_streams_while_the_body_still_arrives(native: Server) -> None:
    with RawClient(native.connect()) as client:
        client.send(streaming_head("/echo"))
        seen = b""
        for n in range(5):  # each piece comes back before the next one is sent: full duplex
            piece = b"piece-%d;" % n
            client.send(b"%x\r\n%s\r\n" % (len(piece), piece))
            deadline = time.monotonic() + WAIT
            while piece not in seen:
                assert time.monotonic() < deadline, f"no echo of {piece!r}; got {seen!r}"
                data = client.sock.recv(65536)
                assert data, "closed before the echo"
                seen += data
        client.send(b"0\r\n\r\n")
    assert seen.startswith(b"HTTP/1.1 200 OK\r\n")


def test_a_handler_that_does_not_read_blocks_the_client_not_the_workers_memory(native: Server,
                                                                               tmp_path: Path) -> None:
    worker = native.workers()[0]
    before = worker.memory_info().rss
    data = os.urandom(64 * MiB)
    sock = native.connect()
    sock.settimeout(60)
    sender = threading.Thread(target=lambda: sock.sendall(streaming_head("/gated") + chunked(data)), daemon=True)
    sender.start()
    last: list[int] = []

    def server_stopped_taking() -> bool:  # two status reads in a row see the same byte count
        now = received_in_flight(native)
        settled = bool(now) and now == last
        last[:] = now
        return settled

    wait_for(server_stopped_taking, WAIT, what="the server to stop reading the stream")
    assert sender.is_alive(), "the whole 64 MiB was taken while the handler read nothing"
    assert last[0] < 16 * MiB, last  # the stream's bound, one receive buffer and the socket buffers
    assert worker.memory_info().rss - before < 16 * MiB
    (tmp_path / "gate").touch()  # the handler starts reading: everything arrives
    sender.join(WAIT)
    assert not sender.is_alive()
    response = RawClient(sock).read_response()
    sock.close()
    assert json.loads(response.body) == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def test_a_client_that_vanishes_is_a_clear_exception_in_the_handler(native: Server, tmp_path: Path) -> None:
    with RawClient(native.connect()) as client:
        client.send(streaming_head("/vanish") + b"%x\r\n%s\r\n" % (MiB, b"v" * MiB))
        wait_for(lambda: MiB in received_in_flight(native), WAIT, what="the first MiB received")
    report = tmp_path / "report.json"
    wait_for(report.exists, WAIT, what="the handler's report")
    outcome = json.loads(report.read_text())
    assert outcome["error"] == "ClientDisconnected"
    assert outcome["bytes"] == MiB
    assert "closed" in outcome["message"]
    wait_for(lambda: streams_in_progress(native) == 0, WAIT, what="the stream counted out")


def test_streams_are_counted_and_bounded(native: Server, tmp_path: Path) -> None:
    held = [RawClient(native.connect()) for _ in range(2)]  # max_streams = 2, both held at the gate
    try:
        for client in held:
            client.send(streaming_head("/gated"))
        wait_for(lambda: streams_in_progress(native) == 2, WAIT, what="two streams in progress")
        with RawClient(native.connect()) as third:
            third.send(streaming_head("/gated"))
            refused = third.read_response()
        assert refused.status == 503
        assert b"max_streams" in refused.body
        prometheus = requests.get(native.url + "/server-status?format=prometheus", timeout=WAIT).text
        assert "prefork_streams_in_progress 2" in prometheus
        (tmp_path / "gate").touch()
        for client in held:
            client.send(b"0\r\n\r\n")
            assert client.read_response().status == 200
    finally:
        for client in held:
            client.close()
    wait_for(lambda: streams_in_progress(native) == 0, WAIT, what="the streams counted out")


def test_a_long_stream_outlives_handler_timeout_and_the_heartbeat(start_server: Callable[..., Server]) -> None:
    server = start_server(app=NATIVE, config={"process": "handler_timeout = 1s\ntimeout = 2s"})
    pid = server.workers()[0].pid
    sent = 0
    with RawClient(server.connect()) as client:
        client.send(streaming_head("/ingest"))
        deadline = time.monotonic() + 3.5  # longer than both; the handler is reading all along
        while time.monotonic() < deadline:
            client.send(b"%x\r\n%s\r\n" % (64 * 1024, b"s" * 64 * 1024))
            sent += 64 * 1024
            time.sleep(0.05)  # pacing the client: the stream lasts, it is not what is checked
        client.send(b"0\r\n\r\n")
        response = client.read_response()
    assert response.status == 200
    assert json.loads(response.body)["bytes"] == sent
    assert [w.pid for w in server.workers()] == [pid]


def test_a_stream_never_ending_at_full_speed_keeps_worker_memory_flat(native: Server) -> None:
    worker = native.workers()[0]
    block = b"%x\r\n%s\r\n" % (MiB, os.urandom(MiB))
    with RawClient(native.connect()) as client:
        client.send(streaming_head("/ingest"))
        client.send(block)
        wait_for(lambda: bool(received_in_flight(native)), WAIT, what="the stream under way")
        baseline = worker.memory_info().rss
        peak = baseline
        for _ in range(2048):  # 2 GiB, as fast as loopback takes it
            client.send(block)
            peak = max(peak, worker.memory_info().rss) if _ % 64 == 0 else peak
        client.send(b"0\r\n\r\n")
        response = client.read_response()
    assert json.loads(response.body)["bytes"] == 2049 * MiB
    assert peak - baseline < 16 * MiB, (baseline, peak)


def wsgi_pieces(data: bytes) -> Iterator[bytes]:
    for i in range(0, len(data), 300_000):
        yield data[i:i + 300_000]


def test_wsgi_streaming_paths_give_a_streaming_wsgi_input(start_server: Callable[..., Server]) -> None:
    server = start_server(app="tests.apps.stream_wsgi:app", config={"streaming": "paths = /ingest, /live/"})
    data = os.urandom(5 * MiB + 3)
    digest = hashlib.sha256(data).hexdigest()
    streamed = requests.post(server.url + "/live/feed", data=wsgi_pieces(data), timeout=WAIT).json()
    assert streamed == {"bytes": len(data), "sha256": digest, "content_length": "", "seekable": False}
    declared = requests.post(server.url + "/ingest", data=data, timeout=WAIT).json()
    assert declared == {"bytes": len(data), "sha256": digest, "content_length": str(len(data)), "seekable": False}
    staged = requests.post(server.url + "/other", data=wsgi_pieces(data), timeout=WAIT).json()
    assert staged == {"bytes": len(data), "sha256": digest, "content_length": str(len(data)), "seekable": True}


def test_a_flask_app_unchanged_reads_request_stream_while_it_arrives(start_server: Callable[..., Server]) -> None:
    server = start_server(app="tests.apps.stream_flask:app", config={"streaming": "paths = /ingest"})
    data = os.urandom(3 * MiB + 1)
    expected = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert requests.post(server.url + "/ingest", data=wsgi_pieces(data), timeout=WAIT).json() == expected
    assert requests.post(server.url + "/ingest", data=data, timeout=WAIT).json() == expected


def test_an_answer_before_the_body_ends_is_read_whole_not_reset(native: Server) -> None:
    with RawClient(native.connect()) as client:
        client.send(streaming_head("/early", "Content-Length: 67108864\r\n") + b"e" * (4 * MiB))
        response = client.read_response()  # the server drains what it will not read, then closes
        assert response.status == 202 and json.loads(response.body) == {"read": 0}
        assert response.header("Connection") == "close"


def test_a_request_without_a_body_on_a_streaming_path_is_served_and_not_counted(
        start_server: Callable[..., Server]) -> None:
    server = start_server(app="tests.apps.stream_wsgi:app", config={"streaming": "paths = /live/\nmax_streams = 1"})
    answers = [requests.get(server.url + "/live/feed", timeout=WAIT).json() for _ in range(3)]
    assert answers == [{"bytes": 0, "sha256": hashlib.sha256(b"").hexdigest(), "content_length": "0",
                        "seekable": True}] * 3
    assert streams_in_progress(server) == 0
