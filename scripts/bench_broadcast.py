"""``scripts/bench.py broadcast``: WebSocket broadcast, the master's hub (local) vs Redis.

Strategy: the figure wanted is the transport, so every server runs
``bench_apps:broadcast_app``: ``/ws/fan`` subscribes to channel ``fan`` and
``/ws/pub`` broadcasts what it receives to ``fan`` verbatim (no JSON, no
history). Every server is the shipped ``conf/server.ini`` (threads 4, access log
on as shipped, compression offered, pings every 20 s) with only bind, workers and
the ``[websocket] broadcast`` keys changed: ``local`` (the master relays between its
own workers), or ``redis`` against a Debian ``redis-server`` this scenario starts
on a free loopback port (no persistence; stopped by PID in a ``finally``), each
server start under a ``redis_prefix`` of its own. Several instances of one
contender share that prefix; a client connects to each instance's port directly,
alternately (no proxy). Contenders run alternately, each on fresh servers, and
every figure is a median over ``--runs``:

1. Fan-out latency. 2,000 clients (``--quick``: 400), the ``websockets`` asyncio
   client (compression off, so each message is the transport's and not deflate's),
   in ``FAN_PROCS`` processes of 1,000, all subscribed. Contenders: Redis with 2
   instances x 2 workers (the clients spread evenly), local with 1 instance x 4
   workers (the same workers in all; the local hub cannot reach across instances,
   so all 2,000 are on it), and Redis with 1 x 4 (the same layout as local: the cost
   of the transport alone). A sender on ``/ws/pub`` of the first instance sends
   warm-up messages until one reaches every client, then ``FAN_MESSAGES`` (quick:
   5) numbered, timestamped messages, one at a time: the next goes out
   ``FAN_GAP`` s after the previous one reached everyone (or after
   ``FAN_TIMEOUT``). Each client notes when each message arrived
   (``time.monotonic``, one clock for all processes). Per message, "all have it" =
   the latest arrival minus the send; reported: its median over the messages, and
   the p50 / p99 of the per-client latencies of all messages pooled (e.g. 40,000).
2. Throughput. 100 subscribers on one raw-socket client process (selectors; a
   block of identical frames is checked with one comparison, so the client is
   cheap next to the servers); ``TP_PUBLISHERS`` raw publishers on ``/ws/pub`` send
   ``TP_MESSAGES`` (50,000; quick: 5,000) 64-byte messages between them as fast as the
   server reads them. Contenders: local 1 x 2, Redis 1 x 2, Redis 2 x 2 (the
   subscribers and the publishers spread over both instances). Reported:
   messages/s delivered to all 100 = messages / (first send -> the last
   subscriber's last message), and the losses: messages some subscriber did not
   get, counted by the subscribers, beside the status page's ``broadcast.dropped``
   and ``local_only`` (``/server-status?format=json``, summed over instances).
   Also in the medians: ``first_ms`` (first send -> the first frame at any
   subscriber) and ``stall_max_s`` (the longest time after that in which no
   subscriber got anything); a run ends when every subscriber has every message or
   after ``TP_IDLE`` s without a frame.

Targets: Redis 2 x 2 fan-out ("all have it", median) within 2x local 1 x 4;
the throughput ratio Redis / local is reported. Client and servers share the
machine's 2 cores: at 2,000 clients the client processes' own CPU is part of every
latency (reported as client CPU), alike for each contender.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from bench import (HOST, Metrics, Results, RunningServer, ServerSpec, SummaryRow, Workspace, _stop,
                   fmt, free_port, log_tail, median, prefork_server, print_medians, print_table, ratio,
                   report_ratio, reported, running, save_json, target_max, ws_frame)

APP = "broadcast_app"
FAN = "fan-out"
TP = "throughput"
FAN_CLIENTS = 2000
FAN_PROCS = 2  # client processes (2 cores: more would only take CPU from the servers)
FAN_MESSAGES = 20
FAN_GAP = 0.05  # s of quiet after a message reached everyone, before the next one
FAN_TIMEOUT = 10.0  # s a message may take to reach everyone before it counts as lost to some
CONNECT_CONCURRENCY = 64  # handshakes in flight per client process
WARMUP_TIMEOUT = 30.0  # s for one warm-up message to reach every client (Redis connected, subscribed)
TP_SUBSCRIBERS = 100
TP_PUBLISHERS = 2
TP_MESSAGES = 50000
TP_PAYLOAD = b"m" * 64
TP_IDLE = 15.0  # s without a frame after which a throughput run counts what arrived as all it gets
FAN_TARGET = 2.0  # Redis fan-out within this many times local


@dataclass(frozen=True)
class Contender:
    """Servers started together for one measurement: ``instances`` x ``workers``, one backend."""

    backend: str  # "local" | "redis"
    instances: int
    workers: int
    variants: tuple[str, ...]

    @property
    def name(self) -> str:
        return f"{self.backend} {self.instances}x{self.workers}"


CONTENDERS = [Contender("local", 1, 4, (FAN,)), Contender("redis", 2, 2, (FAN, TP)),
              Contender("redis", 1, 4, (FAN,)), Contender("local", 1, 2, (TP,)), Contender("redis", 1, 2, (TP,))]


def raise_nofile() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit: 2,000 sockets in a few processes (inherited)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))


# --------------------------------------------------------------------------- redis-server


@contextlib.contextmanager
def redis_server(ws: Workspace) -> Iterator[RunningServer]:
    """Debian's redis-server on a free loopback port, no persistence; stopped by PID."""
    port = free_port()
    log = ws.log_path("redis-server")
    argv = ["/usr/bin/redis-server", "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no"]
    with open(log, "ab") as out:
        proc = subprocess.Popen(argv, cwd=ws.scratch, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
    server = RunningServer(ServerSpec("redis-server", lambda p, lg: argv), proc, port, log)
    try:
        deadline = time.monotonic() + 10
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}; log {log}:\n{log_tail(log)}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(64).startswith(b"+PONG"):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"redis-server not answering PING on {port}; log {log}")
            time.sleep(0.05)
        yield server
    finally:
        _stop(server)


