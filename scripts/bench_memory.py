"""Memory under concurrent uploads: Σ worker RSS while 40 × 50 MiB bodies stream in.

Strategy: issue 11 §6 asks that all workers together grow by no more than
``memory_budget`` + 32 MiB while 40 uploads of 50 MiB run at once, and give the
memory back when they end. So the server (2 workers) is started with
``memory_budget = 64MiB`` and again with 256MiB, and ``memory_threshold =
64MiB``: whole bodies may stay in RAM, only the budget stops them (the worst
case for it; with the default 1 MiB threshold far less is staged in RAM).
40 client threads each stream
one body at once, either raw to a WSGI app that copies ``wsgi.input`` into a
file in 1 MiB reads (``bench_apps:upload``), or as a one-file form to a native
``prefork.App`` route that calls ``save()`` (``bench_apps:native_app``). A
thread samples the sum of the workers' RSS every 10 ms: ``before`` is the idle
server, ``peak`` the highest sum while the uploads ran, ``after`` the sum once
every upload was answered, once it stopped falling (the workers give memory
back on their twice-a-second sweep). Targets: peak growth ≤ budget + 32 MiB,
after ≤ 16 MiB. gunicorn sync (the same WSGI app; Flask for the form) is the
peer figure.

Idle memory (issue 14, reported beside granian): prefork and granian (2 workers
each, ``bench_apps:hello``) are started, left idle for a moment, and the RSS of
each process is read: the master, the mean worker (RSS and USS, the pages only
that worker has). Then 1,000 keep-alive connections each make one request and
stay open; a second later (inside prefork's 5 s ``keepalive_timeout``) Σ RSS
of all the server's processes is read again: (after - before) / connections is
the cost of one idle keep-alive connection.

Standalone, to dig into where memory goes (``--detail`` classifies every
worker mapping from /proc/PID/smaps at the peak: heap, thread arenas, other
anonymous memory)::

    python scripts/bench_memory.py --budget 64MiB --mode multipart --detail
    python scripts/bench_memory.py --mode raw --env GLIBC_TUNABLES=glibc.malloc.arena_max=1

As a scenario (uploads, then idle): ``python scripts/bench.py memory [--runs N] [--quick]``.
"""

from __future__ import annotations

import argparse
import os
import re
import selectors
import shutil
import socket
import struct
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

import bench
from bench import MiB, Measurement, RunningServer, ServerSpec, SummaryRow, Workspace

CLIENTS = 40
EACH = 50 * MiB
BUDGETS = (64, 256)  # memory_budget in MiB
SLACK_MIB = 32  # the allowance beyond memory_budget
AFTER_MIB = 16  # growth left once the uploads are over (as tests/test_memory_bound.py)
THRESHOLD = "64MiB"  # [staging] memory_threshold: the budget, not the threshold, limits RAM staging
SETTLE_SECONDS = 5.0  # how long "after" waits for the workers to give memory back
MODES = ("raw", "multipart")
IDLE_CONNS, QUICK_IDLE_CONNS = 1000, 200  # keep-alive connections held open after one request each
IDLE_SETTLE = 1.0  # seconds before each reading; well inside prefork's keepalive_timeout (5 s)
IDLE_ANSWER_TIMEOUT = 5.0  # seconds a keep-alive connection may wait for its answer before the server counts as full
LINGER_RST = struct.pack("ii", 1, 0)  # close with a reset: no TIME_WAIT for 1,000 client ports


def rss_sum(pids: list[int]) -> int:
    """Σ RSS of ``pids`` (a process that is gone counts 0)."""
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_info().rss
        except psutil.Error:
            pass
    return total


def smaps_breakdown(pid: int) -> dict[str, int]:
    """Resident bytes of one process by kind of mapping: heap, thread arenas, other anonymous, files.

    glibc's per-thread arenas are anonymous mappings aligned to 64 MiB (HEAP_MAX_SIZE)
    and reserved in 64 MiB pieces; a thread stack is an 8 MiB mapping; the rest of
    the anonymous memory is mmapped chunks and CPython's object arenas.
    """
    out = {"heap": 0, "arenas": 0, "anon": 0, "file": 0}
    try:
        text = Path(f"/proc/{pid}/smaps").read_text()
    except OSError:
        return out
    kind = "anon"
    for line in text.splitlines():
        head = re.match(r"([0-9a-f]+)-([0-9a-f]+) \S+ \S+ \S+ \d+\s*(.*)$", line)
        if head:
            start, end, name = int(head[1], 16), int(head[2], 16), head[3]
            if name == "[heap]":
                kind = "heap"
            elif name.startswith("/"):
                kind = "file"
            elif not name and start % (64 * MiB) == 0 and end - start <= 64 * MiB:
                kind = "arenas"
            else:
                kind = "anon"
        elif line.startswith("Rss:"):
            out[kind] += int(line.split()[1]) * 1024
    return out


