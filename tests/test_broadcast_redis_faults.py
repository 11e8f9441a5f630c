"""The Redis broadcast transport under faults (real redis-server, real prefork servers).

From an adversarial review: messages larger than the queue, error replies from Redis,
passwords in URLs and in root-only files, a worker that never reaches Redis, reloads,
handlers on the loop thread (threads = 0) with a hung Redis, connections killed by Redis,
foreign data on the channel, a killed worker. Every process is stopped by PID; every
wait is on a condition.
"""

from __future__ import annotations

import json
import os
import logging
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
import websocket

from prefork.apps.app import App
from prefork.apps.broadcast import encode
from prefork.apps.broadcast_redis import redacted
from tests.redis_helpers import Node, RedisServer, redis_server_path, settings_for, start
from tests.server import REPO, Server, free_port, status, wait_for

WAIT = 20.0
MiB = 1024 * 1024

# --- an app for the server-level probes (served as tests.test_broadcast_redis_faults:app) ----
app = App()
app.keep_history("room", 10)


@app.route("/pub")
def _pub(request: Any) -> str:
    channel = request.args.get("channel") or "room"
    size = int(request.args.get("size") or 0)
    app.broadcast(channel, request.args.get("text") or ("x" * size))
    return "ok"


@app.route("/history")
def _hist(request: Any) -> Any:
    return {"history": [m if isinstance(m, str) else m.decode() for m in app.history("room")]}


class _Room:
    def on_open(self, ws: Any) -> None:
        ws.subscribe("room")

    def on_message(self, ws: Any, message: Any) -> None:
        app.broadcast("room", message)

    def on_close(self, ws: Any, code: int, reason: str) -> None:
        pass


app.websocket("/ws/room")(_Room)
APP = "tests.test_broadcast_redis_faults:app"


def redis_config(url: str, prefix: str = "review", **extra: str) -> dict[str, str]:
    values = {"broadcast": "redis", "redis_url": url, "redis_prefix": prefix, "redis_timeout": "1s", **extra}
    lines = [f"{k} = {v}" for k, v in values.items()]
    return {"websocket": "\n".join(lines)}


def get(server: Server, path: str, timeout: float = 30.0) -> tuple[int, str]:
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def _pending_bytes(node: Node) -> int:
    """Bytes of messages the subscriber thread handed to the (not running) loop so far."""
    total = 0
    for fn, args in list(node.loop.queue):
        for batch in args:
            total += sum(len(m) for _c, m in batch)
    return total



def test_a_message_over_redis_queue_is_delivered_like_with_local(redis_server: RedisServer,
                                                                 nodes: list[Node]) -> None:
    """A 9 MiB broadcast (max_message_size is 16 MiB) fits the default redis_queue (32 MiB) and
    is delivered through Redis as `local` would deliver it."""
    node = start(nodes, settings_for(redis_server.url))  # redis_queue: the 8 MiB default
    big = "y" * (9 * MiB)
    node.transport.publish("chat", big)
    node.transport.publish("chat", "after")
    wait_for(lambda: node.has(1) and node.received[-1] == ("chat", "after"), WAIT)
    assert node.transport.counts.dropped == 0, "a 9 MiB message was dropped although Redis is up"
    assert [len(m) for _c, m in node.received] == [len(big), 5]


def test_an_oversized_message_does_not_evict_the_queue(redis_server: RedisServer, nodes: list[Node]) -> None:
    """A frame larger than the whole queue is dropped by itself: it evicts no queued message."""
    node = start(nodes, settings_for(redis_server.url, redis_queue=1 * MiB, redis_timeout=5.0))
    redis_server.pause()
    try:
        node.transport.publish("chat", "first")  # the publisher thread takes it and blocks in the send
        wait_for(lambda: not node.transport._queue, WAIT)
        for n in range(10):
            node.transport.publish("chat", f"queued{n}")
        assert len(node.transport._queue) == 10
        node.transport.publish("chat", "z" * (2 * MiB))  # cannot fit in redis_queue at all
        assert node.transport.counts.dropped == 1, f"{node.transport.counts.dropped} dropped for one oversized message"
        assert len(node.transport._queue) == 10
    finally:
        redis_server.resume()


