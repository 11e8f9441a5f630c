"""``scripts/bench.py hostile``: what one hostile client costs: a pipelining flood, 10,000 idle sockets.

Strategy: the two memory/availability cases of issue 12 (high 1, medium 5), as
figures beside peers serving the same WSGI app (``bench_apps:hello``, which
answers 200 to any path) with 2 workers each: prefork with the shipped
``conf/server.ini`` and its access log on, gunicorn sync and gthread, and
granian (``--interface wsgi``). One server per contender and run; both cases
run on it, the flood first.

1. Pipelining flood. One socket sends ``GET /nonexistent`` over and over and
   never reads, for ``--duration`` seconds (at least 2) or until its sends have been blocked
   for 1 s (the server stopped reading: the TCP window closed). Figures: bytes
   the client got to send (MB; the kernel's socket buffers on both sides,
   tcp_rmem/tcp_wmem autotuning, hold most of what a bounded server lets
   through), how it ended (blocked / closed by the server / never blocked), and
   the peak growth of Σ worker RSS (``bench.ProcessSampler``) while it ran and
   for half a second after. Target: ≤ 32 MiB. Before the fix prefork let
   381 MB through in 5 s and grew by 360+ MiB.
2. Idle connections. 10,000 non-blocking connects that never send a byte
   (below ``ulimit -n``; the kernel spreads them over the workers), then
   sequential ``GET /`` requests, each on a new connection, each capped at 30 s
   (a series stops at its first timeout, or after 60 s in all). Figures: the
   median and slowest GET, the idle sockets the server closed (seen by the
   client), and prefork's ``shed_total`` from ``/server-status?format=json``.
   Target: the slowest GET ≤ 1 s. Before the fix a GET waited ~22 s.

Every client socket is closed with SO_LINGER 0 (a reset): 10,000 sockets per
contender would otherwise leave as many ports in TIME_WAIT.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import resource
import select
import socket
import statistics
import struct
import sys
import time
from collections.abc import Callable

from bench import (HOST, MiB, Measurement, Metrics, ProcessSampler, Results, RunningServer, ServerSpec, SummaryRow,
                   Workspace, alternate, fmt, granian_server, gunicorn_server, median, prefork_server, print_medians,
                   print_table, save_json, target_max)

FLOOD_REQUEST = b"GET /nonexistent HTTP/1.1\r\nHost: x\r\n\r\n"
BLOCKED_FOR = 1.0  # seconds without room in the send buffer that count as "the sends block"
FLOOD_SETTLE = 0.5  # seconds the flood socket stays open (and sampled) after the last send
FLOOD_RSS_MIB = 32  # target: Σ worker RSS growth during the flood (as tests/test_pipeline_flood.py)
IDLE, QUICK_IDLE = 10_000, 3_000  # idle connections (quick: still past 2 x max_connections = 2,000)
GETS, QUICK_GETS = 20, 5  # timed GETs per series
GET_CAP, QUICK_GET_CAP = 30.0, 5.0  # seconds one GET may take before it counts as "timeout"
GET_BUDGET, QUICK_GET_BUDGET = 60.0, 10.0  # seconds a whole series may take
CONNECT_WAIT, QUICK_CONNECT_WAIT = 5.0, 2.0  # seconds for the idle connects to complete
GET_TARGET_S = 1.0  # target: the slowest GET beside the idle connections
FD_SPARE = 500  # descriptors kept free below ulimit -n for everything else
LINGER_RST = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset
PREFORK = "prefork (shipped config, access log on)"
GRANIAN = "granian wsgi 2w"


# --------------------------------------------------------------------------- clients


def _rst_close(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
    except OSError:
        pass
    sock.close()


def fetch(port: int, path: str, cap: float) -> tuple[int, bytes] | None:
    """``GET path`` on a new connection: (status, body), or None when ``cap`` s pass first."""
    deadline = time.monotonic() + cap
    try:
        sock = socket.create_connection((HOST, port), timeout=cap)
    except (TimeoutError, socket.timeout):
        return None
    try:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            head, sep, body = data.partition(b"\r\n\r\n")
            if sep:
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")[1:]
                               if line.lower().startswith(b"content-length:")), None)
                if length is not None and len(body) >= length:
                    return int(head.split(b" ", 2)[1]), body[:length]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            sock.settimeout(remaining)
            chunk = sock.recv(65536)
            if not chunk:
                if not sep:
                    raise ConnectionError(f"closed before a response head: {data[:100]!r}")
                return int(head.split(b" ", 2)[1]), body
            data += chunk
    except (TimeoutError, socket.timeout):
        return None
    finally:
        _rst_close(sock)


def send_flood(port: int, seconds: float) -> tuple[int, str]:
    """Pipeline ``FLOOD_REQUEST`` on one socket without reading; (bytes sent, how it ended)."""
    sock = socket.create_connection((HOST, port), timeout=5)
    sock.setblocking(False)
    poller = select.poll()  # not select(): descriptors may be past FD_SETSIZE
    poller.register(sock, select.POLLOUT)
    view = memoryview(FLOOD_REQUEST * 1024)
    sent = offset = 0
    outcome = "never blocked"
    end = time.monotonic() + seconds
    try:
        while time.monotonic() < end:
            if not poller.poll(BLOCKED_FOR * 1000):
                outcome = "blocked"
                break
            try:
                n = sock.send(view[offset:])
            except BlockingIOError:
                continue
            except OSError:  # EPIPE / ECONNRESET: the server closed the connection
                outcome = "closed"
                break
            sent += n
            offset = (offset + n) % len(view)
        time.sleep(FLOOD_SETTLE)  # the server may still be reading what the kernel holds
    finally:
        _rst_close(sock)
    return sent, outcome


def open_idle(port: int, count: int) -> list[socket.socket]:
    """``count`` non-blocking connects to ``port`` that will never send a byte."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            err = sock.connect_ex((HOST, port))
            if err not in (0, errno.EINPROGRESS):
                raise OSError(err, f"connect #{len(socks)}: {errno.errorcode.get(err, err)}")
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


