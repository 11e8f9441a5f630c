"""prefork benchmarks: the scenarios of the performance issue, each against a peer, and a summary.

Usage (from the repo root)::

    python scripts/bench.py all --quick            # smoke test, a few minutes
    python scripts/bench.py all --runs 3           # every scenario + the summary table (~45 min)
    python scripts/bench.py parse
    python scripts/bench.py hello --runs 3 --duration 5 --access-log both  # vs granian, log on and off
    python scripts/bench.py upload --runs 2 --size 1GiB
    python scripts/bench.py multipart --size 1GiB  # prefork + Flask vs granian + Flask, native, the ceiling
    python scripts/bench.py bigupload              # worker RSS during a 4 GiB upload
    python scripts/bench.py concurrent             # 20 x 50 MiB uploads at once
    python scripts/bench.py memory                 # Σ worker RSS, 40 x 50 MiB uploads; idle RSS vs granian
    python scripts/bench.py slow --access-log both # hello under 500 slowloris + 50 slow bodies, vs granian
    python scripts/bench.py ws --runs 3            # both clients: raw sockets and the websockets library
    python scripts/bench.py reload --runs 1        # requests lost to HUP/TTIN/TTOU + max_requests
    python scripts/bench.py ws-hostile --runs 1    # worker RSS: ping flood, unfinished deflate (bench_ws_hostile.py)
    python scripts/bench.py tls --runs 3           # HTTPS hello vs granian/gunicorn, upload over TLS (bench_tls.py)
    python scripts/bench.py broadcast --runs 3     # WebSocket fan-out to 2,000 + throughput, local vs Redis (bench_broadcast.py)
    python scripts/bench.py redis-costs --runs 3   # Redis CPU per subscriber connection; hiredis (bench_redis_costs.py)

The main peer is granian (``granian_server``: ``--interface wsgi --workers 2
--http 1``, its defaults otherwise), the issue-14 targets are ratios to it;
gunicorn rows stay as secondary figures. ``--access-log on|off|both`` sets
prefork's access log (and granian's ``--access-log`` beside it) for hello and
slow, ``both`` measuring each contender with either; ``all`` defaults to both,
a single scenario to off.

``all`` (alias ``perf``) runs every scenario and ends with one table, scenario |
prefork | peer | ratio | target | met?, headed by the date and the command line:
the table for README's "Performance" section. Every scenario returns its rows
of that table (``SummaryRow``, built with ``target_ratio`` / ``target_max``).

Strategy: client and servers share one small machine, so absolute figures are
noise-prone; what counts is the ratio to a peer measured in the same run. Every
scenario therefore runs its contenders alternately (A B C A B C ...), each run
on a freshly started server on a free loopback port, and reports medians over
``--runs``. Servers are subprocesses with their output in a log directory that
is kept (its path is printed); each is stopped with TERM, a bounded wait and
then KILL, by PID, in a ``finally``.

Adding a scenario: write ``contenders(ws, args) -> list[ServerSpec]`` (see
``prefork_server`` / ``granian_server`` / ``gunicorn_server`` / ``ceiling_server``) and a
``measure(server, args) -> {variant: {metric: value}}``, pass both to
``alternate()``, then print rows with ``ratio_rows()`` / ``print_table()``
and ``print_medians()``, return its ``SummaryRow`` list, and register the function in ``SCENARIOS``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
for _p in (str(REPO), str(SCRIPTS)):
    if _p not in sys.path:
        sys.path.insert(0, _p)

HOST = "127.0.0.1"
MiB = 1 << 20
READY_TIMEOUT = 30.0  # seconds for a server to answer its first request
STOP_TIMEOUT = 15.0  # seconds between TERM and KILL
COMMAND_LINE = "python " + " ".join(shlex.quote(a) for a in sys.argv)

Metrics = dict[str, float]
Measurement = dict[str, Metrics]  # variant -> metric -> value
Results = dict[str, dict[str, list[Metrics]]]  # contender -> variant -> one Metrics per run


# --------------------------------------------------------------------------- servers


@dataclass
class Workspace:
    """Where one invocation keeps its logs (kept) and scratch files (removed at exit)."""

    logdir: Path
    scratch: Path
    access_log: bool = False  # --access-log: prefork logs every request, as the shipped config does
    starts: int = 0
    # The access-log settings that hello and slow measure, each a set of contenders of its own
    # (--access-log both: on, then off); the other scenarios run with ``access_log``.
    log_modes: tuple[bool, ...] = (False,)

    def log_path(self, name: str) -> Path:
        self.starts += 1
        slug = re.sub(r"[^A-Za-z0-9]+", "-", name).strip("-")
        return self.logdir / f"{self.starts:03d}-{slug}.log"


@dataclass
class ServerSpec:
    """How to start one contender. ``argv(port, log)`` builds the command line."""

    name: str
    argv: Callable[[int, Path], list[str]]
    cwd: Path = SCRIPTS
    env: dict[str, str] = field(default_factory=dict)
    ready_path: str = "/"
    tls_ca: Path | None = None  # set: the server speaks HTTPS, its certificate issued by this CA (PEM)


@dataclass
class RunningServer:
    spec: ServerSpec
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def name(self) -> str:
        return self.spec.name

    def workers(self) -> list[int]:
        """PIDs of the processes that serve requests: the children, else the process itself."""
        import psutil

        try:
            children = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        return [c.pid for c in children] or [self.proc.pid]


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(text[-lines:])


def tls_client_context(ca: Path) -> ssl.SSLContext:
    """A client context that trusts only ``ca`` (the bench's throwaway CA), hostname checked."""
    return ssl.create_default_context(cafile=str(ca))


def _wait_ready(server: RunningServer) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    ca = server.spec.tls_ca
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.proc.returncode} before it was ready; "
                               f"log {server.log}:\n{log_tail(server.log)}")
        conn = (http.client.HTTPSConnection(HOST, server.port, timeout=1.0, context=tls_client_context(ca))
                if ca else http.client.HTTPConnection(HOST, server.port, timeout=1.0))
        try:
            conn.request("GET", server.spec.ready_path)
            if conn.getresponse().status < 500:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.1)
    raise RuntimeError(f"{server.name} not ready after {READY_TIMEOUT:.0f}s; log {server.log}:\n"
                       f"{log_tail(server.log)}")


def _stop(server: RunningServer) -> None:
    """TERM the process, wait a bounded time, then KILL it and any child it left, by PID."""
    import psutil

    try:
        children = psutil.Process(server.proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            print(f"  ! {server.name} (pid {server.proc.pid}) ignored TERM for {STOP_TIMEOUT:.0f}s: KILL",
                  file=sys.stderr)
            server.proc.kill()
            server.proc.wait(5)
    _, alive = psutil.wait_procs(children, timeout=5)
    for child in alive:
        print(f"  ! {server.name}: child {child.pid} outlived its parent: KILL", file=sys.stderr)
        with contextlib.suppress(psutil.NoSuchProcess):
            child.kill()
    psutil.wait_procs(alive, timeout=5)


@contextlib.contextmanager
def running(spec: ServerSpec, ws: Workspace) -> Iterator[RunningServer]:
    """Start ``spec`` on a free port, wait until it answers, and always stop it."""
    port = free_port()
    log = ws.log_path(spec.name)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(SCRIPTS)]),
           "BENCH_UPLOAD_DIR": str(ws.scratch), **spec.env}
    with open(log, "ab") as out:
        proc = subprocess.Popen(spec.argv(port, log), cwd=spec.cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=subprocess.STDOUT)
    server = RunningServer(spec, proc, port, log)
    try:
        _wait_ready(server)
        yield server
    finally:
        _stop(server)


def log_label(on: bool) -> str:
    """How contender names and table rows say which access-log setting they ran with."""
    return "log on" if on else "log off"


def prefork_config(ws: Workspace, log: Path, overrides: dict[str, dict[str, str]] | None = None,
                   tree: Path = REPO, access_log: bool | None = None) -> Path:
    """``tree``'s conf/server.ini with the error log to ``log``, plus ``overrides``.

    The access log is off unless ``access_log`` (default ``ws.access_log``, i.e.
    ``--access-log``): gunicorn's and granian's are off by default. With it on,
    access lines go to ``log`` beside the errors.
    """
    logging = {"error_log": str(log)}
    logging["access_log"] = str(log) if (ws.access_log if access_log is None else access_log) else ""
    settings: dict[str, dict[str, str]] = {"logging": logging}
    for section, values in (overrides or {}).items():
        settings.setdefault(section, {}).update(values)
    lines, section, seen = [], "", set()
    for line in (tree / "conf" / "server.ini").read_text().splitlines():
        match = re.match(r"\s*\[([^\]]+)\]", line)
        if match:
            section = match.group(1).strip()
        key = re.match(r"([A-Za-z_]+)\s*=", line)
        if key and key.group(1) in settings.get(section, {}):
            line = f"{key.group(1)} = {settings[section][key.group(1)]}"
            seen.add((section, key.group(1)))
        lines.append(line)
    missing = [f"[{s}] {k}" for s, vals in settings.items() for k in vals if (s, k) not in seen]
    if missing:
        raise ValueError(f"conf/server.ini has no {', '.join(missing)}")
    path = log.with_suffix(".ini")
    path.write_text("\n".join(lines) + "\n")
    return path


def prefork_server(ws: Workspace, app: str, *, workers: int = 2, threads: int = 4, name: str | None = None,
                   overrides: dict[str, dict[str, str]] | None = None, tree: Path = REPO,
                   access_log: bool | None = None) -> ServerSpec:
    """prefork from ``tree`` (this checkout, or a ``--baseline`` worktree) serving ``bench_apps:app``;
    ``access_log`` overrides ``ws.access_log``."""
    def argv(port: int, log: Path) -> list[str]:
        cfg = prefork_config(ws, log, overrides, tree, access_log)
        return [sys.executable, "-m", "prefork.cli", "-c", str(cfg), "-b", f"{HOST}:{port}",
                "-w", str(workers), "--threads", str(threads), f"bench_apps:{app}"]

    env = {} if tree == REPO else {"PYTHONPATH": os.pathsep.join([str(tree), str(SCRIPTS)])}
    return ServerSpec(name or f"prefork threads={threads}", argv, env=env)


@contextlib.contextmanager
def baseline_tree(rev: str, ws: Workspace) -> Iterator[Path]:
    """A detached git worktree of ``rev`` under the scratch dir, removed afterwards."""
    path = ws.scratch / f"baseline-{re.sub(r'[^A-Za-z0-9]+', '-', rev)}"
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", "--quiet", str(path), rev], check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(path)], check=False)


