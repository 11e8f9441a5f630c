"""``scripts/bench.py redis-costs``: the two choices behind the Redis broadcast transport.

Strategy: the transport subscribes once per worker (not once per master) and the
``[redis]`` extra brings hiredis. Both choices are measured here, on a Debian
redis-server started on a free loopback port (no persistence, stopped by PID), with
the frames the transport sends (``prefork.apps.broadcast.encode``, 120-byte payloads),
published in pipelined ``MULTI``/``EXEC`` batches of 256 as the transport does:

1. Redis's CPU per delivered message, with 1, 2, 4 and 8 subscriber connections
   (raw sockets drained by one thread): the redis-server process's CPU time over
   ``MESSAGES`` publications, per publication and per subscriber. Subscribing per
   worker instead of per master costs Redis that much for each worker past the first.
2. What one subscriber connection of redis-py takes in (messages/s, ``get_message``
   in a loop, as the transport's subscriber thread does), with redis-py's pure-Python
   RESP parser and with hiredis, alternately.

Medians over ``--runs``; reported, no targets.
"""

from __future__ import annotations

import argparse
import selectors
import socket
import statistics
import threading
import time
from typing import Any

import psutil
import redis
from redis._parsers import _HiredisParser, _RESP2Parser

from bench import HOST, SummaryRow, Workspace, fmt, print_table
from bench_broadcast import redis_server
from prefork.apps.broadcast import encode

MESSAGES = 100_000
SUBSCRIBER_COUNTS = (1, 2, 4, 8)
CHANNEL = "bench:broadcast"
FRAME = encode("chat", "x" * 120)
BATCH = 256


def publish(port: int, messages: int) -> None:
    client = redis.Redis(host=HOST, port=port)
    for start in range(0, messages, BATCH):
        pipe = client.pipeline(transaction=True)
        for _ in range(min(BATCH, messages - start)):
            pipe.publish(CHANNEL, FRAME)
        pipe.execute()
    client.close()


def raw_subscribers(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        sock = socket.create_connection((HOST, port))
        sock.sendall(f"*2\r\n$9\r\nSUBSCRIBE\r\n${len(CHANNEL)}\r\n{CHANNEL}\r\n".encode())
        reply = b""
        while reply.count(b"\r\n") < 6:  # *3 $9 subscribe $len channel :1
            reply += sock.recv(4096)
        sock.setblocking(False)
        socks.append(sock)
    return socks


def redis_cpu_per_message(port: int, pid: int, subscribers: int) -> float:
    """µs of redis-server CPU per publication, with ``subscribers`` connections draining."""
    socks = raw_subscribers(port, subscribers)
    expected = len(FRAME) * MESSAGES  # payload bytes each subscriber must see, at least
    received = [0] * subscribers
    done = threading.Event()

    def drain() -> None:
        selector = selectors.DefaultSelector()
        for index, sock in enumerate(socks):
            selector.register(sock, selectors.EVENT_READ, index)
        while not done.is_set() and min(received) < expected:
            for key, _ in selector.select(1.0):
                try:
                    received[key.data] += len(key.fileobj.recv(1 << 20))  # type: ignore[union-attr]
                except BlockingIOError:
                    pass
        done.set()

    reader = threading.Thread(target=drain, daemon=True)
    proc = psutil.Process(pid)
    before = sum(proc.cpu_times()[:2])
    reader.start()
    publish(port, MESSAGES)
    done.wait(60)
    after = sum(proc.cpu_times()[:2])
    done.set()
    reader.join(5)
    for sock in socks:
        sock.close()
    return 1e6 * (after - before) / MESSAGES


def intake(port: int, parser: Any) -> float:
    """Messages/s one redis-py subscriber takes in with ``parser``."""
    client = redis.Redis(connection_pool=redis.ConnectionPool(host=HOST, port=port, parser_class=parser))
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(CHANNEL)
    while pubsub.get_message(timeout=1.0) is None and not pubsub.subscribed:
        pass
    publisher = threading.Thread(target=publish, args=(port, MESSAGES))
    start = time.perf_counter()
    publisher.start()
    got = 0
    while got < MESSAGES:
        if pubsub.get_message(timeout=5.0) is None:
            break
        got += 1
    elapsed = time.perf_counter() - start
    publisher.join()
    pubsub.close()
    client.close()
    return got / elapsed


def scenario_redis_costs(args: argparse.Namespace, ws: Workspace) -> list[SummaryRow]:
    runs = args.runs
    cpu: dict[int, list[float]] = {n: [] for n in SUBSCRIBER_COUNTS}
    rates: dict[str, list[float]] = {"pure Python": [], "hiredis": []}
    with redis_server(ws) as server:
        for _ in range(runs):
            for count in SUBSCRIBER_COUNTS:
                cpu[count].append(redis_cpu_per_message(server.port, server.proc.pid, count))
            rates["pure Python"].append(intake(server.port, _RESP2Parser))
            rates["hiredis"].append(intake(server.port, _HiredisParser))
    per_sub = {n: statistics.median(v) for n, v in cpu.items()}
    slope = (per_sub[SUBSCRIBER_COUNTS[-1]] - per_sub[SUBSCRIBER_COUNTS[0]]) / (SUBSCRIBER_COUNTS[-1] - SUBSCRIBER_COUNTS[0])
    print_table(f"redis-server CPU per published message, by subscriber connections (median of {runs})",
                [[f"{n} subscriber{'s' if n > 1 else ''}", fmt(per_sub[n], "µs")] for n in SUBSCRIBER_COUNTS]
                + [["each subscriber past the first", fmt(slope, "µs")]],
                header=("subscribers", "Redis CPU per message"),
                note=f"{MESSAGES:,} publications of a {len(FRAME)}-byte frame in MULTI/EXEC batches of {BATCH}; "
                     "raw subscriber sockets drained by one thread.")
    intake_med = {name: statistics.median(v) for name, v in rates.items()}
    print_table(f"One redis-py subscriber's intake (median of {runs})",
                [[name, fmt(rate, "msg/s")] for name, rate in intake_med.items()],
                header=("RESP parser", "messages/s"),
                note="get_message in a loop while a thread of the same process publishes.")
    return [SummaryRow("Redis CPU per message per extra subscriber connection", fmt(slope, "µs"), "—", "—",
                       "report", None),
            SummaryRow("redis-py subscriber intake, hiredis vs pure Python", fmt(intake_med["hiredis"], "msg/s"),
                       f"{fmt(intake_med['pure Python'], 'msg/s')} (pure Python)",
                       f"{intake_med['hiredis'] / intake_med['pure Python']:.2f}x", "report", None)]
