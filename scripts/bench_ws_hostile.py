"""Hostile WebSocket peers (issue 12): the worker's RSS under a ping flood and unfinished deflate.

Strategy: two of the issue's single-connection memory attacks, against one
worker running the shipped defaults (a config that only sets the logs, so it
loads on older checkouts too) and ``tests.apps.ws_echo``. A thread samples the
worker's RSS every 10 ms while each attack runs; ``peak_growth_mib`` is the
highest RSS minus the idle worker's, ``after_growth_mib`` the RSS once the
attack is over (its connections still open, so what they hold stays held).
Each attack gets a server of its own.

- ``ping-flood``: one connection with a small receive window sends 125-byte
  pings in 1 MiB writes and never reads (issue: 400 MB took a worker from 23
  to 322 MiB). Reported: MiB of pings sent before the server stopped taking
  them, and whether it logged a close with 1008. Target: growth within
  ``send_buffer`` (16 MiB) + 32 MiB.
- ``deflate-15MiB`` / ``deflate-64MiB``: 10 connections each send the first
  frame of a permessage-deflate message that inflates to 15 MiB (under the
  16 MiB ``max_message_size``: only ``inflate_budget`` can stop them) or 64 MiB
  (the issue's case: 0.6 MB in all, ~615 MiB held), and never finish it.
  Reported: how many were refused with 1009. Target: growth within
  ``inflate_budget`` (64 MiB) + 32 MiB.

As a scenario: ``python scripts/bench.py ws-hostile [--runs N] [--quick]``.
Standalone, against this tree and another checkout (the "before" figures)::

    python scripts/bench_ws_hostile.py --before /work/main
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import tempfile
import threading
import time
import zlib
from pathlib import Path

import bench
from bench import HOST, REPO, MiB, Measurement, RunningServer, ServerSpec, SummaryRow, Workspace

WS_APP = "tests.apps.ws_echo:app"
FLOOD_MIB = (400, 64)  # MiB of pings: full run, --quick
CONNECTIONS = 10
DEFLATE_SIZES = (15, 64)  # MiB inflated per unfinished message
SEND_BUFFER_MIB, INFLATE_BUDGET_MIB, SLACK_MIB = 16, 64, 32  # shipped defaults, and the allowance
METRICS = ["peak_growth_mib", "after_growth_mib", "sent_mib", "closed_1008", "refused", "seconds"]


class Peak:
    """The peak RSS of one process, sampled every 10 ms in a thread."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.proc = psutil.Process(pid)
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            try:
                self.peak = max(self.peak, self.proc.memory_info().rss)
            except Exception:  # the process is gone
                return

    def growth_mib(self) -> tuple[float, float]:
        """(peak growth, growth now) in MiB."""
        return (self.peak - self.base) / MiB, (self.proc.memory_info().rss - self.base) / MiB

    def __enter__(self) -> Peak:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    """A masked client frame (fixed key: allowed for a benchmark)."""
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    return bytes([b0]) + bench.ws_frame(payload)[1:]


def ws_open(port: int, *, extensions: str = "", rcvbuf: int = 0) -> socket.socket:
    """A raw client after the handshake (``rcvbuf`` set before connecting: a small window)."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(20)
    sock.connect((HOST, port))
    ext = f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions else ""
    sock.sendall(f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{ext}\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(1)  # byte by byte: frames may follow the head
        if not data:
            raise ConnectionError(f"closed during the handshake: {head!r}")
        head += data
    if not head.startswith(b"HTTP/1.1 101"):
        raise ConnectionError(f"handshake failed: {head[:300]!r}")
    return sock


def logged(server: RunningServer, text: str) -> float:
    """1.0 if the server's error log has ``text`` (it waits up to 2 s for the line), else 0.0."""
    deadline = time.monotonic() + 2
    while time.monotonic() < deadline:
        if text in server.log.read_text(errors="replace"):
            return 1.0
        time.sleep(0.1)
    return 0.0


def ping_flood(server: RunningServer, flood_mib: int) -> dict[str, float]:
    (pid,) = server.workers()
    sock = ws_open(server.port, rcvbuf=32 * 1024)
    block = b"".join(frame(0x9, os.urandom(125)) for _ in range(8192))  # 1 MiB of pings
    sent, started = 0, time.monotonic()
    with Peak(pid) as peak:
        try:
            while sent < flood_mib * MiB and time.monotonic() - started < 120:
                sock.sendall(block)
                sent += len(block)
        except OSError:  # the server gave up on us
            pass
        seconds = time.monotonic() - started
        growth, after = peak.growth_mib()
    sock.close()  # its close frame may be lost: the server resets a connection it gave up on
    return {"peak_growth_mib": growth, "after_growth_mib": after, "sent_mib": sent / MiB,
            "closed_1008": logged(server, "send buffer over"), "seconds": seconds}