def gunicorn_server(app: str, *, workers: int = 2, worker_class: str = "sync", threads: int = 1,
                    name: str | None = None) -> ServerSpec:
    def argv(port: int, log: Path) -> list[str]:
        cmd = [sys.executable, "-m", "gunicorn", "--chdir", str(SCRIPTS), "-b", f"{HOST}:{port}",
               "-w", str(workers), "-k", worker_class, "--timeout", "300", "--graceful-timeout", "10",
               "--error-logfile", "-", "--log-level", "warning"]
        if worker_class == "gthread":
            cmd += ["--threads", str(threads)]
        return cmd + [f"bench_apps:{app}"]

    label = f"gunicorn {worker_class}" + (f" {workers}x{threads}" if worker_class == "gthread" else f" {workers}w")
    return ServerSpec(name or label, argv)


def granian_server(app: str, *, workers: int = 2, access_log: bool = False, name: str | None = None) -> ServerSpec:
    """granian's WSGI interface (Rust core), HTTP/1 only, its defaults otherwise (blocking
    threads, backpressure). With ``access_log`` it logs every request (``--access-log``,
    its default format) to its stdout, which ``running`` sends to the server's log file."""
    def argv(port: int, log: Path) -> list[str]:
        return [sys.executable, "-m", "granian", "--interface", "wsgi", "--host", HOST, "--port", str(port),
                "--workers", str(workers), "--http", "1", "--access-log" if access_log else "--no-access-log",
                f"bench_apps:{app}"]

    return ServerSpec(name or f"granian wsgi {workers}w", argv)


def ceiling_server(ws: Workspace) -> ServerSpec:
    def argv(port: int, log: Path) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "_ceiling", "--port", str(port),
                "--dir", str(ws.scratch)]

    return ServerSpec("ceiling (raw socket)", argv)


# --------------------------------------------------------------------------- runs, medians, tables


def alternate(contenders: list[ServerSpec], runs: int, ws: Workspace,
              measure: Callable[[RunningServer], Measurement]) -> Results:
    """Run every contender once per run, in turn (A B C A B C ...), each on a fresh server."""
    results: Results = {spec.name: {} for spec in contenders}
    for run in range(1, runs + 1):
        for spec in contenders:
            print(f"  run {run}/{runs}: {spec.name}", file=sys.stderr, flush=True)
            with running(spec, ws) as server:
                for variant, metrics in measure(server).items():
                    results[spec.name].setdefault(variant, []).append(metrics)
                    shown = ", ".join(f"{k}={v:,.4g}" for k, v in metrics.items())
                    print(f"    {variant}: {shown}", file=sys.stderr, flush=True)
    return results


def median(results: Results, contender: str, variant: str, metric: str) -> float:
    values = [m[metric] for m in results.get(contender, {}).get(variant, []) if metric in m]
    return statistics.median(values) if values else float("nan")


def fmt(value: float, unit: str = "") -> str:
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 100:
        text = f"{value:,.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    else:
        text = f"{value:.2f}"
    return f"{text} {unit}".strip()


def ratio(a: float, b: float) -> str:
    if a != a or b != b or b == 0:
        return "n/a"
    return f"{a / b:.2f}x"


def ratio_rows(results: Results, variants: list[str], metric: str, unit: str, primaries: list[str],
               peers: list[str], label: Callable[[str], str] = str) -> list[list[str]]:
    """One row per (variant, primary, peer): median of each and primary/peer."""
    rows = []
    for variant in variants:
        for primary in primaries:
            for peer in peers:
                a, b = median(results, primary, variant, metric), median(results, peer, variant, metric)
                rows.append([f"{label(variant)}: {primary} vs {peer}", fmt(a, unit), fmt(b, unit), ratio(a, b)])
    return rows


def print_table(title: str, rows: list[list[str]],
                header: tuple[str, ...] = ("scenario", "prefork", "peer", "ratio"), note: str = "") -> None:
    print()
    print(f"### {title}")
    print()
    print(f"_{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}, `{COMMAND_LINE}`_")
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join(":---" if i == 0 else "---:" for i in range(len(header))) + "|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    if note:
        print()
        print(note)
    print(flush=True)


# --------------------------------------------------------------------------- the summary table


@dataclass
class SummaryRow:
    """One line of the ``perf`` summary: a scenario, both medians, their ratio, the target, met or not."""

    scenario: str
    prefork: str
    peer: str
    ratio: str
    target: str
    met: bool | None  # None: reported only, no target

    def cells(self) -> list[str]:
        met = "—" if self.met is None else ("yes" if self.met else "**no**")
        return [self.scenario, self.prefork, self.peer, self.ratio, self.target, met]


def target_ratio(scenario: str, a: float, b: float, unit: str, peer: str, minimum: float) -> SummaryRow:
    """prefork ``a`` vs peer ``b`` (higher is better), met when a/b >= ``minimum``."""
    met = None if a != a or b != b or b == 0 else a / b >= minimum
    return SummaryRow(scenario, fmt(a, unit), f"{fmt(b, unit)} ({peer})", ratio(a, b),
                      f"≥ {minimum:g}x", met)


def reported(row: SummaryRow) -> SummaryRow:
    """The same figures, shown for information: not a target of their own."""
    return SummaryRow(row.scenario, row.prefork, row.peer, row.ratio, f"report ({row.target})", None)


def target_max(scenario: str, value: float, unit: str, limit: float, peer: str = "—",
               peer_value: float = float("nan")) -> SummaryRow:
    """An absolute bound (lower is better), met when ``value`` <= ``limit``."""
    shown_peer = peer if peer_value != peer_value else f"{fmt(peer_value, unit)} ({peer})"
    return SummaryRow(scenario, fmt(value, unit), shown_peer, "—", f"≤ {fmt(limit, unit)}",
                      None if value != value else value <= limit)


def print_summary(rows: list[SummaryRow], args: argparse.Namespace) -> None:
    met = [r for r in rows if r.met is True]
    missed = [r for r in rows if r.met is False]
    print_table(f"Performance summary (median of {args.runs} runs, {args.duration:g}s load runs, "
                f"upload {args.size / MiB:,.0f} MiB)",
                [r.cells() for r in rows], header=("scenario", "prefork", "peer", "ratio", "target", "met?"),
                note=f"{len(met)} of {len(met) + len(missed)} targets met"
                     + (f"; not met: {'; '.join(f'{r.scenario} [{r.target}]' for r in missed)}."
                        if missed else ".")
                     + " Ratios are against a peer measured in the same invocation, alternating runs on one "
                       "2-core machine shared by client and servers; absolute figures are not portable.")


# --------------------------------------------------------------------------- load generators


_WRK_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3, "h": 3600e3}


def parse_wrk(text: str) -> Metrics:
    """req/s, p50/p99 latency (ms), socket error counters and non-2xx count from ``wrk --latency``."""
    # wrk omits the error lines when there were none.
    out: Metrics = {"err_connect": 0.0, "err_read": 0.0, "err_write": 0.0, "err_timeout": 0.0, "non2xx": 0.0}
    if m := re.search(r"Requests/sec:\s*([\d.]+)", text):
        out["req_s"] = float(m.group(1))
    for pct in ("50", "99"):
        if m := re.search(rf"^\s*{pct}(?:\.0+)?%\s+([\d.]+)(us|ms|s|m|h)\s*$", text, re.M):
            out[f"p{pct}_ms"] = float(m.group(1)) * _WRK_UNITS[m.group(2)]
    if m := re.search(r"(\d+) requests in", text):
        out["requests"] = float(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        for name, value in zip(("connect", "read", "write", "timeout"), m.groups()):
            out[f"err_{name}"] = float(value)
    if m := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        out["non2xx"] = float(m.group(1))
    return out


def run_wrk(port: int, conns: int, duration: float, close: bool, path: str = "/",
            scheme: str = "http") -> tuple[Metrics, str]:
    """``wrk --latency`` for ``duration`` s; ``scheme`` https: over TLS (wrk does not verify certificates)."""
    cmd = ["wrk", "-t2", f"-c{conns}", f"-d{max(1, round(duration))}s", "--latency"]
    if close:
        cmd += ["-H", "Connection: close"]
    cmd.append(f"{scheme}://{HOST}:{port}{path}")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60)
    text = proc.stdout + proc.stderr
    metrics = parse_wrk(text)
    if "req_s" not in metrics:
        raise RuntimeError(f"could not parse wrk output:\n{text}")
    return metrics, text