def _polled(socks: list[socket.socket], events: int) -> dict[int, int]:
    poller = select.poll()
    for sock in socks:
        poller.register(sock, events)
    return dict(poller.poll(0))


def wait_connected(socks: list[socket.socket], timeout: float) -> int:
    """Wait until every connect completed, or ``timeout`` s; how many did (the rest retry their SYN)."""
    deadline = time.monotonic() + timeout
    while True:
        ready = _polled(socks, select.POLLOUT)
        done = sum(1 for ev in ready.values() if ev & select.POLLOUT and not ev & (select.POLLERR | select.POLLHUP))
        if done == len(socks) or time.monotonic() >= deadline:
            return done
        time.sleep(0.1)


def closed_by_server(socks: list[socket.socket]) -> int:
    """Idle sockets the server closed or answered (EOF, reset, or a 408 waiting to be read)."""
    return len(_polled(socks, select.POLLIN))


def timed_gets(port: int, gets: int, cap: float, budget: float) -> tuple[list[float], int, int]:
    """Sequential ``GET /``, each on a new connection; (seconds of each, timeouts, errors).

    A timeout counts as ``cap`` seconds and ends the series, as does ``budget`` s spent.
    """
    times: list[float] = []
    timeouts = errors = 0
    started = time.monotonic()
    for _ in range(gets):
        if time.monotonic() - started > budget:
            break
        t0 = time.monotonic()
        try:
            answer = fetch(port, "/", cap)
        except OSError as exc:
            print(f"    ! GET failed: {exc!r}", file=sys.stderr)
            errors += 1
            continue
        if answer is None:
            times.append(cap)
            timeouts += 1
            break
        times.append(time.monotonic() - t0)
        if answer[0] != 200:
            errors += 1
    return times, timeouts, errors


def status_json(port: int, cap: float) -> dict[str, object] | None:
    """prefork's status page as JSON, once its twice-a-second sweep has counted what was shed."""
    time.sleep(0.6)
    answer = fetch(port, "/server-status?format=json", cap)
    if answer is None or answer[0] != 200:
        return None
    try:
        data = json.loads(answer[1])
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


# --------------------------------------------------------------------------- measurements