def unfinished_deflate(server: RunningServer, each_mib: int) -> dict[str, float]:
    (pid,) = server.workers()
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    start = frame(0x2, comp.compress(bytes(each_mib * MiB)) + comp.flush(zlib.Z_SYNC_FLUSH), fin=False, rsv1=True)
    socks: list[socket.socket] = []
    refused, started = 0, time.monotonic()
    try:
        with Peak(pid) as peak:
            for _ in range(CONNECTIONS):
                sock = ws_open(server.port, extensions="permessage-deflate")
                socks.append(sock)
                sock.sendall(start)
            for sock in socks:  # a ping answered: held; a close: refused
                sock.sendall(frame(0x9, b"held?"))
                sock.settimeout(20)
                first = sock.recv(2)
                refused += bool(first) and first[0] & 0x0F == 0x8
            seconds = time.monotonic() - started
            time.sleep(0.5)  # what is still held once the answers are in
            growth, after = peak.growth_mib()
    finally:
        for sock in socks:
            sock.close()
    return {"peak_growth_mib": growth, "after_growth_mib": after, "refused": float(refused), "seconds": seconds}


def spec(ws: Workspace, repo: Path, name: str) -> ServerSpec:
    """prefork from ``repo``, 1 worker, shipped defaults (only the logs and keep-alive pings set)."""
    def argv(port: int, log: Path) -> list[str]:
        cfg = log.with_suffix(".ini")
        cfg.write_text(f"[websocket]\nping_interval = 60m\n\n[logging]\naccess_log =\nerror_log = {log}\n")
        return [sys.executable, "-m", "prefork.cli", "-c", str(cfg), "-b", f"{HOST}:{port}", "-w", "1", WS_APP]

    return ServerSpec(name, argv, cwd=repo, env={"PYTHONPATH": str(repo)})


def variants(quick: bool) -> dict[str, tuple[str, int]]:
    flood = FLOOD_MIB[1] if quick else FLOOD_MIB[0]
    out = {f"ping-flood-{flood}MiB": ("flood", flood)}
    out.update({f"deflate-{size}MiB": ("deflate", size) for size in DEFLATE_SIZES})
    return out


def run(args: argparse.Namespace, ws: Workspace, trees: dict[str, Path]) -> bench.Results:
    """Every attack on a fresh server of every tree (``label -> checkout``), alternately."""
    plan = variants(args.quick)
    specs, attack = [], {}
    for variant, how in plan.items():
        for label, repo in trees.items():
            specs.append(spec(ws, repo, f"{label}: {variant}"))
            attack[specs[-1].name] = (variant, how)

    def measure(server: RunningServer) -> Measurement:
        variant, (kind, size) = attack[server.name]
        return {variant: ping_flood(server, size) if kind == "flood" else unfinished_deflate(server, size)}

    print(f"ws-hostile: {len(trees)} trees x {len(plan)} attacks x {args.runs} runs, a fresh server each",
          file=sys.stderr)
    results = bench.alternate(specs, args.runs, ws, measure)
    rows = [[variant, name.rpartition(": ")[0]] + [bench.fmt(bench.median(results, name, variant, m)) for m in METRICS]
            for name, (variant, _how) in attack.items()]
    bench.print_table(f"WebSocket attacks: worker RSS (median of {args.runs})", rows,
                      header=("attack", "server", *METRICS))
    bench.save_json(args, "ws-hostile", results)
    return results


def summary_rows(results: bench.Results, label: str, quick: bool) -> list[SummaryRow]:
    def worst(variant: str) -> float:
        values = [m["peak_growth_mib"] for m in results.get(f"{label}: {variant}", {}).get(variant, [])]
        return max(values) if values else float("nan")

    flood = FLOOD_MIB[1] if quick else FLOOD_MIB[0]
    rows = [bench.target_max(f"WebSocket ping flood, {flood} MiB of pings, peer never reads: worker RSS growth "
                             "(worst run)", worst(f"ping-flood-{flood}MiB"), "MiB", SEND_BUFFER_MIB + SLACK_MIB)]
    for size in DEFLATE_SIZES:
        rows.append(bench.target_max(f"WebSocket: {CONNECTIONS} unfinished deflate messages of {size} MiB: "
                                     "worker RSS growth (worst run)", worst(f"deflate-{size}MiB"), "MiB",
                                     INFLATE_BUDGET_MIB + SLACK_MIB))
    return rows


def scenario_ws_hostile(args: argparse.Namespace, ws: Workspace) -> list[SummaryRow]:
    """Worker RSS under a ping flood and unfinished compressed messages (this tree)."""
    return summary_rows(run(args, ws, {"prefork": REPO}), "prefork", args.quick)


def main(argv: list[str] | None = None) -> int:
    """Standalone: this tree, and optionally another checkout for the "before" figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--before", type=Path, help="another checkout to measure beside this one")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", help="also merge raw per-run results into this JSON file")
    args = parser.parse_args(argv)
    ws = Workspace(Path(tempfile.mkdtemp(prefix="prefork-ws-hostile-")), Path(tempfile.mkdtemp()))
    print(f"server logs: {ws.logdir}", file=sys.stderr)
    trees = {"prefork": REPO}
    if args.before:
        trees[f"prefork @ {args.before}"] = args.before.resolve()
    results = run(args, ws, trees)
    bench.print_table("Targets (this tree)", [r.cells() for r in summary_rows(results, "prefork", args.quick)],
                      header=("scenario", "prefork", "peer", "ratio", "target", "met?"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