def run_pyclient(port: int, conns: int, duration: float, close: bool, path: str = "/") -> tuple[Metrics, str]:
    """Fallback when wrk is missing: ``conns`` threads, each a blocking keep-alive (or close) client.

    Under the GIL this client saturates long before the servers do; its ratios are
    only indicative.
    """
    request = (f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\n"
               + ("Connection: close\r\n" if close else "") + "\r\n").encode()
    deadline = time.monotonic() + duration
    latencies: list[list[float]] = [[] for _ in range(conns)]
    errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "non2xx": 0}
    lock = threading.Lock()

    def count(kind: str) -> None:
        with lock:
            errors[kind] += 1

    def one_response(sock: socket.socket, buf: bytearray) -> tuple[int, bool]:
        while b"\r\n\r\n" not in buf:
            data = sock.recv(65536)
            if not data:
                raise ConnectionResetError("closed before the response head")
            buf += data
        head, _, rest = bytes(buf).partition(b"\r\n\r\n")
        status = int(head.split(b" ", 2)[1])
        m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
        length = int(m.group(1)) if m else 0
        while len(rest) < length:
            data = sock.recv(65536)
            if not data:
                raise ConnectionResetError("closed inside the body")
            rest += data
        buf[:] = rest[length:]
        return status, bool(re.search(rb"(?im)^connection:\s*close", head))

    def worker(slot: int) -> None:
        sock: socket.socket | None = None
        buf = bytearray()
        while time.monotonic() < deadline:
            if sock is None:
                try:
                    sock = socket.create_connection((HOST, port), timeout=2.0)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    buf.clear()
                except OSError:
                    count("connect")
                    time.sleep(0.01)
                    continue
            start = time.perf_counter()
            try:
                sock.sendall(request)
            except OSError:
                count("write")
                sock.close()
                sock = None
                continue
            try:
                status, server_closes = one_response(sock, buf)
            except socket.timeout:
                count("timeout")
                status, server_closes = 0, True
            except (OSError, ValueError, IndexError):
                count("read")
                status, server_closes = 0, True
            if status:
                latencies[slot].append((time.perf_counter() - start) * 1e3)
                if not 200 <= status < 400:
                    count("non2xx")
            if close or server_closes:
                sock.close()
                sock = None
        if sock is not None:
            sock.close()

    started = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + 30)
    elapsed = time.monotonic() - started
    lat = sorted(x for per in latencies for x in per)
    metrics: Metrics = {"req_s": len(lat) / elapsed, "requests": float(len(lat))}
    if lat:
        metrics["p50_ms"] = lat[len(lat) // 2]
        metrics["p99_ms"] = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
    for kind, n in errors.items():
        metrics["non2xx" if kind == "non2xx" else f"err_{kind}"] = float(n)
    return metrics, f"python client: {metrics}"


# --------------------------------------------------------------------------- scenario: parse


def scenario_parse(args: argparse.Namespace, ws: Workspace) -> list[SummaryRow]:
    rows: list[list[str]] = []
    try:
        from bench_parse_http import bench_heads
    except ImportError as exc:
        print(f"scripts/bench_parse_http.py is missing or broken ({exc}): skipping heads/chunked")
    else:
        heads = bench_heads(quick=args.quick)
        rows.append(["request heads/s: prefork vs h11", fmt(heads["prefork_heads_per_s"]),
                     fmt(heads["h11_heads_per_s"]), f"{heads['ratio']:.2f}x"])
        rows.append(["chunked decoding, 64 KiB pieces", fmt(heads["chunked_mib_per_s"], "MiB/s"), "—", "—"])
    try:
        from bench_parse_multipart import bench_multipart
    except ImportError as exc:
        print(f"scripts/bench_parse_multipart.py is missing or broken ({exc}): skipping multipart")
    else:
        rate = bench_multipart(128 * MiB if args.quick else 1024 * MiB)
        rows.append(["multipart/form-data parse, 64 KiB pieces", fmt(rate, "MiB/s"), "—", "—"])
    if rows:
        print_table("Parsers (single thread, best of several rounds)", rows)
    return []


# --------------------------------------------------------------------------- scenario: hello


HELLO_VARIANTS = [(c, close) for close in (False, True) for c in (10, 100)]


def hello_variant(conns: int, close: bool) -> str:
    return f"{'close' if close else 'keep-alive'} c{conns}"


@dataclass
class HelloRoles:
    """Names of the hello contenders by role: per access-log mode prefork (threads 4 and 0), granian and
    any ``--baseline`` prefork; gunicorn once (its access log off, its default), as secondary peers."""

    modes: tuple[bool, ...]
    threads4: dict[bool, str] = field(default_factory=dict)
    threads0: dict[bool, str] = field(default_factory=dict)
    granian: dict[bool, str] = field(default_factory=dict)
    baseline: dict[bool, list[str]] = field(default_factory=dict)
    gunicorn: list[str] = field(default_factory=list)


def hello_contenders(ws: Workspace, baseline: tuple[str, Path] | None = None
                     ) -> tuple[list[ServerSpec], HelloRoles]:
    """For each of ``ws.log_modes``: prefork threads 4 and 0 and granian, with the access log on or off
    in all three; then gunicorn sync and gthread. With ``baseline`` = (rev, tree), also prefork at that
    commit, so a change is measured against its parent in the same run."""
    roles = HelloRoles(ws.log_modes)
    order: list[ServerSpec] = []
    for on in ws.log_modes:
        label = log_label(on)
        t4 = prefork_server(ws, "hello", threads=4, name=f"prefork threads=4, {label}", access_log=on)
        t0 = prefork_server(ws, "hello", threads=0, name=f"prefork threads=0, {label}", access_log=on)
        peer = granian_server("hello", access_log=on, name=f"granian wsgi 2w, {label}")
        order += [t4, peer, t0]
        roles.threads4[on], roles.threads0[on], roles.granian[on] = t4.name, t0.name, peer.name
        if baseline:
            rev, tree = baseline
            before = [prefork_server(ws, "hello", threads=t, name=f"prefork@{rev} threads={t}, {label}",
                                     tree=tree, access_log=on) for t in (4, 0)]
            order += before
            roles.baseline[on] = [b.name for b in before]
    gunicorns = [gunicorn_server("hello", worker_class="sync"),
                 gunicorn_server("hello", worker_class="gthread", threads=4)]
    order += gunicorns
    roles.gunicorn = [g.name for g in gunicorns]
    return order, roles


def report_ratio(scenario: str, a: float, b: float, unit: str, peer: str) -> SummaryRow:
    """prefork ``a`` beside a peer's ``b``, with their ratio: reported, no target."""
    return SummaryRow(scenario, fmt(a, unit), f"{fmt(b, unit)} ({peer})", ratio(a, b), "report", None)


def scenario_hello(args: argparse.Namespace, ws: Workspace) -> list[SummaryRow]:
    client = run_wrk if (shutil.which("wrk") and args.client == "wrk") else run_pyclient
    raw_errors: list[str] = []

    def measure(server: RunningServer) -> Measurement:
        if not args.quick:
            client(server.port, 10, 1, False)  # warm-up, not recorded
        out: Measurement = {}
        for conns, close in HELLO_VARIANTS:
            metrics, text = client(server.port, conns, args.duration, close)
            errs = sum(v for k, v in metrics.items() if k.startswith("err_") or k == "non2xx")
            if errs:
                raw_errors.append(f"{server.name}, {hello_variant(conns, close)} (log {server.log}):\n{text}")
            out[hello_variant(conns, close)] = metrics
        return out

    with contextlib.ExitStack() as stack:
        baseline = (args.baseline, stack.enter_context(baseline_tree(args.baseline, ws))) if args.baseline else None
        contenders, roles = hello_contenders(ws, baseline)
        print(f"hello: {len(contenders)} servers x {args.runs} runs x {len(HELLO_VARIANTS)} variants of "
              f"{args.duration:g}s, client {client.__name__}, access log "
              f"{' and '.join(log_label(on) for on in ws.log_modes)}", file=sys.stderr)
        results = alternate(contenders, args.runs, ws, measure)
    variants = [hello_variant(c, close) for c, close in HELLO_VARIANTS]
    print_hello_tables(results, roles, variants, args, client is run_wrk)
    if raw_errors:
        print(f"**Errors reported by the client ({len(raw_errors)} measurements)** — first ones:\n")
        for text in raw_errors[:6]:
            print("```\n" + text.strip() + "\n```")
    save_json(args, "hello", results)
    return hello_summary(results, roles)


def print_hello_tables(results: Results, roles: HelloRoles, variants: list[str], args: argparse.Namespace,
                       wrk: bool) -> None:
    """req/s and p99 tables: prefork vs granian (and the baseline) per log mode, then vs gunicorn."""
    def rows(metric: str, unit: str) -> list[list[str]]:
        out = []
        for on in roles.modes:
            out += ratio_rows(results, variants, metric, unit, [roles.threads4[on], roles.threads0[on]],
                              [roles.granian[on], *roles.baseline.get(on, [])], lambda v: f"GET 100 B, {v}")
        # gunicorn ran once, its access log off: beside prefork with the log off when that was measured.
        last = roles.modes[-1]
        out += ratio_rows(results, variants, metric, unit, [roles.threads4[last]], roles.gunicorn,
                          lambda v: f"GET 100 B, {v}")
        return out

    logs = " and ".join(log_label(on) for on in roles.modes)
    print_table(f"Small GET, req/s (2 workers each; median of {args.runs}; higher is better)", rows("req_s", "req/s"),
                note=f"Client: {'wrk -t2 --latency' if wrk else 'Python threads'}, {args.duration:g}s per variant. "
                     f"Access log: {logs}; \"log on\" is prefork's as conf/server.ini ships it (to the server's "
                     "log file) against granian's `--access-log` (its default format, to its stdout, which is "
                     "the same kind of log file). granian: `--interface wsgi --workers 2 --http 1`, its defaults "
                     "otherwise. gunicorn (secondary peer) runs once, its access log off; gunicorn sync has no "
                     "keep-alive.")
    print_table(f"Small GET, p99 latency (median of {args.runs}; lower is better)", rows("p99_ms", "ms"))
    print_medians(results, variants, ["req_s", "p50_ms", "p99_ms", "err_connect", "err_read", "err_write",
                                      "err_timeout", "non2xx"])


def hello_summary(results: Results, roles: HelloRoles) -> list[SummaryRow]:
    """Issue 14's hello targets against granian, once per access-log mode; gunicorn gthread reported."""
    ka, close, ka10 = hello_variant(100, False), hello_variant(100, True), hello_variant(10, False)

    def med(name: str, variant: str, metric: str = "req_s") -> float:
        return median(results, name, variant, metric)

    rows = []
    for on in roles.modes:
        t4, t0, peer, label = roles.threads4[on], roles.threads0[on], roles.granian[on], log_label(on)
        rows += [target_ratio(f"hello c100 keep-alive, threads=4, {label}", med(t4, ka), med(peer, ka), "req/s",
                              "granian", 1.2),
                 target_ratio(f"hello c100 keep-alive, threads=0, {label}", med(t0, ka), med(peer, ka), "req/s",
                              "granian", 2.0),
                 target_max(f"hello c100 keep-alive, threads=4, {label}: p99 latency ≤ granian's",
                            med(t4, ka, "p99_ms"), "ms", med(peer, ka, "p99_ms"), "granian", med(peer, ka, "p99_ms")),
                 target_ratio(f"hello c100 Connection: close, threads=4, {label}", med(t4, close), med(peer, close),
                              "req/s", "granian", 1.0),
                 report_ratio(f"hello c10 keep-alive, threads=4, {label}", med(t4, ka10), med(peer, ka10), "req/s",
                              "granian")]
    gthread, last = roles.gunicorn[-1], roles.modes[-1]
    rows.append(report_ratio(f"hello c100 keep-alive, threads=4, {log_label(last)}", med(roles.threads4[last], ka),
                             med(gthread, ka), "req/s", gthread))
    return rows


def print_medians(results: Results, variants: list[str], metrics: list[str]) -> None:
    rows = []
    for variant in variants:
        for contender in results:
            rows.append([variant, contender] + [fmt(median(results, contender, variant, m)) for m in metrics])
    print_table("Medians per server", rows, header=("variant", "server", *metrics))


# --------------------------------------------------------------------------- scenario: upload


class ProcessSampler:
    """Samples RSS of some PIDs in a thread; also snapshots their /proc I/O counters."""

    def __init__(self, pids: list[int], interval: float = 0.02) -> None:
        import psutil

        self.procs = [psutil.Process(p) for p in pids]
        self.interval = interval
        self.base_rss = {p.pid: self._rss(p) for p in self.procs}
        self.peak_rss = dict(self.base_rss)
        self.base_sum = sum(self.base_rss.values())
        self.peak_sum = self.base_sum
        self.base_io = {p.pid: self._io(p) for p in self.procs}
        self.base_cpu = {p.pid: self._cpu(p) for p in self.procs}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _rss(proc: Any) -> int:
        try:
            return int(proc.memory_info().rss)
        except Exception:
            return 0

    @staticmethod
    def _io(proc: Any) -> dict[str, int]:
        try:
            text = Path(f"/proc/{proc.pid}/io").read_text()
        except OSError:
            return {}
        return {k: int(v) for k, v in (line.split(": ") for line in text.splitlines())}

    @staticmethod
    def _cpu(proc: Any) -> tuple[float, float]:
        try:
            times = proc.cpu_times()
        except Exception:
            return (0.0, 0.0)
        return (float(times.user), float(times.system))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            total = 0
            for proc in self.procs:
                rss = self._rss(proc)
                total += rss
                self.peak_rss[proc.pid] = max(self.peak_rss[proc.pid], rss)
            if total > self.peak_sum:
                self.peak_sum = total
                self.on_new_peak()

    def on_new_peak(self) -> None:
        """Called from the sampling thread when Σ RSS reaches a new peak (a hook for subclasses)."""

    def __enter__(self) -> ProcessSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.end_io = {p.pid: self._io(p) for p in self.procs}
        self.end_cpu = {p.pid: self._cpu(p) for p in self.procs}

    def rss_now(self) -> int:
        """Σ RSS of the sampled processes now (a gone process counts 0)."""
        return sum(self._rss(p) for p in self.procs)

    def rss_growth(self) -> int:
        return max(self.peak_rss[p] - self.base_rss[p] for p in self.peak_rss)

    def cpu_delta(self) -> tuple[float, float]:
        """(user, system) CPU seconds the sampled processes used, threads included."""
        user = sum(self.end_cpu[p][0] - self.base_cpu[p][0] for p in self.end_cpu)
        system = sum(self.end_cpu[p][1] - self.base_cpu[p][1] for p in self.end_cpu)
        return user, system

    def io_delta(self, key: str) -> int:
        return sum(self.end_io[p].get(key, 0) - self.base_io[p].get(key, 0) for p in self.end_io)


def cpu_per_gib(sampler: ProcessSampler, size: int) -> Metrics:
    """Server CPU seconds (user, system) per GiB received: what an upload costs the server,
    much less sensitive than MiB/s to other load on the machine."""
    user, system = sampler.cpu_delta()
    return {"user_s_per_gib": user / (size / (1 << 30)), "sys_s_per_gib": system / (size / (1 << 30))}


def post_body(port: int, size: int, block: memoryview, path: str = "/upload", *,
              content_type: str = "application/octet-stream", prefix: bytes = b"",
              suffix: bytes = b"", tls: ssl.SSLContext | None = None, headers: str = "",
              method: str = "POST") -> tuple[float, float, bytes]:
    """POST ``prefix`` + ``size`` bytes from ``block`` (repeated) + ``suffix`` with Content-Length.

    ``prefix``/``suffix`` frame a multipart body (see ``multipart_frame``); the body is
    streamed, never built in memory. With ``tls`` the socket is wrapped in it (the handshake
    happens before the clock starts). ``headers``: more field lines, each ending in CRLF.

    Returns:
        (seconds to send the body, seconds from the last byte sent to the full response, response body).
    """
    with socket.create_connection((HOST, port), timeout=600) as raw, \
            (tls.wrap_socket(raw, server_hostname=HOST) if tls else contextlib.nullcontext(raw)) as sock:
        length = len(prefix) + size + len(suffix)
        head = (f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: {content_type}\r\n"
                f"Content-Length: {length}\r\n{headers}Connection: close\r\n\r\n").encode()
        start = time.perf_counter()
        sock.sendall(head + prefix)
        remaining = size
        while remaining > 0:
            n = min(remaining, len(block))
            sock.sendall(block[:n])
            remaining -= n
        if suffix:
            sock.sendall(suffix)
        sent = time.perf_counter()
        response = bytearray()
        while len(response) < 1 << 20:  # bounded; the apps answer a few bytes and close
            data = sock.recv(65536)
            if not data:
                break
            response += data
        done = time.perf_counter()
    return sent - start, done - sent, bytes(response)


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*(B|KiB|MiB|GiB|K|M|G)?\s*", text)
    if not m:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected e.g. 1GiB, 512MiB, 1048576")
    unit = {"B": 1, None: 1, "K": 1 << 10, "KiB": 1 << 10, "M": 1 << 20, "MiB": 1 << 20,
            "G": 1 << 30, "GiB": 1 << 30}[m.group(2)]
    return int(m.group(1)) * unit


UPLOAD_MOVE = "prefork move_to"  # the contender the raw-upload targets count (saves with a link)
UPLOAD_NATIVE = "prefork native move_to"
UPLOAD_COPY = "prefork copy"  # the same WSGI copy app as the peers: the target against granian
UPLOAD_GRANIAN = "granian copy"
CEILING = "ceiling (raw socket)"


def upload_contenders(ws: Workspace) -> list[ServerSpec]:
    return [prefork_server(ws, "upload", threads=4, name=UPLOAD_COPY),
            granian_server("upload", name=UPLOAD_GRANIAN),
            prefork_server(ws, "upload_move", threads=4, name=UPLOAD_MOVE),
            ceiling_server(ws),
            prefork_server(ws, "native_app", threads=4, name=UPLOAD_NATIVE),
            gunicorn_server("upload", worker_class="sync", name="gunicorn sync")]


def scenario_upload(args: argparse.Namespace, ws: Workspace) -> list[SummaryRow]:
    size = args.size
    block = memoryview(os.urandom(4 * MiB))
    failures: list[str] = []

    def measure(server: RunningServer) -> Measurement:
        with ProcessSampler(server.workers()) as sampler:
            send_s, wait_s, response = post_body(server.port, size, block)
        status_line = response.split(b"\r\n", 1)[0]
        body = response.partition(b"\r\n\r\n")[2].strip()
        ok = b" 200 " in status_line + b" " and body == str(size).encode()
        if not ok:
            failures.append(f"{server.name}: {status_line!r} body {body[:200]!r} (log {server.log}):\n"
                            f"{log_tail(server.log, 15)}")
        total = send_s + wait_s
        return {"upload": {"mib_s": size / MiB / total, "send_s": send_s, "after_send_s": wait_s,
                           "rss_growth_mib": sampler.rss_growth() / MiB,
                           "disk_write_per_byte": sampler.io_delta("write_bytes") / size,
                           "write_calls_per_mib": sampler.io_delta("syscw") / (size / MiB),
                           **cpu_per_gib(sampler, size), "ok": float(ok)}}

    contenders = upload_contenders(ws)
    print(f"upload: {size / MiB:,.0f} MiB x {args.runs} runs x {len(contenders)} servers", file=sys.stderr)
    results = alternate(contenders, args.runs, ws, measure)
    label = f"POST {size / MiB:,.0f} MiB to a file"
    ceiling = CEILING
    rows = ratio_rows(results, ["upload"], "mib_s", "MiB/s", [UPLOAD_COPY], [UPLOAD_GRANIAN, "gunicorn sync"],
                      lambda v: label)
    rows += ratio_rows(results, ["upload"], "mib_s", "MiB/s", [UPLOAD_MOVE, UPLOAD_NATIVE],
                       [ceiling, UPLOAD_GRANIAN], lambda v: label)
    print_table(f"Upload throughput, Content-Length body (median of {args.runs}; higher is better)", rows,
                note="MiB/s = body size / (first byte sent .. response received). `prefork move_to` (WSGI "
                     "`wsgi.input.move_to(path)`) and `prefork native move_to` (`prefork.App` route, "
                     "`request.body.move_to(path)`) link prefork's staged body into place; `prefork copy`, "
                     "`granian copy` (`--interface wsgi --workers 2 --http 1`) and gunicorn sync run the same "
                     "WSGI app, reading wsgi.input in 1 MiB pieces into a file in the same filesystem. Every "
                     "app deletes the file before answering. The ceiling is a raw-socket receiver "
                     "(recv_into + write) fed by the same Python sendall client. disk_write_per_byte = "
                     "/proc/PID/io write_bytes of the serving processes / body size.")
    print_medians(results, ["upload"], ["mib_s", "send_s", "after_send_s", "rss_growth_mib",
                                        "disk_write_per_byte", "write_calls_per_mib", "user_s_per_gib",
                                        "sys_s_per_gib", "ok"])
    if failures:
        print("**Failed uploads:**\n")
        for text in failures[:6]:
            print("```\n" + text.strip() + "\n```")
    save_json(args, "upload", results)

    def med(name: str, metric: str = "mib_s") -> float:
        return median(results, name, "upload", metric)

    label = f"raw {size / MiB:,.0f} MiB upload saved to a file"
    return [target_ratio(f"{label} (WSGI app copies wsgi.input)", med(UPLOAD_COPY), med(UPLOAD_GRANIAN), "MiB/s",
                         UPLOAD_GRANIAN, 1.0),
            target_ratio(f"{label} (WSGI move_to)", med(UPLOAD_MOVE), med(ceiling), "MiB/s", "ceiling", 0.9),
            target_ratio(f"{label} (native move_to)", med(UPLOAD_NATIVE), med(ceiling), "MiB/s", "ceiling", 0.9),
            report_ratio(f"{label} (WSGI app copies wsgi.input)", med(UPLOAD_COPY), med("gunicorn sync"), "MiB/s",
                         "gunicorn sync"),
            SummaryRow(f"{label}: disk bytes written per uploaded byte (WSGI move_to)",
                       fmt(med(UPLOAD_MOVE, "disk_write_per_byte")),
                       f"{fmt(med(ceiling, 'disk_write_per_byte'))} (ceiling), "
                       f"{fmt(med(UPLOAD_GRANIAN, 'disk_write_per_byte'))} ({UPLOAD_GRANIAN})", "—", "report", None)]


# --------------------------------------------------------------------------- scenario: multipart


MULTIPART_NATIVE = "prefork native"
MULTIPART_NO_SUM = "prefork native, checksum none"
# The peers and the ceiling compute no checksum: the targets compare prefork
# doing the same work ([uploads] checksum = none); the default (SHA-256 of each
# file on the way in) is reported beside it.
NO_CHECKSUM = {"uploads": {"checksum": "none"}}


FLASK = "gunicorn sync + Flask"
GRANIAN_FLASK = "granian + Flask"
PREFORK_FLASK = "prefork + Flask"


def flask_upload_app() -> str:
    """The Flask app prefork serves: ``flask_upload_staged`` (Flask on prefork's staged-upload adapter,
    ``save()`` a rename) once scripts/bench_apps.py has it, else the plain ``flask_upload``."""
    import bench_apps

    return "flask_upload_staged" if hasattr(bench_apps, "flask_upload_staged") else "flask_upload"


def flask_note(app: str) -> str:
    if app == "flask_upload_staged":
        return ("prefork + Flask serves `bench_apps:flask_upload_staged`: the same view on prefork's "
                "staged-upload adapter (the part staged while it streamed in; `save()` is a rename).")
    return ("prefork + Flask serves the plain `bench_apps:flask_upload` (Werkzeug re-parses prefork's staged "
            "body: `flask_upload_staged`, on prefork's staged-upload adapter, is not in bench_apps.py yet).")


def multipart_contenders(ws: Workspace) -> list[ServerSpec]:
    """prefork + Flask and granian + Flask (issue 14's pair), prefork's native app with and without its
    checksum, gunicorn + Flask."""
    return [prefork_server(ws, flask_upload_app(), threads=4, name=PREFORK_FLASK, overrides=NO_CHECKSUM),
            granian_server("flask_upload", name=GRANIAN_FLASK),
            prefork_server(ws, "native_app", threads=4, name=MULTIPART_NATIVE),
            prefork_server(ws, "native_app", threads=4, name=MULTIPART_NO_SUM, overrides=NO_CHECKSUM),
            gunicorn_server("flask_upload", worker_class="sync", name=FLASK)]
BOUNDARY = "----prefork-bench-4f0c1d9a7e"


def multipart_frame(field_name: str = "upload", filename: str = "data.bin") -> tuple[str, bytes, bytes]:
    """(Content-Type, what precedes the file bytes, what follows them) of a one-file form."""
    prefix = (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"note\"\r\n\r\nbenchmark\r\n"
              f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{field_name}\"; "
              f"filename=\"{filename}\"\r\nContent-Type: application/octet-stream\r\n\r\n").encode()
    suffix = f"\r\n--{BOUNDARY}--\r\n".encode()
    return f"multipart/form-data; boundary={BOUNDARY}", prefix, suffix


def post_multipart(port: int, size: int, block: memoryview) -> tuple[float, float, bytes]:
    """POST a form whose file part is ``size`` bytes, streamed from ``block``, to ``/form``."""
    content_type, prefix, suffix = multipart_frame()
    return post_body(port, size, block, "/form", content_type=content_type, prefix=prefix, suffix=suffix)


def check_answer(server: RunningServer, response: bytes, expected: int, failures: list[str]) -> bool:
    """The upload apps (and the ceiling) answer ``b"%d\\n" % bytes_saved`` with 200."""
    status_line = response.split(b"\r\n", 1)[0]
    body = response.partition(b"\r\n\r\n")[2].strip()
    ok = b" 200 " in status_line + b" " and body == str(expected).encode()
    if not ok:
        failures.append(f"{server.name}: {status_line!r} body {body[:200]!r}, expected {expected} "
                        f"(log {server.log}):\n{log_tail(server.log, 15)}")
    return ok


def print_failures(failures: list[str]) -> None:
    if failures:
        print(f"**Failed uploads ({len(failures)})** — first ones:\n")
        for text in failures[:6]:
            print("```\n" + text.strip() + "\n```")


def scenario_multipart(args: argparse.Namespace, ws: Workspace) -> list[SummaryRow]:
    size = args.size
    block = memoryview(os.urandom(4 * MiB))
    _, prefix, suffix = multipart_frame()
    failures: list[str] = []

    def measure(server: RunningServer) -> Measurement:
        with ProcessSampler(server.workers()) as sampler:
            send_s, wait_s, response = post_multipart(server.port, size, block)
        # The ceiling does not parse the form: it saves (and counts) the whole body.
        expected = len(prefix) + size + len(suffix) if server.name == CEILING else size
        ok = check_answer(server, response, expected, failures)
        return {"multipart": {"mib_s": size / MiB / (send_s + wait_s), "send_s": send_s, "after_send_s": wait_s,
                              "rss_growth_mib": sampler.rss_growth() / MiB,
                              "disk_write_per_byte": sampler.io_delta("write_bytes") / size,
                              "read_bytes_per_byte": sampler.io_delta("read_bytes") / size,
                              **cpu_per_gib(sampler, size), "ok": float(ok)}}

    contenders = [*multipart_contenders(ws), ceiling_server(ws)]
    flask_app = flask_upload_app()
    print(f"multipart: {size / MiB:,.0f} MiB x {args.runs} runs x {len(contenders)} servers", file=sys.stderr)
    results = alternate(contenders, args.runs, ws, measure)
    label = f"multipart {size / MiB:,.0f} MiB, file saved"
    rows = ratio_rows(results, ["multipart"], "mib_s", "MiB/s", [PREFORK_FLASK], [GRANIAN_FLASK, FLASK],
                      lambda v: label)
    rows += ratio_rows(results, ["multipart"], "mib_s", "MiB/s", [MULTIPART_NO_SUM, MULTIPART_NATIVE],
                       [CEILING, GRANIAN_FLASK, FLASK], lambda v: label)
    print_table(f"Multipart upload, one file part saved (median of {args.runs}; higher is better)", rows,
                note="The same streaming client (a raw socket: boundary, part headers, the file bytes from a "
                     "preallocated 4 MiB buffer, the closing delimiter; Content-Length) for every server. "
                     "prefork: a `prefork.App` route doing `request.files[\"upload\"].save(path)` (the part "
                     "was staged in its own file while it streamed in; save is a link). granian and gunicorn: Flask's "
                     "`request.files[\"upload\"].save(path)` (Werkzeug spools the part to a temporary file, "
                     f"save copies it). {flask_note(flask_app)} The ceiling saves the raw body without parsing "
                     "it. disk_write_per_byte = write_bytes of the serving processes (/proc/PID/io) / file size.")
    print_medians(results, ["multipart"], ["mib_s", "send_s", "after_send_s", "rss_growth_mib",
                                           "disk_write_per_byte", "read_bytes_per_byte", "user_s_per_gib",
                                           "sys_s_per_gib", "ok"])
    print_failures(failures)
    save_json(args, "multipart", results)

    def med(name: str, metric: str = "mib_s") -> float:
        return median(results, name, "multipart", metric)

    disk, native_disk = med(PREFORK_FLASK, "disk_write_per_byte"), med(MULTIPART_NATIVE, "disk_write_per_byte")
    hashed = f"{label}, SHA-256 on the way in (default)"
    flask = f"Flask {size / MiB:,.0f} MiB multipart, request.files[...].save() ({flask_app} on prefork)"
    return [target_ratio(flask, med(PREFORK_FLASK), med(GRANIAN_FLASK), "MiB/s", GRANIAN_FLASK, 3.0),
            SummaryRow(f"{flask}: disk bytes written per uploaded byte", fmt(disk),
                       f"{fmt(med(GRANIAN_FLASK, 'disk_write_per_byte'))} ({GRANIAN_FLASK})", "—", "= 1.0",
                       None if disk != disk else abs(disk - 1.0) <= 0.02),
            report_ratio(flask, med(PREFORK_FLASK), med(FLASK), "MiB/s", FLASK),
            target_ratio(f"{label}, prefork native, checksum none", med(MULTIPART_NO_SUM), med(CEILING), "MiB/s",
                         "ceiling", 0.8),
            report_ratio(f"{label}, prefork native, checksum none", med(MULTIPART_NO_SUM), med(GRANIAN_FLASK),
                         "MiB/s", GRANIAN_FLASK),
            reported(target_ratio(hashed, med(MULTIPART_NATIVE), med(CEILING), "MiB/s", "ceiling", 0.8)),
            SummaryRow(f"{label}, prefork native: disk bytes written per uploaded byte", fmt(native_disk),
                       "—", "—", "= 1.0", None if native_disk != native_disk else abs(native_disk - 1.0) <= 0.02)]


# --------------------------------------------------------------------------- scenario: bigupload


def scenario_bigupload(args: argparse.Namespace, ws: Workspace) -> list[SummaryRow]:
    """Worker RSS while one very large body streams in, raw and multipart, to the native app."""
    size = 256 * MiB if args.quick else 4 << 30
    block = memoryview(os.urandom(4 * MiB))
    failures: list[str] = []

    def measure(server: RunningServer) -> Measurement:
        out: Measurement = {}
        for variant, post in (("raw", lambda: post_body(server.port, size, block, "/upload")),
                              ("multipart", lambda: post_multipart(server.port, size, block))):
            with ProcessSampler(server.workers(), interval=0.01) as sampler:
                send_s, wait_s, response = post()
            ok = check_answer(server, response, size, failures)
            out[variant] = {"rss_growth_mib": sampler.rss_growth() / MiB,
                            "mib_s": size / MiB / (send_s + wait_s),
                            "disk_write_per_byte": sampler.io_delta("write_bytes") / size, "ok": float(ok)}
        return out

    contenders = [prefork_server(ws, "native_app", threads=4, name=MULTIPART_NATIVE)]
    print(f"bigupload: {size / MiB:,.0f} MiB raw + multipart x {args.runs} runs", file=sys.stderr)
    results = alternate(contenders, args.runs, ws, measure)
    print_medians(results, ["raw", "multipart"], ["rss_growth_mib", "mib_s", "disk_write_per_byte", "ok"])
    print_failures(failures)
    save_json(args, "bigupload", results)
    label = f"worker RSS growth, {size / MiB:,.0f} MiB upload"
    rows = []
    for variant in ("raw", "multipart"):
        values = [m["rss_growth_mib"] for m in results[MULTIPART_NATIVE].get(variant, [])]
        worst = max(values) if values else float("nan")
        rows.append(target_max(f"{label} ({variant}; max over {len(values)} runs)", worst, "MiB", 16.0))
    return rows


# --------------------------------------------------------------------------- scenario: concurrent


def scenario_concurrent(args: argparse.Namespace, ws: Workspace) -> list[SummaryRow]:
    """20 multipart uploads at once: throughput, and the RAM all workers together use meanwhile."""
    clients, each = 20, (8 * MiB if args.quick else 50 * MiB)
    block = memoryview(os.urandom(4 * MiB))
    failures: list[str] = []
    budget_mib = 256.0  # conf/server.ini [staging] memory_budget, which the benchmark does not override

    def measure(server: RunningServer) -> Measurement:
        answers: list[bytes | None] = [None] * clients

        def one(i: int) -> None:
            try:
                answers[i] = post_multipart(server.port, each, block)[2]
            except OSError as exc:
                answers[i] = f"client error: {exc!r}".encode()

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(clients)]
        with ProcessSampler(server.workers(), interval=0.01) as sampler:
            start = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join(900)
            elapsed = time.perf_counter() - start
        ok = sum(check_answer(server, a or b"", each, failures) for a in answers)
        return {"concurrent": {"mib_s": clients * each / MiB / elapsed, "seconds": elapsed,
                               "rss_sum_peak_mib": sampler.peak_sum / MiB,
                               "rss_sum_growth_mib": (sampler.peak_sum - sampler.base_sum) / MiB,
                               "disk_write_per_byte": sampler.io_delta("write_bytes") / (clients * each),
                               **cpu_per_gib(sampler, clients * each), "ok": float(ok)}}

    contenders = multipart_contenders(ws)
    flask_app = flask_upload_app()
    print(f"concurrent: {clients} x {each / MiB:,.0f} MiB x {args.runs} runs x {len(contenders)} servers",
          file=sys.stderr)
    results = alternate(contenders, args.runs, ws, measure)
    label = f"{clients} concurrent {each / MiB:,.0f} MiB multipart uploads"
    rows = ratio_rows(results, ["concurrent"], "mib_s", "MiB/s", [PREFORK_FLASK, MULTIPART_NO_SUM, MULTIPART_NATIVE],
                      [GRANIAN_FLASK, FLASK], lambda v: label)
    print_table(f"Concurrent uploads (median of {args.runs}; higher is better)", rows,
                note=f"{clients} client threads start together, each streaming one form (as in `multipart`); "
                     "MiB/s = all file bytes / wall time until the last answer. rss_sum_peak_mib = the peak of "
                     "the sum of the serving processes' RSS, sampled every 10 ms. " + flask_note(flask_app))
    print_medians(results, ["concurrent"], ["mib_s", "seconds", "rss_sum_peak_mib", "rss_sum_growth_mib",
                                            "disk_write_per_byte", "user_s_per_gib", "sys_s_per_gib", "ok"])
    print_failures(failures)
    save_json(args, "concurrent", results)

    def med(name: str, metric: str) -> float:
        return median(results, name, "concurrent", metric)

    worst_rss = max((m["rss_sum_peak_mib"] for name in (MULTIPART_NATIVE, MULTIPART_NO_SUM)
                     for m in results[name].get("concurrent", [])), default=float("nan"))
    return [target_max(f"{label}: Σ worker RSS peak, prefork native (max over runs)", worst_rss, "MiB",
                       budget_mib + 32, GRANIAN_FLASK, med(GRANIAN_FLASK, "rss_sum_peak_mib")),
            report_ratio(f"{label}, Flask ({flask_app} on prefork): throughput", med(PREFORK_FLASK, "mib_s"),
                         med(GRANIAN_FLASK, "mib_s"), "MiB/s", GRANIAN_FLASK),
            report_ratio(f"{label}, prefork native, checksum none: throughput", med(MULTIPART_NO_SUM, "mib_s"),
                         med(GRANIAN_FLASK, "mib_s"), "MiB/s", GRANIAN_FLASK),
            report_ratio(f"{label}, prefork native, checksum none: throughput", med(MULTIPART_NO_SUM, "mib_s"),
                         med(FLASK, "mib_s"), "MiB/s", FLASK)]