class RssSampler(bench.ProcessSampler):
    """``bench.ProcessSampler`` every 10 ms, plus where the memory sits at the peak (smaps)."""

    def __init__(self, pids: list[int], *, detail: bool = False) -> None:
        super().__init__(pids, interval=0.01)
        self.detail = detail
        self.peak_detail: dict[str, int] = {}
        self._last_detail = 0.0

    def on_new_peak(self) -> None:
        now = time.monotonic()
        if self.detail and now - self._last_detail > 0.2:  # smaps is slow to read
            self._last_detail = now
            parts = [smaps_breakdown(proc.pid) for proc in self.procs]
            self.peak_detail = {k: sum(p[k] for p in parts) for k in parts[0]}


def post_all(port: int, mode: str, clients: int, each: int) -> list[bytes]:
    """Start ``clients`` uploads of ``each`` bytes at once; return every answer (or the client error)."""
    block = memoryview(os.urandom(4 * MiB))
    answers: list[bytes] = [b""] * clients

    def one(i: int) -> None:
        try:
            if mode == "raw":
                answers[i] = bench.post_body(port, each, block, "/upload")[2]
            else:
                answers[i] = bench.post_multipart(port, each, block)[2]
        except OSError as exc:
            answers[i] = f"client error: {exc!r}".encode()

    threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(900)
    return answers


def settle(pids: list[int], timeout: float = SETTLE_SECONDS) -> int:
    """Σ RSS once it has stopped falling for a second (the workers sweep twice a second),
    or after ``timeout`` s: the value then."""
    deadline = time.monotonic() + timeout
    lowest, since = rss_sum(pids), time.monotonic()
    while time.monotonic() < deadline and time.monotonic() - since < 1.0:
        time.sleep(0.1)
        total = rss_sum(pids)
        if total < lowest - 256 * 1024:
            since = time.monotonic()
        lowest = min(lowest, total)
    return lowest


def measure_once(server: RunningServer, mode: str, clients: int, each: int, budget_mib: float,
                 failures: list[str], detail: bool = False) -> dict[str, float]:
    """One round of concurrent uploads against a running server: RSS figures in MiB, and ``ok``."""
    pids = server.workers()
    with RssSampler(pids, detail=detail) as sampler:
        start = time.perf_counter()
        answers = post_all(server.port, mode, clients, each)
        elapsed = time.perf_counter() - start
    ok = sum(bench.check_answer(server, answer, each, failures) for answer in answers)
    after = settle(pids)
    metrics = {"before_mib": sampler.base_sum / MiB,
               "peak_growth_mib": (sampler.peak_sum - sampler.base_sum) / MiB,
               "after_growth_mib": (after - sampler.base_sum) / MiB, "mib_s": clients * each / MiB / elapsed,
               "ok": float(ok == clients), "budget_mib": budget_mib}
    metrics.update({f"peak_{k}_mib": v / MiB for k, v in sampler.peak_detail.items()})
    if detail:
        parts = [smaps_breakdown(pid) for pid in pids]
        metrics.update({f"after_{k}_mib": sum(p[k] for p in parts) / MiB for k in parts[0]})
    return metrics


def prefork_spec(ws: Workspace, mode: str, budget_mib: int, threshold: str = THRESHOLD) -> ServerSpec:
    """prefork, 2 workers × 4 threads, with ``memory_budget`` and the app of ``mode``."""
    app = "upload" if mode == "raw" else "native_app"
    staging = {"memory_budget": f"{budget_mib}MiB", "memory_threshold": threshold, "dir": str(ws.scratch)}
    return bench.prefork_server(ws, app, workers=2, threads=4, name=f"prefork {mode} budget {budget_mib}MiB",
                                overrides={"staging": staging, "uploads": {"dir": str(ws.scratch)}})


def peer_spec(mode: str) -> ServerSpec:
    """gunicorn sync, 2 workers: the same WSGI copy app for raw bodies, Flask's save() for forms."""
    app = "upload" if mode == "raw" else "flask_upload"
    name = "gunicorn sync" if mode == "raw" else bench.FLASK
    return bench.gunicorn_server(app, worker_class="sync", name=f"{name} ({mode})")