def test_a_failed_history_write_is_not_a_lost_connection(redis_server: RedisServer, nodes: list[Node],
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """A server-side error reply (here WRONGTYPE on the history key; also OOM under maxmemory,
    READONLY on a replica) is Redis refusing a command, not a lost connection: the PUBLISH that
    EXEC ran counts as published, nothing queued is thrown away, and the log says so once per
    kind of error, without the message's text."""
    settings = settings_for(redis_server.url)
    node = start(nodes, settings)
    node.transport.retain("chat", 5)
    other = redis.Redis.from_url(redis_server.url)
    other.set(node.transport.history_key("chat"), "not a list")
    with caplog.at_level(logging.INFO, logger="prefork.error"):
        node.transport.publish("chat", "secret-m1")
        node.transport.publish("chat", "secret-m2")
        wait_for(lambda: node.has(2), WAIT)
        wait_for(lambda: node.transport.connected, WAIT)
    counts = node.transport.counts
    assert node.received == [("chat", "secret-m1"), ("chat", "secret-m2")]  # Redis did deliver them
    lost = [r.getMessage() for r in caplog.records if "lost Redis" in r.getMessage()]
    assert (counts.dropped, counts.published, lost) == (0, 2, []), f"{counts}, logged: {lost}"
    refused = [r.getMessage() for r in caplog.records if "refused a command" in r.getMessage()]
    assert len(refused) == 1 and "WRONGTYPE" in refused[0] and "secret" not in refused[0], refused


def test_a_password_in_the_url_query_is_redacted() -> None:
    """redis-py takes ?password= too: logs hide it as they hide the userinfo password."""
    assert "hunter2" not in redacted("redis://10.0.0.5:6379/0?password=hunter2")


def test_check_config_does_not_print_the_redis_password(tmp_path: Path) -> None:
    config = tmp_path / "a.ini"
    config.write_text("[websocket]\nbroadcast = redis\nredis_url = redis://:hunter2@127.0.0.1:1/0\n"
                      "redis_timeout = 200ms\n")
    result = subprocess.run([sys.executable, "-m", "prefork.cli", "-c", str(config), "--check-config"],
                            cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "redis_url" in result.stdout
    assert "hunter2" not in result.stdout + result.stderr


def test_a_worker_that_never_reaches_redis_says_why(tmp_path: Path, nodes: list[Node],
                                                    caplog: pytest.LogCaptureFixture) -> None:
    """A worker that has never reached Redis says why once (here: a password file it cannot read)."""
    settings = settings_for(f"redis://127.0.0.1:{free_port()}/0",
                            redis_password_file=str(tmp_path / "missing.password"))
    with caplog.at_level(logging.DEBUG, logger="prefork.error"):
        node = Node(settings)
        nodes.append(node)
        made = [0]
        factory = node.transport._client_factory

        def counting() -> Any:
            made[0] += 1
            return factory()
        node.transport._client_factory = counting
        node.transport.start()
        wait_for(lambda: made[0] >= 6, WAIT)  # both threads have failed a few rounds
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("missing.password" in m for m in said), f"nothing says why it stays local-only: {said}"


def _chat(port: int, timeout: float = 30.0) -> tuple[websocket.WebSocket, list[dict[str, Any]]]:
    ws = websocket.create_connection(f"ws://127.0.0.1:{port}/ws/chat", timeout=timeout)
    first = json.loads(ws.recv())
    assert first["type"] == "history"
    return ws, first["messages"]


@pytest.mark.parametrize("threads", [4, 0])
def test_a_chat_join_never_stalls_the_loop_on_a_hung_redis(start_server: Any, redis_server: RedisServer,
                                                          threads: int) -> None:
    """The demo's on_open reads app.history(); with [server] threads = 0 it runs on the loop, which
    must never wait for Redis: a hung Redis (SIGSTOP, still "connected" for redis_timeout) must
    not hold up the status page, answered by the same loop."""
    server = start_server(app="", workers=1, threads=threads,
                          config=redis_config(redis_server.url, redis_timeout="3s"))
    wait_for(lambda: status(server)["redis_connected"] == 1, WAIT)
    ws, _history = _chat(server.port)  # the history client is connected now
    ws.close()
    redis_server.pause()
    try:
        done = threading.Event()

        def join() -> None:
            try:
                _chat(server.port)[0].close()
            except Exception:
                pass
            finally:
                done.set()
        joiner = threading.Thread(target=join, daemon=True)
        joiner.start()
        slowest = 0.0
        while not done.is_set():
            began = time.monotonic()
            status(server)
            slowest = max(slowest, time.monotonic() - began)
        joiner.join(WAIT)
    finally:
        redis_server.resume()
    assert slowest < 1.0, f"the status page waited {slowest:.1f} s behind a chat join"


def test_a_reload_to_redis_with_an_unreadable_password_file_is_refused(start_server: Any,
                                                                      redis_server: RedisServer,
                                                                      tmp_path: Path) -> None:
    """A HUP reload to broadcast = redis with a password file that cannot be read is refused, as
    start-up would refuse it, and the log names the file."""
    server = start_server(app=APP, workers=1)
    missing = tmp_path / "no-such.password"
    with open(server.config_path, "a") as handle:
        handle.write(f"[websocket]\nbroadcast = redis\nredis_url = {redis_server.url}\n"
                     f"redis_password_file = {missing}\nredis_timeout = 1s\n")
    server.signal(signal.SIGHUP)
    wait_for(lambda: "reload failed" in server.output(), WAIT)
    assert re.search(r"reload failed, keeping the running configuration: .*no-such\.password", server.output())
    assert [w["broadcast"]["redis"] for w in status(server)["workers"]] == ["none"]  # still the local hub


@pytest.mark.skipif(os.geteuid() != 0, reason="the workers must run as user nobody, which only root can "
                    "arrange (CI runs as root and counts a skip as a failure)")
def test_a_password_file_only_root_can_read_serves_workers_of_another_user(tmp_path: Path) -> None:
    """A root-only redis_password_file works: the master reads it for its workers, which run as
    [server] user and could not."""
    import shutil
    import tempfile
    open_dir = Path(tempfile.mkdtemp(prefix="prefork-review-", dir="/tmp"))
    open_dir.chmod(0o755)
    proc = None
    server = None
    try:
        port = free_port()
        proc = subprocess.Popen([redis_server_path(), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                 "--appendonly", "no", "--requirepass", "s3cret", "--dir", str(open_dir)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        secret = open_dir / "redis.password"
        secret.write_text("s3cret\n")
        secret.chmod(0o600)  # root's
        wait_for(lambda: proc.poll() is not None or
                 redis.Redis(port=port, password="s3cret").ping(), WAIT)  # type: ignore[union-attr]
        server = Server(open_dir, app="tests.apps.upload:app", workers=1,  # nobody cannot reach /root
                        config={"server": "user = nobody",
                                **redis_config(f"redis://127.0.0.1:{port}/0", redis_password_file=str(secret))})
        server.wait_ready()
        wait_for(lambda: status(server)["workers"][0]["broadcast"]["redis"] != "none", WAIT)
        assert "does not answer" not in server.output()  # the master's probe, as root, got in
        # the master (root) read the file for its workers (user nobody), which authenticate with it
        wait_for(lambda: status(server)["redis_connected"] == 1, WAIT)
    finally:
        if server is not None:
            server.stop()
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
        shutil.rmtree(open_dir, ignore_errors=True)



def test_client_kill_of_either_connection_reconnects_without_duplicates(redis_server: RedisServer,
                                                                       nodes: list[Node]) -> None:
    settings = settings_for(redis_server.url)
    a, b = start(nodes, settings), start(nodes, settings)
    admin = redis.Redis.from_url(redis_server.url)
    a.transport.publish("chat", "before")
    wait_for(lambda: b.has(1), WAIT)
    admin.client_kill_filter(_type="normal", skipme=True)  # every publisher connection
    a.transport.publish("chat", "after publisher kill")
    wait_for(lambda: b.has(2), WAIT)
    assert a.transport.counts.dropped == 0  # the pool notices the closed socket and reconnects
    seen = len(b.reported)
    admin.client_kill_filter(_type="pubsub")
    wait_for(lambda: any(not r.connected for r in b.reported[seen:]), WAIT)  # b noticed
    wait_for(lambda: a.transport.connected and b.transport.connected, WAIT)
    a.transport.publish("chat", "after subscriber kill")
    wait_for(lambda: b.has(3) and b.received[-1] == ("chat", "after subscriber kill"), WAIT)
    assert [m for _c, m in b.received] == ["before", "after publisher kill", "after subscriber kill"]


def test_foreign_data_on_the_channel_never_stops_delivery(redis_server: RedisServer, nodes: list[Node]) -> None:
    settings = settings_for(redis_server.url)
    node = start(nodes, settings)
    channel = f"{settings.redis_prefix}:broadcast"
    subprocess.run(["redis-cli", "-p", str(redis_server.port), "PUBLISH", channel, "hello from redis-cli"],
                   check=True, capture_output=True, timeout=10)
    other = redis.Redis.from_url(redis_server.url)
    bad_utf8 = bytearray(encode("chat", "é"))
    bad_utf8[-1] = 0xFF  # a text frame whose payload is not UTF-8
    for junk in (b"", b"\x00" * 7, bytes(bad_utf8), encode("chat", "x")[:-1], b"\xff" * 64):
        other.publish(channel, junk)
    other.publish(channel, encode("chat", "fine"))
    wait_for(lambda: node.has(1), WAIT)
    assert node.received == [("chat", "fine")] and node.transport.connected


def test_stop_ends_both_threads_while_redis_is_hung(redis_server: RedisServer) -> None:
    node = Node(settings_for(redis_server.url, redis_timeout=1.0))
    node.transport.start()
    wait_for(lambda: node.transport.connected, WAIT)
    redis_server.pause()
    try:
        node.transport.publish("chat", "stuck")  # the publisher blocks in the send
        wait_for(lambda: not node.transport._queue, WAIT)
        node.transport.stop(timeout=5.0)
        assert not any(thread.is_alive() for thread in node.transport._threads)
    finally:
        redis_server.resume()


def test_counts_stay_monotonic_when_a_worker_is_killed(start_server: Any, redis_server: RedisServer) -> None:
    server = start_server(app=APP, workers=1, config=redis_config(redis_server.url))
    wait_for(lambda: status(server)["redis_connected"] == 1, WAIT)
    for n in range(5):
        assert get(server, f"/pub?text=m{n}")[0] == 200
    wait_for(lambda: status(server)["broadcast"]["received"] == 5, WAIT)
    before = status(server)["broadcast"]
    pid = status(server)["workers"][0]["pid"]
    psutil.Process(pid).send_signal(signal.SIGKILL)
    wait_for(lambda: [w["pid"] for w in status(server)["workers"]] not in ([pid], []), WAIT)
    wait_for(lambda: status(server)["redis_connected"] == 1, WAIT)
    after = status(server)["broadcast"]
    assert all(after[k] >= before[k] for k in before), (before, after)
    assert get(server, "/pub?text=again")[0] == 200
    wait_for(lambda: status(server)["broadcast"]["received"] == 6, WAIT)
    # the history lives in Redis: the respawned worker shows the old messages too
    assert json.loads(get(server, "/history")[1])["history"] == [f"m{n}" for n in range(5)] + ["again"]


def test_threads_0_broadcast_through_redis(start_server: Any, redis_server: RedisServer) -> None:
    server = start_server(app=APP, workers=2, threads=0, config=redis_config(redis_server.url))
    wait_for(lambda: status(server)["redis_connected"] == 2, WAIT)
    clients = [websocket.create_connection(f"ws://127.0.0.1:{server.port}/ws/room", timeout=WAIT)
               for _ in range(8)]
    try:
        wait_for(lambda: sum(w["websockets"] for w in status(server)["workers"]) == 8, WAIT)
        for n in range(20):
            clients[n % 2].send(f"{n % 2}:{n}")
        for ws in clients:
            got = [ws.recv() for _ in range(20)]
            for sender in (0, 1):
                assert [m for m in got if m.startswith(f"{sender}:")] == [f"{sender}:{n}" for n in range(sender, 20, 2)]
    finally:
        for ws in clients:
            ws.close()