# --------------------------------------------------------------------------- scenario: slow


SLOW = " + slow clients"  # suffix of the contenders measured under attack
CALM = " undisturbed"


def slow_contenders(ws: Workspace) -> tuple[list[ServerSpec], dict[bool, tuple[str, str]]]:
    """Per access-log mode: prefork and granian, each undisturbed and under attack; and, per mode,
    the base names (prefork, granian) that ``SLOW`` / ``CALM`` complete."""
    specs, names = [], {}
    for on in ws.log_modes:
        label = log_label(on)
        prefork, granian = f"prefork, {label}", f"granian wsgi 2w, {label}"
        names[on] = (prefork, granian)
        for suffix in (CALM, SLOW):
            specs.append(prefork_server(ws, "hello", threads=4, name=prefork + suffix, access_log=on))
            specs.append(granian_server("hello", access_log=on, name=granian + suffix))
    return specs, names


def scenario_slow(args: argparse.Namespace, ws: Workspace) -> list[SummaryRow]:
    """wrk hello req/s with 500 slowloris + 50 slow-body sockets held open, vs none; prefork and granian."""
    from bench_slow_clients import SlowClients

    loris, bodies, conns = (500, 50, 100)
    raw_errors: list[str] = []

    def measure(server: RunningServer) -> Measurement:
        if not args.quick:
            run_wrk(server.port, 10, 1, False)  # warm-up, not recorded (as in hello)
        if server.name.endswith(CALM):
            metrics, text = run_wrk(server.port, conns, args.duration, False)
            return {"hello": metrics}
        with SlowClients(server.port, slowloris=loris, slow_body=bodies) as slow:
            slow.wait_connected()
            time.sleep(1.0 if args.quick else 2.0)  # every slow socket has sent something
            before = slow.stats()
            metrics, text = run_wrk(server.port, conns, args.duration, False)
            after = slow.stats()
            if slow.first_answers:
                raw_errors.append(f"{server.name}: answers to slow clients: {slow.first_answers}")
        errs = sum(v for k, v in metrics.items() if k.startswith("err_") or k == "non2xx")
        if errs:
            raw_errors.append(f"{server.name} (log {server.log}):\n{text}")
        return {"hello": {**metrics, "slow_open_start": before["slow_open"], **after}}

    specs, names = slow_contenders(ws)
    print(f"slow: {loris} slowloris + {bodies} slow-body sockets, wrk c{conns} {args.duration:g}s x "
          f"{args.runs} runs x {len(specs)} servers", file=sys.stderr)
    results = alternate(specs, args.runs, ws, measure)
    rows = []
    for prefork, granian in names.values():
        rows += ratio_rows(results, ["hello"], "req_s", "req/s", [prefork + SLOW, prefork + CALM],
                           [granian + SLOW, granian + CALM], lambda v: f"hello c{conns}")
    print_table(f"hello under {loris} slowloris + {bodies} slow-body clients, req/s (median of {args.runs})", rows,
                note="Each server is measured undisturbed and, on a fresh start, with the slow clients held "
                     "open (scripts/bench_slow_clients.py; a socket the server closes is replaced). prefork: "
                     "conf/server.ini, 2 workers x 4 threads; granian: `--interface wsgi --workers 2 --http 1`.")
    print_medians(results, ["hello"], ["req_s", "p99_ms", "err_read", "err_timeout", "slow_open_start",
                                       "slow_open", "slow_open_original", "slow_closed_loris",
                                       "slow_closed_body", "slow_connect_errors", "slow_kib_sent"])
    if raw_errors:
        print("**Notes from the slow runs** — first ones:\n")
        for text in raw_errors[:6]:
            print("```\n" + text.strip() + "\n```")
    save_json(args, "slow", results)
    return slow_summary(results, names, f"hello c{conns} with {loris} slowloris + {bodies} slow-body clients",
                        loris + bodies)