# --------------------------------------------------------------------------- servers


@contextlib.contextmanager
def cluster(contender: Contender, ws: Workspace, redis_port: int, tag: str) -> Iterator[list[RunningServer]]:
    """Start every instance of ``contender`` (and always stop them)."""
    keys = {"broadcast": contender.backend}
    if contender.backend == "redis":
        keys.update(redis_url=f"redis://{HOST}:{redis_port}/0", redis_prefix=f"bench-{tag}")
    with contextlib.ExitStack() as stack:
        servers = []
        for i in range(contender.instances):
            spec = prefork_server(ws, APP, workers=contender.workers, threads=4, access_log=True,
                                  name=f"{contender.name} #{i + 1}", overrides={"websocket": keys})
            servers.append(stack.enter_context(running(spec, ws)))
        yield servers


def status_json(server: RunningServer) -> dict[str, Any]:
    conn = http.client.HTTPConnection(HOST, server.port, timeout=10)
    try:
        conn.request("GET", "/server-status?format=json")
        response = conn.getresponse()
        body = response.read()
        return json.loads(body) if response.status == 200 else {}
    except (OSError, ValueError):
        return {}
    finally:
        conn.close()


def status_counts(servers: list[RunningServer]) -> Metrics:
    """Σ of the status pages' ``broadcast`` counts (when they have them) and WebSockets per worker."""
    out: Metrics = {}
    per_worker: list[int] = []
    for server in servers:
        snap = status_json(server)
        for key, value in (snap.get("broadcast") or {}).items():
            if isinstance(value, (int, float)):
                out[f"status_{key}"] = out.get(f"status_{key}", 0.0) + value
        per_worker += [int(w.get("websockets", 0)) for w in snap.get("workers", [])]
    if per_worker:
        out["ws_per_worker_min"], out["ws_per_worker_max"] = float(min(per_worker)), float(max(per_worker))
    return out


def wait_redis_connected(contender: Contender, servers: list[RunningServer], timeout: float = 15.0) -> None:
    """Where the status page says how many workers hold Redis, wait until all do (else: warm-up decides)."""
    if contender.backend != "redis":
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        snaps = [status_json(s) for s in servers]
        if any("redis_connected" not in snap for snap in snaps):
            return
        if sum(int(snap["redis_connected"]) for snap in snaps) >= contender.instances * contender.workers:
            return
        time.sleep(0.1)


# --------------------------------------------------------------------------- fan-out: the client processes


