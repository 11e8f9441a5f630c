"""The Redis broadcast transport against a real redis-server on loopback.

Each ``Node`` plays one worker: a ``RedisTransport`` whose loop is a queue drained by the
test, and a fallback that records what stayed local. Redis is stopped, restarted and
frozen (SIGSTOP) to play an outage and a hung server.
"""

from __future__ import annotations

import dataclasses
import logging
import subprocess
import threading
from pathlib import Path

import pytest
import redis

from prefork.apps.broadcast import encode
from prefork.apps.broadcast_redis import probe, redacted, startup_problem
from tests.redis_helpers import WAIT, Node, RedisServer, from_handler, redis_server_path, settings_for, start
from tests.server import free_port, wait_for


def test_every_worker_gets_every_message_once_in_each_publishers_order(redis_server: RedisServer,
                                                                      nodes: list[Node]) -> None:
    settings = settings_for(redis_server.url)
    a, b, c = (start(nodes, settings) for _ in range(3))
    for n in range(500):
        a.transport.publish("chat", f"a{n}")
        b.transport.publish("chat", b"b%d" % n)  # bytes stay bytes
    for node in (a, b, c):
        wait_for(lambda node=node: node.has(1000), WAIT)
        assert len(node.received) == 1000
        assert [m for _, m in node.received if isinstance(m, str)] == [f"a{n}" for n in range(500)]
        assert [m for _, m in node.received if isinstance(m, bytes)] == [b"b%d" % n for n in range(500)]
        assert {channel for channel, _ in node.received} == {"chat"}
        assert node.local == []
    counts = a.transport.counts
    assert (counts.published, counts.received, counts.local_only, counts.dropped) == (500, 1000, 0, 0)
    assert a.reported[-1].connected and a.reported[-1].published == 500


def test_history_is_the_last_messages_the_same_for_every_worker(redis_server: RedisServer,
                                                                nodes: list[Node]) -> None:
    settings = settings_for(redis_server.url)
    a, late = start(nodes, settings), Node(settings)
    a.transport.retain("chat", 5)
    late.transport.retain("chat", 5)
    for n in range(8):
        a.transport.publish("chat", f"m{n}")
    a.transport.publish("other", "not kept")
    wait_for(lambda: a.has(9), WAIT)
    nodes.append(late)
    late.transport.start()  # a worker started after the messages were sent
    wait_for(lambda: late.transport.connected, WAIT)
    assert from_handler(late.transport.history, "chat") == [f"m{n}" for n in range(3, 8)]
    assert from_handler(a.transport.history, "chat") == from_handler(late.transport.history, "chat")
    assert from_handler(late.transport.history, "other") is None  # not kept: the worker's own record answers
    # on the loop thread (handlers without threads) Redis is never asked: the worker's record answers
    assert late.transport.history("chat") is None
    assert redis.Redis.from_url(redis_server.url).llen(a.transport.history_key("chat")) == 5


def test_redis_down_at_start_stays_local_then_connects(tmp_path: Path, nodes: list[Node]) -> None:
    port = free_port()
    settings = settings_for(f"redis://127.0.0.1:{port}/0")
    assert probe(settings) is not None  # the master's start-up warning has a reason
    node = start(nodes, settings, connected=False)
    node.transport.publish("chat", "while down")
    assert node.local == [("chat", "while down")]
    assert node.transport.counts.local_only == 1 and from_handler(node.transport.history, "chat") is None
    server = RedisServer(tmp_path, port)
    try:
        wait_for(lambda: node.transport.connected, WAIT)
        node.transport.publish("chat", "through redis")
        wait_for(lambda: node.has(1), WAIT)
        assert node.received == [("chat", "through redis")]
        assert node.local == [("chat", "while down")]  # nothing is replayed
    finally:
        server.stop()