def slow_summary(results: Results, names: dict[bool, tuple[str, str]], label: str,
                 slow_total: int) -> list[SummaryRow]:
    """Per access-log mode: prefork keeps ≥ 90 % of its own req/s, and serves at least granian's under attack."""
    def med(name: str) -> float:
        return median(results, name, "hello", "req_s")

    rows = []
    for on, (prefork, granian) in names.items():
        lbl = log_label(on)
        kept_peer = med(granian + SLOW) / med(granian + CALM) if med(granian + CALM) else float("nan")
        rows.append(target_ratio(f"{label}, {lbl}: req/s kept", med(prefork + SLOW), med(prefork + CALM), "req/s",
                                 f"undisturbed; granian keeps {kept_peer:.0%}", 0.9))
        rows.append(target_ratio(f"{label}, {lbl}: req/s under attack", med(prefork + SLOW), med(granian + SLOW),
                                 "req/s", "granian", 1.0))
        runs_on = results[prefork + SLOW].get("hello", [])
        held = min((m["slow_open_original"] for m in runs_on), default=float("nan"))
        rows.append(SummaryRow(f"slow clients still open (never closed) when wrk ended, worst run, {lbl}", fmt(held),
                               f"of {slow_total}", "—", f"= {slow_total}",
                               None if held != held else held == slow_total))
    return rows