def scenario_memory(args: argparse.Namespace, ws: Workspace) -> list[SummaryRow]:
    """Σ worker RSS growth (peak, after) for 40 concurrent 50 MiB uploads, raw and multipart."""
    clients, each = CLIENTS, (8 * MiB if args.quick else EACH)
    failures: list[str] = []
    plan: dict[str, tuple[str, float]] = {}
    specs = []
    for mode in MODES:
        for budget in BUDGETS:
            spec = prefork_spec(ws, mode, budget)
            specs.append(spec)
            plan[spec.name] = (mode, float(budget))
        peer = peer_spec(mode)
        specs.append(peer)
        plan[peer.name] = (mode, float("nan"))

    def measure(server: RunningServer) -> Measurement:
        mode, budget = plan[server.name]
        return {"memory": measure_once(server, mode, clients, each, budget, failures)}

    print(f"memory: {clients} x {each / MiB:,.0f} MiB x {args.runs} runs x {len(specs)} servers", file=sys.stderr)
    results = bench.alternate(specs, args.runs, ws, measure)
    bench.print_medians(results, ["memory"], ["before_mib", "peak_growth_mib", "after_growth_mib", "mib_s", "ok"])
    bench.print_failures(failures)
    bench.save_json(args, "memory", results)
    return summary_rows(results, clients, each) + scenario_idle(args, ws)


def hold_keepalive(port: int, n: int, socks: list[socket.socket]) -> str | None:
    """Open ``n`` connections into ``socks``, each after one complete ``GET /`` answered with keep-alive.

    Returns:
        None when all ``n`` were answered, else why the next one was not (a server that
        stops serving new connections past a limit of its own, as granian's backpressure
        does): ``socks`` then holds those that were, and the one that was not is closed.
    """
    request = f"GET / HTTP/1.1\r\nHost: {bench.HOST}:{port}\r\n\r\n".encode()
    for _ in range(n):
        sock = socket.create_connection((bench.HOST, port), timeout=IDLE_ANSWER_TIMEOUT)
        try:
            sock.sendall(request)
            data = b""
            while True:
                head, sep, body = data.partition(b"\r\n\r\n")
                match = re.search(rb"(?im)^content-length:\s*(\d+)", head) if sep else None
                if match and len(body) >= int(match.group(1)):
                    break
                chunk = sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed before a whole response: {data[:100]!r}")
                data += chunk
        except OSError as exc:
            sock.close()
            return f"connection {len(socks) + 1} not answered: {exc!r}"
        socks.append(sock)
    return None


def still_open(socks: list[socket.socket]) -> int:
    """How many of ``socks`` the server has not closed (nothing to read means still open)."""
    sel = selectors.DefaultSelector()
    for sock in socks:
        sel.register(sock, selectors.EVENT_READ)
    closed = len(sel.select(0))
    sel.close()
    return len(socks) - closed


def uss(pid: int) -> int:
    try:
        return int(psutil.Process(pid).memory_full_info().uss)
    except psutil.Error:
        return 0


def measure_idle(server: RunningServer, conns: int) -> dict[str, float]:
    """Idle RSS of the master and per worker, then Σ RSS growth per idle keep-alive connection."""
    workers = server.workers()
    pids = sorted({server.proc.pid, *workers})
    time.sleep(IDLE_SETTLE)
    before = rss_sum(pids)
    metrics = {"processes": float(len(pids)), "master_rss_mib": rss_sum([server.proc.pid]) / MiB,
               "worker_rss_mib": rss_sum(workers) / len(workers) / MiB,
               "worker_uss_mib": sum(uss(pid) for pid in workers) / len(workers) / MiB, "total_rss_mib": before / MiB}
    socks: list[socket.socket] = []
    try:
        refused = hold_keepalive(server.port, conns, socks)
        if refused:
            print(f"    {server.spec.name}: {refused}; measured with the {len(socks):,} answered", file=sys.stderr)
        time.sleep(IDLE_SETTLE)
        after = rss_sum(pids)
        metrics.update({"conns_served": float(len(socks)), "conns_open": float(still_open(socks)),
                        "total_rss_after_mib": after / MiB,
                        "per_conn_kib": (after - before) / max(len(socks), 1) / 1024})
    finally:
        for sock in socks:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            sock.close()
    return metrics