def fan_client_main(urls: list[str], pipe: Any) -> None:
    """One client process: a ``websockets`` connection to each of ``urls``, reporting over ``pipe``."""
    raise_nofile()
    try:
        asyncio.run(_fan_client(urls, pipe))
    except BaseException as exc:  # the controller must hear of it, not wait for a message that never comes
        with contextlib.suppress(OSError):
            pipe.send(("error", repr(exc)))
        raise


async def _fan_client(urls: list[str], pipe: Any) -> None:
    from websockets.asyncio.client import connect

    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(CONNECT_CONCURRENCY)
    n = len(urls)

    async def open_one(url: str) -> Any:
        async with gate:
            return await connect(url, compression=None, proxy=None, ping_interval=None, open_timeout=60,
                                 close_timeout=5)

    conns = await asyncio.gather(*(open_one(u) for u in urls))
    counts: dict[int, int] = {}
    latencies: dict[int, list[float]] = {}
    stop = asyncio.Event()

    def command() -> None:
        if pipe.recv() == "stop":
            stop.set()

    async def read(conn: Any) -> None:
        with contextlib.suppress(Exception):
            async for message in conn:
                now = time.monotonic()
                seq_text, _, sent = message.partition(" ")
                seq = int(seq_text)
                count = counts[seq] = counts.get(seq, 0) + 1
                if seq >= 0:
                    latencies.setdefault(seq, []).append(now - float(sent))
                if count == n:
                    pipe.send(("all", seq))

    loop.add_reader(pipe.fileno(), command)
    tasks = [asyncio.create_task(read(c)) for c in conns]
    cpu = time.process_time()
    pipe.send(("connected", n))
    await stop.wait()
    cpu = time.process_time() - cpu
    loop.remove_reader(pipe.fileno())
    await asyncio.gather(*(c.close() for c in conns), return_exceptions=True)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    pipe.send(("result", latencies, {k: v for k, v in counts.items() if k >= 0}, cpu))


class FanClients:
    """The client processes of one fan-out measurement, seen from the controller."""

    def __init__(self, ports: list[int], clients: int) -> None:
        import multiprocessing

        ctx = multiprocessing.get_context("fork")
        urls = [f"ws://{HOST}:{ports[i % len(ports)]}/ws/fan" for i in range(clients)]
        self.pipes, self.procs = [], []
        for part in range(FAN_PROCS):
            mine, theirs = ctx.Pipe()
            proc = ctx.Process(target=fan_client_main, args=(urls[part::FAN_PROCS], theirs), daemon=True)
            proc.start()
            theirs.close()
            self.pipes.append(mine)
            self.procs.append(proc)
        self.pending: list[list[Any]] = [[] for _ in self.pipes]

    def next_event(self, index: int, kind: str, timeout: float) -> Any:
        """The next message of ``kind`` from client process ``index``, or None after ``timeout``."""
        return _recv_event(self.pipes[index], kind, timeout, f"fan-out client process {index}", self.pending[index])

    def wait_all(self, seq: int, timeout: float) -> bool:
        """Until every process has reported message ``seq`` at all of its clients."""
        deadline = time.monotonic() + timeout
        for index in range(len(self.pipes)):
            while True:
                event = self.next_event(index, "all", max(0.0, deadline - time.monotonic()))
                if event is None:
                    return False
                if event[1] == seq:
                    break

        return True

    def finish(self) -> list[Any]:
        for pipe in self.pipes:
            with contextlib.suppress(OSError):
                pipe.send("stop")
        results = [self.next_event(i, "result", 120.0) for i in range(len(self.pipes))]
        self.close()
        return results

    def close(self) -> None:
        for proc in self.procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join(5)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