# --------------------------------------------------------------------------- scenario: ws


WS_VARIANTS = [(1024, 1), (1024, 50), (MiB, 1)]  # (message size, connections)
WS_PIPELINE = {1024: 16, MiB: 2}  # messages each connection sends before it reads their echoes
WS_CLIENT_PROCS = 2  # raw-client processes when there are several connections
# The websockets asyncio client costs ~120 µs of CPU per 1 KiB message here: one process for 50
# connections is itself the bottleneck, so it gets one process per this many connections.
WS_LIB_CONNS_PER_PROC = 10
WS_CLIENTS = ("raw", "websockets")
WS_APP = "tests.apps.ws_echo:app"


def ws_variant(size: int, conns: int) -> str:
    return f"{'1 KiB' if size == 1024 else '1 MiB'} c{conns}"


def ws_contenders(ws: Workspace) -> list[ServerSpec]:
    overrides = {"websocket": {"ping_interval": "60m"}}  # no pings inside a run (the peer has them off)

    def prefork(workers: int) -> ServerSpec:
        def argv(port: int, log: Path) -> list[str]:
            cfg = prefork_config(ws, log, overrides)
            return [sys.executable, "-m", "prefork.cli", "-c", str(cfg), "-b", f"{HOST}:{port}",
                    "-w", str(workers), WS_APP]

        return ServerSpec(f"prefork {workers}w", argv)

    def peer(port: int, log: Path) -> list[str]:
        return [sys.executable, str(SCRIPTS / "bench_ws_peer.py"), "--port", str(port)]

    return [prefork(2), ServerSpec("websockets (1 process)", peer), prefork(1)]