@dataclasses.dataclass(frozen=True)
class Plan:
    """The sizes of one invocation (full or ``--quick``)."""

    flood_seconds: float
    idle: int
    gets: int
    cap: float
    budget: float
    connect_wait: float

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Plan:
        quick = bool(args.quick)
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        idle = QUICK_IDLE if quick else IDLE
        if soft != resource.RLIM_INFINITY and idle > soft - FD_SPARE:
            print(f"hostile: ulimit -n is {soft}: {soft - FD_SPARE:,} idle connections, not {idle:,}",
                  file=sys.stderr)
            idle = max(0, soft - FD_SPARE)
        return cls(max(args.duration, 2 * BLOCKED_FOR), idle, QUICK_GETS if quick else GETS,
                   QUICK_GET_CAP if quick else GET_CAP, QUICK_GET_BUDGET if quick else GET_BUDGET,
                   QUICK_CONNECT_WAIT if quick else CONNECT_WAIT)


def measure_flood(server: RunningServer, plan: Plan) -> Metrics:
    with ProcessSampler(server.workers()) as sampler:
        start = time.monotonic()
        sent, outcome = send_flood(server.port, plan.flood_seconds)
        seconds = time.monotonic() - start
    after = fetch(server.port, "/", plan.cap)
    return {"sent_mb": sent / 1e6, "blocked": float(outcome == "blocked"), "closed": float(outcome == "closed"),
            "seconds": seconds, "rss_growth_mib": (sampler.peak_sum - sampler.base_sum) / MiB,
            "ok_after": float(after is not None and after[0] == 200)}


def measure_idle(server: RunningServer, plan: Plan, with_status: bool) -> Metrics:
    with ProcessSampler(server.workers()) as sampler:
        start = time.monotonic()
        socks = open_idle(server.port, plan.idle)
        try:
            connected = wait_connected(socks, plan.connect_wait)
            opened = time.monotonic() - start
            times, timeouts, errors = timed_gets(server.port, plan.gets, plan.cap, plan.budget)
            status = status_json(server.port, plan.cap) if with_status else None
            closed = closed_by_server(socks)
        finally:
            for sock in socks:
                sock.close()  # SO_LINGER 0: a reset
    out: Metrics = {"idle": float(plan.idle), "connected": float(connected), "open_s": opened,
                    "gets": float(len(times)), "timeouts": float(timeouts), "errors": float(errors),
                    "get_median_s": statistics.median(times) if times else float("nan"),
                    "get_max_s": max(times) if times else float("nan"), "closed_by_server": float(closed),
                    "rss_growth_mib": (sampler.peak_sum - sampler.base_sum) / MiB}
    if status is not None:
        workers = status.get("workers")
        conns = [w.get("connections", 0) for w in workers if isinstance(w, dict)] if isinstance(workers, list) else []
        shed = status.get("shed_total")  # absent before the fix: n/a
        out["shed"] = float(shed) if isinstance(shed, int) else float("nan")
        if conns:
            out["conns_min"], out["conns_max"] = float(min(conns)), float(max(conns))
    return out


def contenders(ws: Workspace) -> list[ServerSpec]:
    access_log = ws.logdir / "hostile-access.log"
    return [prefork_server(ws, "hello", workers=2, threads=4, name=PREFORK,
                           overrides={"logging": {"access_log": str(access_log)}}),
            gunicorn_server("hello", worker_class="sync"),
            gunicorn_server("hello", worker_class="gthread", threads=4),
            granian_server("hello", name=GRANIAN)]


# --------------------------------------------------------------------------- the scenario


def scenario_hostile(args: argparse.Namespace, ws: Workspace) -> list[SummaryRow]:
    """A pipelining flood and 10,000 idle connections against prefork and three peers."""
    plan = Plan.from_args(args)
    specs = contenders(ws)

    def measure(server: RunningServer) -> Measurement:
        return {"flood": measure_flood(server, plan), "idle": measure_idle(server, plan, server.name == PREFORK)}

    print(f"hostile: {len(specs)} servers x {args.runs} runs: a {plan.flood_seconds:g} s pipelining flood, "
          f"then {plan.idle:,} idle connections and {plan.gets} GETs (each capped at {plan.cap:g} s)",
          file=sys.stderr)
    results = alternate(specs, args.runs, ws, measure)
    print_table(f"Hostile clients (median of {args.runs}; 2 workers each)", table_rows(results, plan),
                header=("server", "flood: MB sent", "flood: ended", "flood: Σ RSS growth", "idle: GET median",
                        "idle: GET max", "idle: connected", "idle: closed by server", "shed_total"),
                note=f"Flood: one socket pipelining `GET /nonexistent` without reading, {plan.flood_seconds:g} s "
                     f"or until its sends block for {BLOCKED_FOR:g} s. Idle: {plan.idle:,} connections that "
                     f"send nothing, then up to {plan.gets} sequential GETs on new connections, each capped "
                     f"at {plan.cap:g} s (a series stops at its first timeout).")
    print_medians(results, ["flood"], ["sent_mb", "blocked", "closed", "seconds", "rss_growth_mib", "ok_after"])
    print_medians(results, ["idle"], ["connected", "open_s", "gets", "timeouts", "errors", "get_median_s",
                                      "get_max_s", "closed_by_server", "shed", "conns_min", "conns_max",
                                      "rss_growth_mib"])
    save_json(args, "hostile", results)
    return summary_rows(results, plan)