def test_redis_lost_while_running_reconnects_and_counts_the_gap(redis_server: RedisServer, nodes: list[Node],
                                                               caplog: pytest.LogCaptureFixture) -> None:
    settings = settings_for(redis_server.url)
    a, b = start(nodes, settings), start(nodes, settings)
    with caplog.at_level(logging.INFO, logger="prefork.error"):
        redis_server.stop()
        wait_for(lambda: not a.transport.connected and not b.transport.connected, WAIT)
        for n in range(3):
            a.transport.publish("chat", f"gap{n}")
        assert a.local == [("chat", f"gap{n}") for n in range(3)]
        redis_server.start()
        wait_for(lambda: a.transport.connected and b.transport.connected, WAIT)
        a.transport.publish("chat", "after")
        wait_for(lambda: b.has(1), WAIT)
    assert b.received == [("chat", "after")]  # the gap's messages are not replayed to other servers
    assert a.transport.counts.local_only == 3
    lost = [r for r in caplog.records if "lost Redis" in r.getMessage()]
    back = [r for r in caplog.records if "3 messages reached this server only" in r.getMessage()]
    assert len(lost) == 2 and all(r.levelno == logging.WARNING for r in lost)  # once per worker
    assert len(back) == 1


def test_a_hung_redis_bounds_the_queue_drops_the_oldest_and_recovers(redis_server: RedisServer,
                                                                    nodes: list[Node]) -> None:
    settings = settings_for(redis_server.url, redis_queue=64 * 1024)
    node = start(nodes, settings)
    redis_server.pause()
    try:
        payload = "x" * 1000
        sent = 0
        # publish() only queues: it returns while Redis does not answer, and the queue stays
        # within redis_queue however much is offered.
        while node.transport.connected and sent < 20_000:
            node.transport.publish("chat", payload)
            sent += 1
            assert node.transport._queued_bytes <= settings.redis_queue
        assert node.transport.counts.dropped > 0
        wait_for(lambda: not node.transport.connected, WAIT)  # silence past redis_timeout
    finally:
        redis_server.resume()
    wait_for(lambda: node.transport.connected, WAIT)
    node.transport.publish("chat", "recovered")
    wait_for(lambda: node.has(1) and node.received[-1] == ("chat", "recovered"), WAIT)
    counts = node.transport.counts
    # every message offered is accounted for: sent to Redis, dropped, or kept local
    assert counts.published + counts.dropped + counts.local_only == sent + 1


def test_a_message_that_is_not_a_prefork_frame_is_skipped(redis_server: RedisServer, nodes: list[Node],
                                                         caplog: pytest.LogCaptureFixture) -> None:
    settings = settings_for(redis_server.url)
    node = start(nodes, settings)
    other = redis.Redis.from_url(redis_server.url)
    with caplog.at_level(logging.WARNING, logger="prefork.error"):
        other.publish(f"{settings.redis_prefix}:broadcast", b"\x00\x01garbage")
        other.publish(f"{settings.redis_prefix}:broadcast", encode("chat", "fine"))
        wait_for(lambda: node.has(1), WAIT)
    assert node.received == [("chat", "fine")]
    assert any("not a prefork frame" in r.getMessage() for r in caplog.records)