def ws_frame(payload: bytes, opcode: int = 0x2) -> bytes:
    """A masked client frame (RFC 6455 §5.2); the key is fixed, which is allowed for a benchmark."""
    n, key = len(payload), b"\x12\x34\x56\x78"
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 1 << 16:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes((key * (n // 4 + 1))[:n], "big")).to_bytes(n, "big")
    return head + key + masked


def ws_echo_size(size: int) -> int:
    """Bytes of the server's (unmasked) echo frame of a ``size``-byte message."""
    return size + (2 if size < 126 else 4 if size < 1 << 16 else 10)


def ws_open(port: int) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(f"GET /echo HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(4096)
        if not data:
            raise ConnectionError(f"closed during the handshake: {head!r}")
        head += data
    if not head.startswith(b"HTTP/1.1 101") or not head.endswith(b"\r\n\r\n"):
        raise ConnectionError(f"handshake failed: {head[:300]!r}")
    return sock


def ws_verify(port: int) -> bool:
    """One text message echoed back byte for byte."""
    payload = os.urandom(512).hex().encode()
    with ws_open(port) as sock:
        sock.sendall(ws_frame(payload, opcode=0x1))
        expected = bytes([0x81, 126]) + len(payload).to_bytes(2, "big") + payload
        got = b""
        while len(got) < len(expected):
            data = sock.recv(65536)
            if not data:
                break
            got += data
    return got == expected


def ws_client_proc(port: int, conns: int, size: int, pipeline: int, duration: float) -> tuple[int, float, float]:
    """Echo load from one process: ``conns`` connections, each sending ``pipeline`` messages, then
    reading their echoes, in a loop for ``duration`` seconds.

    Returns:
        (messages echoed, seconds, CPU seconds this process used meanwhile).
    """
    import selectors

    socks = [ws_open(port) for _ in range(conns)]
    batch = ws_frame(os.urandom(size)) * pipeline
    expect = ws_echo_size(size) * pipeline
    sel = selectors.DefaultSelector()
    both = selectors.EVENT_READ | selectors.EVENT_WRITE
    for sock in socks:
        sock.setblocking(False)
        sel.register(sock, both, [memoryview(batch), expect])
    view = memoryview(bytearray(4 * MiB))
    done = 0
    start, cpu = time.perf_counter(), time.process_time()
    end = start + duration
    try:
        while (now := time.perf_counter()) < end:
            for key, mask in sel.select(end - now):
                sock, state = key.fileobj, key.data
                if mask & selectors.EVENT_WRITE and state[0]:
                    with contextlib.suppress(BlockingIOError):
                        state[0] = state[0][sock.send(state[0]):]  # type: ignore[attr-defined]
                    if not state[0]:
                        sel.modify(sock, selectors.EVENT_READ, state)
                if mask & selectors.EVENT_READ:
                    try:
                        n = sock.recv_into(view)  # type: ignore[attr-defined]
                    except BlockingIOError:
                        continue
                    if not n:
                        raise ConnectionError("the server closed a benchmark connection")
                    state[1] -= n
                    if state[1] < 0:
                        raise ConnectionError("the server sent more than the echoes")
                    if state[1] == 0:  # every echo of this batch is in: send the next one
                        done += pipeline
                        state[0], state[1] = memoryview(batch), expect
                        sel.modify(sock, both, state)
        elapsed = time.perf_counter() - start
    finally:
        sel.close()
        for sock in socks:
            sock.close()
    return done, elapsed, time.process_time() - cpu


def ws_lib_client_proc(port: int, conns: int, size: int, pipeline: int, duration: float
                       ) -> tuple[int, float, float]:
    """The same load as ``ws_client_proc`` from the ``websockets`` asyncio client (compression off):
    ``conns`` connections in one event loop, each sending ``pipeline`` messages, then awaiting their
    echoes. Returns (messages echoed, seconds, CPU seconds of this process)."""
    import asyncio

    from websockets.asyncio.client import connect

    payload = os.urandom(size)

    async def one(end: float) -> int:
        done = 0
        async with connect(f"ws://{HOST}:{port}/echo", compression=None, max_size=64 * MiB,
                           ping_interval=None) as conn:
            while time.perf_counter() < end:
                for _ in range(pipeline):
                    await conn.send(payload)
                for _ in range(pipeline):
                    if len(await conn.recv()) != size:
                        raise ConnectionError("an echo of the wrong size")
                done += pipeline
        return done

    async def main() -> tuple[int, float, float]:
        start, cpu = time.perf_counter(), time.process_time()
        counts = await asyncio.gather(*(one(start + duration) for _ in range(conns)))
        return sum(counts), time.perf_counter() - start, time.process_time() - cpu

    return asyncio.run(main())


def run_ws_clients(port: int, conns: int, size: int, duration: float, client: str = "raw") -> Metrics:
    """Echo load from several client processes: msg/s, MiB/s, and the clients' own CPU use
    (Σ over processes, and the busiest process, in % of one core)."""
    import multiprocessing

    if client == "raw":
        procs, target = min(conns, WS_CLIENT_PROCS), ws_client_proc
    else:
        procs, target = -(-conns // WS_LIB_CONNS_PER_PROC), ws_lib_client_proc
    shares = [conns // procs + (1 if i < conns % procs else 0) for i in range(procs)]
    with multiprocessing.get_context("fork").Pool(procs) as pool:
        parts = pool.starmap(target, [(port, n, size, WS_PIPELINE[size], duration) for n in shares])
    msgs_s = sum(done / elapsed for done, elapsed, _ in parts)
    cpu = [100 * cpu_s / elapsed for _, elapsed, cpu_s in parts]
    return {"msgs_s": msgs_s, "mib_s": msgs_s * size / MiB, "client_procs": float(procs),
            "client_cpu_pct": sum(cpu), "client_cpu_max_pct": max(cpu)}


def scenario_ws(args: argparse.Namespace, ws: Workspace) -> list[SummaryRow]:
    failures: list[str] = []

    def measure(server: RunningServer) -> Measurement:
        ok = ws_verify(server.port)
        if not ok:
            failures.append(f"{server.name}: wrong echo (log {server.log})")
        out: Measurement = {}
        for client in WS_CLIENTS:
            for size, conns in WS_VARIANTS:
                out[f"{client}: {ws_variant(size, conns)}"] = {
                    **run_ws_clients(server.port, conns, size, args.duration, client), "ok": float(ok)}
        return out

    contenders = ws_contenders(ws)
    print(f"ws: {len(contenders)} servers x {args.runs} runs x {len(WS_CLIENTS) * len(WS_VARIANTS)} variants of "
          f"{args.duration:g}s", file=sys.stderr)
    results = alternate(contenders, args.runs, ws, measure)
    primaries, peer = [contenders[0].name, contenders[2].name], [contenders[1].name]
    small = [f"{c}: {ws_variant(s, n)}" for c in WS_CLIENTS for s, n in WS_VARIANTS if s == 1024]
    large = [f"{c}: {ws_variant(s, n)}" for c in WS_CLIENTS for s, n in WS_VARIANTS if s == MiB]
    rows = ratio_rows(results, small, "msgs_s", "msg/s", primaries, peer, lambda v: f"echo {v}")
    rows += ratio_rows(results, large, "mib_s", "MiB/s", primaries, peer, lambda v: f"echo {v}")
    print_table(f"WebSocket echo (median of {args.runs}; higher is better)", rows,
                note=f"Binary messages, no compression, {args.duration:g}s per variant. Each connection sends "
                     f"{WS_PIPELINE[1024]} (1 KiB) or {WS_PIPELINE[MiB]} (1 MiB) messages, then reads their "
                     "echoes. Two clients: `raw` (raw sockets and selectors; c50 in "
                     f"{WS_CLIENT_PROCS} processes) and `websockets` (the library's asyncio client, compression "
                     f"off; one process per {WS_LIB_CONNS_PER_PROC} connections, since one Python process "
                     "driving 50 is itself the bottleneck). client_cpu_pct = the client processes' CPU, Σ and "
                     "busiest, in % of one core: near 100 % in the busiest means the client, not the server, set "
                     "the pace. MiB/s counts the payload one way. The `websockets` peer "
                     "(scripts/bench_ws_peer.py, asyncio, C speedups) is ONE process; prefork 2w uses two "
                     "workers, so compare it per machine and prefork 1w per process. Client and servers share "
                     "the machine's cores.")
    print_medians(results, small + large, ["msgs_s", "mib_s", "client_procs", "client_cpu_pct",
                                           "client_cpu_max_pct", "ok"])
    if failures:
        print("**Failed echo checks:**\n")
        for text in failures[:6]:
            print(f"- {text}")
    save_json(args, "ws", results)
    return ws_summary(results, contenders[0].name, contenders[1].name)


def ws_summary(results: Results, prefork: str, peer: str) -> list[SummaryRow]:
    """Issue 14's WebSocket targets, once per client: ≥ 1.5x at 1 KiB (c50 and c1), ≥ 1.0x at 1 MiB."""
    rows = []
    for client in WS_CLIENTS:
        for size, conns in WS_VARIANTS:
            variant = f"{client}: {ws_variant(size, conns)}"
            metric, unit = ("msgs_s", "msg/s") if size == 1024 else ("mib_s", "MiB/s")
            cpu = median(results, prefork, variant, "client_cpu_max_pct")
            rows.append(target_ratio(f"WebSocket echo, {ws_variant(size, conns)}, {client} client ({prefork}; "
                                     f"busiest client process {fmt(cpu)} % CPU)",
                                     median(results, prefork, variant, metric), median(results, peer, variant, metric),
                                     unit, "websockets", 1.5 if size == 1024 else 1.0))
    return rows


# --------------------------------------------------------------------------- the ceiling receiver


def ceiling_main(port: int, directory: str) -> int:
    """A minimal HTTP receiver: read the head, ``recv_into`` the body into a file, answer the count.

    Serves one connection at a time until killed (or 10,000 connections, or an hour idle).
    """
    view = memoryview(bytearray(4 * MiB))
    with socket.create_server((HOST, port), backlog=128) as srv:
        srv.settimeout(3600)
        for _ in range(10_000):
            try:
                conn, _ = srv.accept()
            except socket.timeout:
                return 0
            with conn:
                ceiling_serve(conn, view, directory)
    return 0


def read_head(sock: socket.socket) -> tuple[bytes, bytes]:
    """Read until the blank line after a message head (at most 64 KiB): (the head, the bytes after it)."""
    data = bytearray()
    while b"\r\n\r\n" not in data and len(data) < 65536:
        piece = sock.recv(65536)
        if not piece:
            break
        data += piece
    head, _, rest = bytes(data).partition(b"\r\n\r\n")
    return head, rest


def ceiling_serve(conn: socket.socket, view: memoryview, directory: str) -> None:
    """One ceiling request on ``conn`` (a plain or an ``ssl`` socket): the body goes through ``view``
    (preallocated) into a file that is deleted afterwards; the answer is its byte count."""
    conn.settimeout(600)
    raw, rest = read_head(conn)
    m = re.search(rb"(?im)^content-length:\s*(\d+)", raw)
    remaining = int(m.group(1)) if m else 0
    total = 0
    if remaining:
        path = os.path.join(directory, f"ceiling-{os.getpid()}-{threading.get_ident()}.bin")
        try:
            with open(path, "wb", buffering=0) as out:
                out.write(rest)
                total = len(rest)
                remaining -= len(rest)
                while remaining > 0:
                    n = conn.recv_into(view, min(len(view), remaining))
                    if not n:
                        break
                    out.write(view[:n])
                    total += n
                    remaining -= n
        finally:
            os.unlink(path)
    body = b"%d\n" % total
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n"
                 b"Connection: close\r\n\r\n%s" % (len(body), body))


def scenario_reload(args: argparse.Namespace, ws: Workspace) -> list[SummaryRow]:
    """Failed requests while the master reloads and workers recycle (``bench_reload``)."""
    from bench_reload import scenario_reload as run

    return run(args, ws)


def scenario_hostile(args: argparse.Namespace, ws: Workspace) -> list[SummaryRow]:
    """A pipelining flood and 10,000 idle connections vs gunicorn and granian (``bench_hostile``)."""
    from bench_hostile import scenario_hostile as run

    return run(args, ws)


# --------------------------------------------------------------------------- CLI


def save_json(args: argparse.Namespace, scenario: str, results: Results) -> None:
    if not args.json:
        return
    path = Path(args.json)
    data = json.loads(path.read_text()) if path.exists() else {}
    data[scenario] = {"date": datetime.datetime.now().astimezone().isoformat(), "command": COMMAND_LINE,
                      "results": results}
    path.write_text(json.dumps(data, indent=1))


def scenario_memory(args: argparse.Namespace, ws: Workspace) -> list[SummaryRow]:
    """Σ worker RSS growth, peak and after, for 40 concurrent 50 MiB uploads: scripts/bench_memory.py."""
    from bench_memory import scenario_memory as memory

    return memory(args, ws)


def scenario_ws_hostile(args: argparse.Namespace, ws: Workspace) -> list[SummaryRow]:
    """Worker RSS under a WebSocket ping flood and unfinished deflate messages: scripts/bench_ws_hostile.py."""
    from bench_ws_hostile import scenario_ws_hostile as run

    return run(args, ws)


def scenario_resumable(args: argparse.Namespace, ws: Workspace) -> list[SummaryRow]:
    """A resumable upload (one request, and resumed once; tuspy) vs a plain one: bench_resumable.py."""
    from bench_resumable import scenario_resumable as run

    return run(args, ws)


def scenario_streaming(args: argparse.Namespace, ws: Workspace) -> list[SummaryRow]:
    """A never-ending chunked POST read while it arrives, worker RSS: bench_streaming.py."""
    from bench_streaming import scenario_streaming as run

    return run(args, ws)


def scenario_redis_costs(args: argparse.Namespace, ws: Workspace) -> list[SummaryRow]:
    """Redis CPU per subscriber connection, and redis-py's intake with and without hiredis: bench_redis_costs.py."""
    from bench_redis_costs import scenario_redis_costs as run

    return run(args, ws)


def scenario_broadcast(args: argparse.Namespace, ws: Workspace) -> list[SummaryRow]:
    """WebSocket broadcast fan-out latency and throughput, local hub vs Redis: bench_broadcast.py."""
    from bench_broadcast import scenario_broadcast as run

    return run(args, ws)


def scenario_tls(args: argparse.Namespace, ws: Workspace) -> list[SummaryRow]:
    """HTTPS hello vs granian and gunicorn, a large upload over TLS vs plain and a TLS ceiling: bench_tls.py."""
    from bench_tls import scenario_tls as run

    return run(args, ws)


SCENARIOS: dict[str, Callable[[argparse.Namespace, Workspace], list[SummaryRow]]] = {
    "parse": scenario_parse,
    "hello": scenario_hello,
    "upload": scenario_upload,
    "multipart": scenario_multipart,
    "bigupload": scenario_bigupload,
    "concurrent": scenario_concurrent,
    "memory": scenario_memory,
    "slow": scenario_slow,
    "hostile": scenario_hostile,
    "ws": scenario_ws,
    "reload": scenario_reload,
    "ws-hostile": scenario_ws_hostile,
    "tls": scenario_tls,
    "resumable": scenario_resumable,
    "streaming": scenario_streaming,
    "broadcast": scenario_broadcast,
    "redis-costs": scenario_redis_costs,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--runs", type=int, default=None, help="runs per contender (default 3; --quick: 1)")
    common.add_argument("--duration", type=float, default=None,
                        help="seconds per load-generator run (default 5; --quick: 1)")
    common.add_argument("--size", type=parse_size, default=None, help="upload size (default 1GiB; --quick: 64MiB)")
    common.add_argument("--quick", action="store_true", help="tiny runs: a smoke test, not a measurement")
    common.add_argument("--client", choices=("wrk", "python"), default="wrk",
                        help="load generator for hello (python is the fallback when wrk is missing)")
    common.add_argument("--logdir", help="keep server logs here (default: a new /tmp/prefork-bench-* dir)")
    common.add_argument("--json", help="also merge raw per-run results into this JSON file")
    common.add_argument("--access-log", nargs="?", const="on", choices=("on", "off", "both"), default=None,
                        help="prefork's access log as conf/server.ini ships it (on), off, or both: hello and "
                             "slow measure every contender with each, granian's --access-log alongside; the "
                             "other scenarios use the first (on). Bare --access-log = on; default: off, "
                             "and both for all/perf")
    common.add_argument("--baseline", metavar="REV",
                        help="hello: also run prefork at git commit REV (a temporary worktree), "
                             "to compare a change with its parent in the same run")
    for name, help_text in [("parse", "parser micro-benchmarks (heads/s vs h11, chunked, multipart)"),
                            ("hello", "small GETs vs granian (access log on/off), gunicorn sync and gthread"),
                            ("upload", "large Content-Length upload vs granian, gunicorn sync and a raw-socket ceiling"),
                            ("multipart", "multipart upload, file saved: Flask on prefork vs granian/gunicorn + Flask; the ceiling"),
                            ("bigupload", "worker RSS growth during a 4 GiB upload (raw and multipart)"),
                            ("concurrent", "20 concurrent 50 MiB multipart uploads vs granian and gunicorn + Flask"),
                            ("memory", "Σ worker RSS, 40 concurrent 50 MiB uploads, memory_budget 64/256 MiB; "
                                       "idle RSS per worker and per keep-alive connection vs granian"),
                            ("slow", "hello req/s with 500 slowloris + 50 slow-body clients vs none, prefork and granian"),
                            ("hostile", "pipelining flood that never reads; 10,000 idle connections; vs peers"),
                            ("ws", "WebSocket echo msg/s and MiB/s vs the websockets library, raw and websockets clients"),
                            ("reload", "failed requests under keep-alive load during 16 reload signals "
                                       "and max_requests recycling, vs gunicorn gthread"),
                            ("ws-hostile", "worker RSS: WebSocket ping flood from a peer that never reads, "
                                           "unfinished deflate messages on 10 connections"),
                            ("tls", "HTTPS hello c100 (keep-alive, close) vs granian and gunicorn with TLS; "
                                    "upload over TLS vs plain TCP and a TLS ceiling, worker RSS"),
                            ("resumable", "resumable upload (one request; resumed once; tuspy) vs a plain "
                                          "upload of the same size on the same server"),
                            ("streaming", "a never-ending chunked POST read while it arrives for 60 s: "
                                          "worker RSS growth"),
                            ("broadcast", "WebSocket broadcast: one message to 2,000 clients (2 instances x 2 "
                                          "workers), throughput to 100 subscribers; local vs Redis"),
                            ("redis-costs", "Redis CPU per message by subscriber connections; redis-py intake "
                                            "with hiredis vs pure Python"),
                            ("all", "every scenario, then the summary table with targets"),
                            ("perf", "the same as all")]:
        sub.add_parser(name, parents=[common], help=help_text)
    ceiling = sub.add_parser("_ceiling", help=argparse.SUPPRESS)
    ceiling.add_argument("--port", type=int, required=True)
    ceiling.add_argument("--dir", required=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "_ceiling":
        return ceiling_main(args.port, args.dir)
    args.runs = args.runs or (1 if args.quick else 3)
    args.duration = args.duration or (1.0 if args.quick else 5.0)
    args.size = args.size or (64 * MiB if args.quick else 1 << 30)
    logdir = Path(args.logdir or tempfile.mkdtemp(prefix="prefork-bench-"))
    logdir.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="prefork-bench-scratch-"))
    if args.access_log is None:
        args.access_log = "both" if args.command in ("all", "perf") else "off"
    modes = {"on": (True,), "off": (False,), "both": (True, False)}[args.access_log]
    ws = Workspace(logdir, scratch, access_log=modes[0], log_modes=modes)
    print(f"server logs: {logdir}", file=sys.stderr)
    names = list(SCENARIOS) if args.command in ("all", "perf") else [args.command]
    summary: list[SummaryRow] = []
    try:
        for name in names:
            try:
                summary += SCENARIOS[name](args, ws)
            except Exception as exc:  # one broken scenario must not lose the others' results
                if len(names) == 1:
                    raise
                print(f"\n**scenario {name} failed: {exc!r}** (server logs: {logdir})\n", flush=True)
                summary.append(SummaryRow(f"{name}: failed ({type(exc).__name__})", "n/a", "n/a", "n/a", "—", False))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if summary:
        print_summary(summary, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