def measure_fanout(contender: Contender, servers: list[RunningServer], clients: int, messages: int) -> Metrics:
    from websockets.sync.client import connect

    ports = [s.port for s in servers]
    fans = FanClients(ports, clients)
    try:
        for index in range(FAN_PROCS):
            if fans.next_event(index, "connected", 180.0) is None:
                raise RuntimeError(f"{contender.name}: fan-out clients not connected after 180 s")
        began = time.monotonic()
        with connect(f"ws://{HOST}:{ports[0]}/ws/pub", compression=None, proxy=None, ping_interval=None) as sender:
            seq, deadline = -1, time.monotonic() + WARMUP_TIMEOUT
            while True:  # warm-up: until one message reaches every client (all subscribed, Redis connected)
                sender.send(f"{seq} {time.monotonic()!r}")
                if fans.wait_all(seq, 0.5):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{contender.name}: no warm-up message reached all {clients} clients in "
                                       f"{WARMUP_TIMEOUT:.0f} s (a broadcast that does not cross instances?)")
                seq -= 1
            time.sleep(0.3)
            lost = 0
            for seq in range(messages):
                sender.send(f"{seq} {time.monotonic()!r}")
                if not fans.wait_all(seq, FAN_TIMEOUT):
                    lost += 1
                time.sleep(FAN_GAP)
        status = status_counts(servers)
        wall = time.monotonic() - began
        parts = fans.finish()
    finally:
        fans.close()
    if any(p is None for p in parts):
        raise RuntimeError(f"{contender.name}: a fan-out client process sent no result")
    per_client: list[float] = []
    all_have: list[float] = []
    delivered = 0
    for seq in range(messages):
        lats = [x for _, latencies, _, _ in parts for x in latencies.get(seq, [])]
        per_client += lats
        delivered += len(lats)
        if len(lats) == clients:
            all_have.append(max(lats))
    cpu = sum(p[3] for p in parts)
    return {"all_have_p50_ms": 1e3 * statistics.median(all_have) if all_have else float("nan"),
            "all_have_max_ms": 1e3 * max(all_have) if all_have else float("nan"),
            "client_p50_ms": 1e3 * percentile(per_client, 50), "client_p99_ms": 1e3 * percentile(per_client, 99),
            "missing": float(clients * messages - delivered), "incomplete_msgs": float(lost),
            "client_cpu_pct": 100 * cpu / wall, **status}


# --------------------------------------------------------------------------- throughput


def ws_connect_raw(port: int, path: str) -> socket.socket:
    """A raw WebSocket connection (no extensions), blocking, handshake done."""
    from bench_ws_hostile import ws_open

    sock = ws_open(port, path=path)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