def test_a_password_from_a_file_and_a_unix_socket(tmp_path: Path, nodes: list[Node]) -> None:
    sock = tmp_path / "redis.sock"
    proc = subprocess.Popen([redis_server_path(), "--port", "0", "--unixsocket", str(sock), "--save", "",
                             "--appendonly", "no", "--requirepass", "s3cret word", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: sock.exists(), WAIT)
        (tmp_path / "pw").write_text("s3cret word\n")
        good = settings_for(f"unix://{sock}", redis_password_file=str(tmp_path / "pw"))
        assert startup_problem(good) is None and probe(good) is None
        node = start(nodes, good)
        node.transport.publish("chat", "authenticated")
        wait_for(lambda: node.has(1), WAIT)
        (tmp_path / "bad").write_text("wrong\n")
        assert probe(dataclasses.replace(good, redis_password_file=str(tmp_path / "bad"))) is not None
        missing = startup_problem(dataclasses.replace(good, redis_password_file=str(tmp_path / "none")))
        assert missing is not None and "redis_password_file" in missing
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_rediss_with_the_servers_ca(tmp_path: Path, nodes: list[Node]) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert.private_key_and_cert_chain_pem.write_to_path(str(tmp_path / "server.pem"))
    cert.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    port = free_port()
    proc = subprocess.Popen([redis_server_path(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                             "--tls-cert-file", str(tmp_path / "server.pem"), "--tls-key-file",
                             str(tmp_path / "server.key"), "--tls-ca-cert-file", str(tmp_path / "ca.pem"),
                             "--tls-auth-clients", "no", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={tmp_path / 'ca.pem'}"
        wait_for(lambda: proc.poll() is not None or probe(settings_for(url)) is None, WAIT)
        assert proc.poll() is None, "redis-server without TLS support"
        node = start(nodes, settings_for(url))
        node.transport.publish("chat", "over TLS")
        wait_for(lambda: node.has(1), WAIT)
        assert node.received == [("chat", "over TLS")]
        untrusted = f"rediss://127.0.0.1:{port}/0"  # the system's CAs do not know this one
        assert probe(settings_for(untrusted)) is not None
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_stop_ends_the_threads(redis_server: RedisServer) -> None:
    node = Node(settings_for(redis_server.url))
    node.transport.start()
    wait_for(lambda: node.transport.connected, WAIT)
    node.transport.stop()
    assert not any(thread.is_alive() for thread in node.transport._threads)
    assert {t.name for t in threading.enumerate()} & {"redis-publish", "redis-subscribe"} == set()


def test_logs_never_show_the_password() -> None:
    assert redacted("redis://:hunter2@10.0.0.5:6379/0") == "redis://:***@10.0.0.5:6379/0"
    assert redacted("rediss://app:hunter2@h:6380/1") == "rediss://app:***@h:6380/1"
    assert redacted("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize("size, count", [(64 * 1024, 96), (64, 3000)], ids=["large", "small"])
def test_a_loop_that_falls_behind_makes_redis_hold_the_backlog(redis_server: RedisServer, nodes: list[Node],
                                                              size: int, count: int) -> None:
    """What the subscriber hands a loop that does not run stops at BATCHES_IN_FLIGHT batches of
    at most DELIVERY_BATCH messages or a quarter of DELIVERY_BACKLOG bytes; the rest waits in Redis."""
    from prefork.apps.broadcast_redis import BATCHES_IN_FLIGHT, DELIVERY_BACKLOG, DELIVERY_BATCH

    settings = settings_for(redis_server.url)
    publisher, slow = start(nodes, settings), start(nodes, settings)
    message = "m" * size  # 6 MiB or 3,000 messages in all: within redis_queue (32 MiB)
    for _ in range(count):
        publisher.transport.publish("big", message)
    wait_for(lambda: publisher.has(count), WAIT)  # the publisher's own loop keeps up
    # the slow node's loop runs nothing: what it was handed stops at the bounds...
    wait_for(lambda: slow.transport._in_flight == BATCHES_IN_FLIGHT, WAIT)
    handed = slow.transport.counts.received  # the batches in flight, and the one waiting to go
    assert handed <= (BATCHES_IN_FLIGHT + 1) * DELIVERY_BATCH and handed < count
    assert slow.transport._backlog <= BATCHES_IN_FLIGHT * (DELIVERY_BACKLOG // 4 + size) <= DELIVERY_BACKLOG + 2 * size
    assert sum(len(batch) for _fn, (batch, _size) in list(slow.loop.queue)) <= BATCHES_IN_FLIGHT * DELIVERY_BATCH
    # ...and the rest waits in Redis until the loop catches up: nothing is lost
    wait_for(lambda: slow.has(count), WAIT)
    assert len(slow.received) == count and slow.transport._backlog == 0 and slow.transport._in_flight == 0