def scenario_idle(args: argparse.Namespace, ws: Workspace) -> list[SummaryRow]:
    """Idle RSS per worker and per keep-alive connection: prefork vs granian, reported."""
    conns = QUICK_IDLE_CONNS if args.quick else IDLE_CONNS
    specs = [bench.prefork_server(ws, "hello", workers=2, threads=4, name="prefork 2w"),
             bench.granian_server("hello", name="granian wsgi 2w")]
    print(f"memory (idle): {len(specs)} servers x {args.runs} runs, {conns:,} keep-alive connections",
          file=sys.stderr)
    results = bench.alternate(specs, args.runs, ws, lambda server: {"idle": measure_idle(server, conns)})
    metrics = ["processes", "master_rss_mib", "worker_rss_mib", "worker_uss_mib", "total_rss_mib",
               "total_rss_after_mib", "conns_served", "conns_open", "per_conn_kib"]
    bench.print_medians(results, ["idle"], metrics)
    print(f"Idle: RSS read {IDLE_SETTLE:g} s after the start; USS = pages only that process maps. per_conn_kib = "
          f"(Σ RSS of all the server's processes {IDLE_SETTLE:g} s after {conns:,} keep-alive connections each "
          "made one GET - Σ RSS before) / connections answered (conns_served: a server may stop answering new "
          "connections past a limit of its own); conns_open = those the server had not closed by then. "
          f"prefork: conf/server.ini, access log {'on' if ws.access_log else 'off'}; granian: its defaults.\n")
    bench.save_json(args, "memory-idle", results)
    prefork, peer = (spec.name for spec in specs)

    def med(name: str, metric: str) -> float:
        return bench.median(results, name, "idle", metric)

    return [bench.report_ratio("idle RSS per worker (2 workers)", med(prefork, "worker_rss_mib"),
                               med(peer, "worker_rss_mib"), "MiB", peer),
            bench.report_ratio("idle USS per worker (2 workers)", med(prefork, "worker_uss_mib"),
                               med(peer, "worker_uss_mib"), "MiB", peer),
            bench.report_ratio(f"Σ RSS per idle keep-alive connection ({conns:,} open)", med(prefork, "per_conn_kib"),
                               med(peer, "per_conn_kib"), "KiB", peer)]


def summary_rows(results: bench.Results, clients: int, each: int) -> list[SummaryRow]:
    """Worst-run growth per (mode, budget) against budget + 32 MiB, the peer beside it."""
    def worst(name: str, metric: str) -> float:
        values = [m[metric] for m in results.get(name, {}).get("memory", [])]
        return max(values) if values else float("nan")

    rows = []
    for mode in MODES:
        peer = peer_spec(mode).name
        for budget in BUDGETS:
            name = f"prefork {mode} budget {budget}MiB"
            label = f"{clients} concurrent {each / MiB:,.0f} MiB {mode} uploads, memory_budget {budget} MiB"
            rows.append(bench.target_max(f"{label}: Σ worker RSS growth, peak (worst run)",
                                         worst(name, "peak_growth_mib"), "MiB", budget + SLACK_MIB,
                                         peer, worst(peer, "peak_growth_mib")))
            rows.append(bench.target_max(f"{label}: Σ worker RSS growth after (worst run)",
                                         worst(name, "after_growth_mib"), "MiB", AFTER_MIB,
                                         peer, worst(peer, "after_growth_mib")))
    return rows


def main(argv: list[str] | None = None) -> int:
    """Standalone: one server, one round per mode, figures printed (the reproduction of issue 11 §6)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--budget", type=bench.parse_size, default=64 * MiB)
    parser.add_argument("--threshold", default=THRESHOLD, help="[staging] memory_threshold")
    parser.add_argument("--mode", choices=(*MODES, "both"), default="both")
    parser.add_argument("--clients", type=int, default=CLIENTS)
    parser.add_argument("--size", type=bench.parse_size, default=EACH)
    parser.add_argument("--rounds", type=int, default=1, help="rounds of uploads on the same server")
    parser.add_argument("--peer", action="store_true", help="measure gunicorn instead of prefork")
    parser.add_argument("--detail", action="store_true", help="smaps breakdown at the peak")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server")
    args = parser.parse_args(argv)
    ws = Workspace(Path(tempfile.mkdtemp(prefix="prefork-memory-")), Path(tempfile.mkdtemp(prefix="prefork-mem-")))
    print(f"server logs: {ws.logdir}", file=sys.stderr)
    env = dict(item.split("=", 1) for item in args.env)
    failures: list[str] = []
    try:
        for mode in MODES if args.mode == "both" else (args.mode,):
            spec = peer_spec(mode) if args.peer else prefork_spec(ws, mode, args.budget // MiB, args.threshold)
            spec.env.update(env)
            with bench.running(spec, ws) as server:
                for n in range(args.rounds):
                    metrics = measure_once(server, mode, args.clients, args.size, args.budget / MiB, failures,
                                           args.detail)
                    shown = ", ".join(f"{k}={v:,.1f}" for k, v in metrics.items())
                    print(f"{spec.name} round {n + 1}: {shown}", flush=True)
    finally:
        shutil.rmtree(ws.scratch, ignore_errors=True)
    bench.print_failures(failures)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