class FrameCounter:
    """Counts the server's data frames on one connection; answers pings; stops at a close."""

    def __init__(self, frame: bytes) -> None:
        self.frame = frame
        self.block = memoryview(frame * 8192)
        self.buf = bytearray()
        self.frames = 0
        self.pongs: list[bytes] = []

    def feed(self, data: bytes) -> None:
        buf, size = self.buf, len(self.frame)
        buf += data
        off = 0
        slow = 0
        while True:
            k = min((len(buf) - off) // size, len(self.block) // size)
            if k and not slow and buf[off:off + k * size] == self.block[:k * size]:  # the usual case
                self.frames += k
                off += k * size
                continue
            if len(buf) - off < 2:
                break
            length, head = buf[off + 1] & 0x7F, 2
            if length == 126:
                head = 4
            elif length == 127:
                head = 10
            if len(buf) - off < head:
                break
            if head > 2:
                length = int.from_bytes(buf[off + 2:off + head], "big")
            if len(buf) - off < head + length:
                break
            opcode = buf[off] & 0x0F
            if opcode in (0x1, 0x2):
                self.frames += 1
            elif opcode == 0x9:
                self.pongs.append(ws_frame(bytes(buf[off + head:off + head + length]), opcode=0xA))
            elif opcode == 0x8:
                raise ConnectionError(f"the server closed a subscriber: {bytes(buf[off:off + head + length])!r}")
            off += head + length
            slow = (slow + 1) % 64  # after a frame out of the pattern, some frames one by one
        del buf[:off]


def tp_receiver_main(ports: list[int], subscribers: int, frame: bytes, pipe: Any) -> None:
    """The subscribers' process: ``subscribers`` raw connections, counting frames, driven over ``pipe``."""
    try:
        _tp_receiver(ports, subscribers, frame, pipe)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            pipe.send(("error", repr(exc)))
        raise


def _tp_receiver(ports: list[int], subscribers: int, frame: bytes, pipe: Any) -> None:
    socks = [ws_connect_raw(ports[i % len(ports)], "/ws/fan") for i in range(subscribers)]
    counters = [FrameCounter(frame) for _ in socks]
    last = [0.0] * subscribers
    sel = selectors.DefaultSelector()
    for i, sock in enumerate(socks):
        sock.setblocking(False)
        sel.register(sock, selectors.EVENT_READ, i)
    buf = bytearray(1 << 20)
    pipe.send(("connected",))
    phase, expect, ready_sent, idle_since, stall, first = "warmup", 0, False, 0.0, 0.0, 0.0
    try:
        while True:
            events = sel.select(0.05)
            now = time.monotonic()
            for key, _ in events:
                i = key.data
                try:
                    n = socks[i].recv_into(buf)
                except BlockingIOError:
                    continue
                if not n:
                    raise ConnectionError(f"subscriber {i} was closed by the server")
                counters[i].feed(bytes(buf[:n]))
                last[i] = now
                if counters[i].pongs:
                    socks[i].setblocking(True)
                    for pong in counters[i].pongs:
                        socks[i].sendall(pong)
                    socks[i].setblocking(False)
                    counters[i].pongs.clear()
            if phase == "warmup" and not ready_sent and all(c.frames for c in counters):
                pipe.send(("ready",))
                ready_sent = True
            if phase == "measure":
                done = all(c.frames >= expect for c in counters)
                if events and any(c.frames for c in counters):
                    if first:  # the longest silence once frames flow
                        stall = max(stall, now - idle_since)
                    else:
                        first = now
                    idle_since = now
                if done or now - idle_since > TP_IDLE:
                    pipe.send(("result", [c.frames for c in counters], last, stall, first))
                    phase = "over"
            if pipe.poll():
                cmd = pipe.recv()
                if cmd[0] == "mark":  # quiet now: count from zero, expecting cmd[1] frames each
                    for c in counters:
                        c.frames = 0
                    phase, expect, idle_since = "measure", cmd[1], time.monotonic()
                    pipe.send(("marked",))
                elif cmd[0] == "stop":
                    return
    finally:
        sel.close()
        for sock in socks:
            sock.close()


def _recv_event(pipe: Any, kind: str, timeout: float, who: str = "throughput subscriber process",
                pending: list[Any] | None = None) -> Any:
    """The next event of ``kind`` from a client process within ``timeout`` (None past it).

    Events of other kinds are kept in ``pending`` for a later call, or dropped without it;
    an "error" event raises.
    """
    deadline = time.monotonic() + timeout
    while True:
        for i, event in enumerate(pending or ()):
            if event[0] == kind:
                return pending.pop(i)  # type: ignore[union-attr]
        left = deadline - time.monotonic()
        if left <= 0 or not pipe.poll(left):
            return None
        event = pipe.recv()
        if event[0] == "error":
            raise RuntimeError(f"{who} failed: {event[1]}")
        if event[0] == kind:
            return event
        if pending is not None:
            pending.append(event)


def measure_throughput(contender: Contender, servers: list[RunningServer], messages: int) -> Metrics:
    import multiprocessing

    ports = [s.port for s in servers]
    frame = bytes([0x81, len(TP_PAYLOAD)]) + TP_PAYLOAD  # as the server sends it: unmasked text, no deflate
    ctx = multiprocessing.get_context("fork")
    pipe, theirs = ctx.Pipe()
    proc = ctx.Process(target=tp_receiver_main, args=(ports, TP_SUBSCRIBERS, frame, theirs), daemon=True)
    proc.start()
    theirs.close()
    pubs: list[socket.socket] = []
    try:
        if _recv_event(pipe, "connected", 60.0) is None:
            raise RuntimeError(f"{contender.name}: subscribers not connected after 60 s")
        pubs = [ws_connect_raw(ports[i % len(ports)], "/ws/pub") for i in range(TP_PUBLISHERS)]
        one = ws_frame(TP_PAYLOAD, opcode=0x1)
        deadline = time.monotonic() + WARMUP_TIMEOUT
        while _recv_event(pipe, "ready", 0.25) is None:  # warm-up: every subscriber has had a message
            if time.monotonic() > deadline:
                raise RuntimeError(f"{contender.name}: warm-up messages did not reach all {TP_SUBSCRIBERS} "
                                   f"subscribers in {WARMUP_TIMEOUT:.0f} s")
            for pub in pubs:
                pub.sendall(one)
        time.sleep(0.5)  # let the last warm-up messages arrive before counting starts
        before = status_counts(servers)
        pipe.send(("mark", messages))
        if _recv_event(pipe, "marked", 10.0) is None:
            raise RuntimeError("the subscriber process did not start counting")
        shares = [messages // TP_PUBLISHERS + (1 if i < messages % TP_PUBLISHERS else 0) for i in range(TP_PUBLISHERS)]
        sent_at: list[float] = [0.0] * TP_PUBLISHERS
        start_gate = threading.Barrier(TP_PUBLISHERS + 1)

        def publish(i: int) -> None:
            block = one * shares[i]
            start_gate.wait()
            pubs[i].sendall(block)
            sent_at[i] = time.monotonic()

        threads = [threading.Thread(target=publish, args=(i,)) for i in range(TP_PUBLISHERS)]
        for t in threads:
            t.start()
        start_gate.wait()
        start = time.monotonic()
        for t in threads:
            t.join()
        result = _recv_event(pipe, "result", 600.0)
        if result is None:
            raise RuntimeError(f"{contender.name}: no throughput result")
        after = status_counts(servers)
        pipe.send(("stop",))
    finally:
        for pub in pubs:
            pub.close()
        proc.join(10)
        if proc.is_alive():
            proc.kill()
            proc.join(5)
    counts, last, stall, first = result[1:]
    elapsed = max(last) - start
    delivered_all = min(counts)
    out: Metrics = {"msgs_s": delivered_all / elapsed if elapsed > 0 else float("nan"),
                    "frames_s": sum(counts) / elapsed if elapsed > 0 else float("nan"),
                    "seconds": elapsed, "publish_s": max(sent_at) - start,
                    "lost": float(sum(messages - c for c in counts)), "lost_max_sub": float(messages - min(counts)),
                    "first_ms": 1e3 * (first - start) if first else float("nan"), "stall_max_s": stall}
    for key in ("status_published", "status_received", "status_dropped", "status_local_only"):
        if key in after:
            out[key] = after[key] - before.get(key, 0.0)
    return out


# --------------------------------------------------------------------------- the scenario


def scenario_broadcast(args: argparse.Namespace, ws: Workspace) -> list[SummaryRow]:
    raise_nofile()
    clients = 400 if args.quick else FAN_CLIENTS
    fan_messages = 5 if args.quick else FAN_MESSAGES
    tp_messages = 5000 if args.quick else TP_MESSAGES
    results: Results = {c.name: {} for c in CONTENDERS}
    failures: list[str] = []
    print(f"broadcast: {len(CONTENDERS)} contenders x {args.runs} runs; fan-out {clients} clients x "
          f"{fan_messages} messages; throughput {tp_messages} messages to {TP_SUBSCRIBERS}", file=sys.stderr)
    with redis_server(ws) as redis:
        for run in range(1, args.runs + 1):
            for index, contender in enumerate(CONTENDERS):
                print(f"  run {run}/{args.runs}: {contender.name} ({', '.join(contender.variants)})",
                      file=sys.stderr, flush=True)
                try:
                    with cluster(contender, ws, redis.port, f"{run}-{index}") as servers:
                        wait_redis_connected(contender, servers)
                        for variant in contender.variants:
                            metrics = (measure_fanout(contender, servers, clients, fan_messages) if variant == FAN
                                       else measure_throughput(contender, servers, tp_messages))
                            results[contender.name].setdefault(variant, []).append(metrics)
                            shown = ", ".join(f"{k}={v:,.4g}" for k, v in metrics.items())
                            print(f"    {variant}: {shown}", file=sys.stderr, flush=True)
                except Exception as exc:  # one contender failing (Redis not there yet) must not lose the rest
                    failures.append(f"run {run}, {contender.name}: {exc}")
                    print(f"    ! {contender.name} failed: {exc}", file=sys.stderr, flush=True)
    return report(args, results, failures, clients, fan_messages, tp_messages)


def report(args: argparse.Namespace, results: Results, failures: list[str], clients: int, fan_messages: int,
           tp_messages: int) -> list[SummaryRow]:
    def med(name: str, variant: str, metric: str) -> float:
        return median(results, name, variant, metric)

    local_fan, local_tp = "local 1x4", "local 1x2"
    fan_names = [local_fan, "redis 1x4", "redis 2x2"]
    tp_names = [local_tp, "redis 1x2", "redis 2x2"]
    rows = []
    for name in fan_names:
        rows.append([f"{name}: {clients:,} clients", fmt(med(name, FAN, "all_have_p50_ms"), "ms"),
                     fmt(med(name, FAN, "client_p50_ms"), "ms"), fmt(med(name, FAN, "client_p99_ms"), "ms"),
                     fmt(med(name, FAN, "missing")),
                     "—" if name == local_fan else ratio(med(name, FAN, "all_have_p50_ms"),
                                                         med(local_fan, FAN, "all_have_p50_ms")),
                     fmt(med(name, FAN, "client_cpu_pct"), "%")])
    print_table(f"Broadcast fan-out: one message to {clients:,} WebSocket clients (median of {args.runs})", rows,
                header=("contender (instances x workers)", "all have it (median of messages)", "per-client p50",
                        "per-client p99", "deliveries missing", "all-have-it ÷ local 1x4", "client CPU"),
                note=f"{fan_messages} messages, one at a time, from a sender on the first instance's `/ws/pub`; "
                     f"{clients:,} `websockets` asyncio clients (compression off) in {FAN_PROCS} processes, "
                     "connected to the instances' ports alternately. Latency = arrival (time.monotonic in the "
                     "client) minus send. local cannot reach across instances, so local 1x4 has all clients on "
                     "one server; redis 1x4 is the same layout over Redis. Client CPU: Σ of the client processes' "
                     "CPU from connected to the last message, in % of one core (the warm-up and the gaps "
                     "included). Client and servers share 2 cores.")
    rows = []
    for name in tp_names:
        rows.append([f"{name}: {TP_SUBSCRIBERS} subscribers", fmt(med(name, TP, "msgs_s"), "msg/s"),
                     fmt(med(name, TP, "frames_s"), "frames/s"), fmt(med(name, TP, "lost")),
                     fmt(med(name, TP, "status_dropped")), fmt(med(name, TP, "status_local_only")),
                     "—" if name == local_tp else ratio(med(name, TP, "msgs_s"), med(local_tp, TP, "msgs_s"))])
    print_table(f"Broadcast throughput: {tp_messages:,} messages to {TP_SUBSCRIBERS} subscribers "
                f"(median of {args.runs})", rows,
                header=("contender", "messages/s to all", "frames delivered/s", "lost (counted)",
                        "status dropped", "status local_only", "÷ local 1x2"),
                note=f"{TP_PUBLISHERS} raw publishers on `/ws/pub` send {len(TP_PAYLOAD)}-byte text messages as "
                     "fast as the server reads them; one raw subscriber process counts frames. messages/s = the "
                     "messages every subscriber got / (first send -> the last subscriber's last frame). lost = "
                     "Σ over subscribers of messages not received; status = Σ of `/server-status?format=json` "
                     "`broadcast` counts over the instances during the run (n/a: the page has none).")
    for variant, names, metrics in ((FAN, fan_names, ["all_have_p50_ms", "all_have_max_ms", "client_p50_ms",
                                                      "client_p99_ms", "missing", "incomplete_msgs",
                                                      "client_cpu_pct", "ws_per_worker_min", "ws_per_worker_max",
                                                      "status_published", "status_received", "status_dropped"]),
                                    (TP, tp_names, ["msgs_s", "frames_s", "seconds", "publish_s", "first_ms", "stall_max_s", "lost",
                                                    "lost_max_sub", "status_published", "status_received", "status_dropped",
                                                    "status_local_only"])):
        print_medians({n: results[n] for n in names}, [variant], metrics)
    for text in failures:
        print(f"**Failed:** {text}")
    save_json(args, "broadcast", results)
    local_p50 = med(local_fan, FAN, "all_have_p50_ms")
    label = f"WebSocket broadcast, one message to {clients:,} clients, all have it (median)"
    return [target_max(f"{label}: redis 2 instances x 2 workers vs local 1x4", med("redis 2x2", FAN, "all_have_p50_ms"),
                       "ms", FAN_TARGET * local_p50, local_fan, local_p50),
            reported(target_max(f"{label}: redis 1x4 vs local 1x4", med("redis 1x4", FAN, "all_have_p50_ms"), "ms",
                                FAN_TARGET * local_p50, local_fan, local_p50)),
            report_ratio(f"WebSocket broadcast, {clients:,} clients: per-client p99, redis 2x2",
                         med("redis 2x2", FAN, "client_p99_ms"), med(local_fan, FAN, "client_p99_ms"), "ms", local_fan),
            report_ratio(f"WebSocket broadcast throughput to {TP_SUBSCRIBERS} subscribers, redis 1x2",
                         med("redis 1x2", TP, "msgs_s"), med(local_tp, TP, "msgs_s"), "msg/s", local_tp),
            report_ratio(f"WebSocket broadcast throughput to {TP_SUBSCRIBERS} subscribers, redis 2x2",
                         med("redis 2x2", TP, "msgs_s"), med(local_tp, TP, "msgs_s"), "msg/s", local_tp)]