def _ended(results: Results, name: str) -> str:
    if median(results, name, "flood", "blocked") >= 0.5:
        return "blocked"
    return "closed by server" if median(results, name, "flood", "closed") >= 0.5 else "never blocked"


def _get_time(results: Results, name: str, metric: str, plan: Plan) -> str:
    value = median(results, name, "idle", metric)
    if median(results, name, "idle", "timeouts") >= 0.5 and (metric == "get_max_s" or value >= plan.cap):
        return f"timeout (> {plan.cap:g} s)"
    return fmt(value * 1e3, "ms") if value < 1 else fmt(value, "s")


def table_rows(results: Results, plan: Plan) -> list[list[str]]:
    rows = []
    for name in results:
        def med(variant: str, metric: str, unit: str = "") -> str:
            return fmt(median(results, name, variant, metric), unit)

        rows.append([name, med("flood", "sent_mb", "MB"), _ended(results, name), med("flood", "rss_growth_mib", "MiB"),
                     _get_time(results, name, "get_median_s", plan), _get_time(results, name, "get_max_s", plan),
                     med("idle", "connected"), med("idle", "closed_by_server"), med("idle", "shed")])
    return rows


def _peers(results: Results, cell: Callable[[str], str]) -> str:
    return "; ".join(f"{cell(name)} ({name})" for name in results if name != PREFORK)


def summary_rows(results: Results, plan: Plan) -> list[SummaryRow]:
    flood = f"pipelining flood, 1 connection that never reads, {plan.flood_seconds:g} s"
    idle = f"GET / on a new connection beside {plan.idle:,} idle connections"

    def flood_cell(name: str) -> str:
        return f"{fmt(median(results, name, 'flood', 'sent_mb'), 'MB')}, {_ended(results, name)}"

    def idle_cell(name: str) -> str:
        slowest, middle = _get_time(results, name, "get_max_s", plan), _get_time(results, name, "get_median_s", plan)
        return slowest if slowest == middle else f"{slowest} (median {middle})"

    rss = target_max(f"{flood}: Σ worker RSS growth, peak", median(results, PREFORK, "flood", "rss_growth_mib"),
                     "MiB", FLOOD_RSS_MIB)
    slowest = median(results, PREFORK, "idle", "get_max_s")
    if median(results, PREFORK, "idle", "timeouts") >= 0.5:
        slowest = float("inf")
    get = target_max(f"{idle}: slowest of {plan.gets} (median)", slowest, "s", GET_TARGET_S)
    return [
        dataclasses.replace(rss, peer=_peers(results, lambda n: fmt(median(results, n, "flood", "rss_growth_mib"),
                                                                    "MiB"))),
        SummaryRow(f"{flood}: bytes the client sent before its sends blocked", flood_cell(PREFORK),
                   _peers(results, flood_cell), "—", "report", None),
        dataclasses.replace(get, prefork=idle_cell(PREFORK), peer=_peers(results, idle_cell)),
        SummaryRow(f"{plan.idle:,} idle connections: shed at max_connections (status page shed_total) / "
                   "closed by the server", f"{fmt(median(results, PREFORK, 'idle', 'shed'))} / "
                   f"{fmt(median(results, PREFORK, 'idle', 'closed_by_server'))}",
                   _peers(results, lambda n: fmt(median(results, n, "idle", "closed_by_server"))), "—", "report",
                   None),
    ]
