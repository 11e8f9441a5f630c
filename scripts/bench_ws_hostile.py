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

Peers, alternating with prefork on the same attacks: the ``websockets``
library's asyncio server with the echo handler of ``bench_ws_peer.py`` (one
process: its RSS is the one sampled), started by this script's hidden
``--peer-port`` mode. ``websockets defaults`` keeps the library's limits
(``max_size`` 1 MiB, permessage-deflate on); ``websockets max_size=16MiB``
raises ``max_size`` to prefork's ``max_message_size``. Both have keep-alive
pings off, as prefork has here. After each attack the client reads what the
server sent it and reports what the server did: closed with a code (the close
frame's), dropped the connection (EOF or reset without a close frame: prefork
resets a flooding peer, so its 1008 is read from its log instead), or kept it
open (no close within 2 s of silence).

As a scenario: ``python scripts/bench.py ws-hostile [--runs N] [--quick]``.
Standalone, against this tree and another checkout (the "before" figures)::

    python scripts/bench_ws_hostile.py --before /work/main
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import sys
import tempfile
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
METRICS = ["peak_growth_mib", "after_growth_mib", "sent_mib", "closed_1008", "refused", "close_code", "dropped",
           "kept_open", "seconds"]
PREFORK = "prefork"
PEERS = {"websockets defaults": 1 * MiB,  # the library's own max_size
         "websockets max_size=16MiB": 16 * MiB}  # prefork's max_message_size
DRAIN_SILENCE, DRAIN_CAP = 2.0, 60.0  # seconds: "kept open" after this much silence; the whole read


def growth_mib(sampler: bench.ProcessSampler) -> tuple[float, float]:
    """(peak Σ RSS growth, growth now) of the sampled processes, in MiB."""
    return (sampler.peak_sum - sampler.base_sum) / MiB, (sampler.rss_now() - sampler.base_sum) / MiB


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv1: bool = False) -> bytes:
    """A masked client frame (fixed key: allowed for a benchmark)."""
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    return bytes([b0]) + bench.ws_frame(payload)[1:]


def ws_open(port: int, *, extensions: str = "", rcvbuf: int = 0, path: str = "/") -> socket.socket:
    """A raw client after the handshake (``rcvbuf`` set before connecting: a small window)."""
    sock = socket.socket()
    if rcvbuf:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(20)
    sock.connect((HOST, port))
    ext = f"Sec-WebSocket-Extensions: {extensions}\r\n" if extensions else ""
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
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
    with bench.ProcessSampler([pid], interval=0.01) as peak:
        try:
            while sent < flood_mib * MiB and time.monotonic() - started < 120:
                sock.sendall(block)
                sent += len(block)
        except OSError:  # the server gave up on us
            pass
        seconds = time.monotonic() - started
        growth, after = growth_mib(peak)
    try:  # its close frame may be lost: prefork resets a connection it gave up on
        outcome = server_did(sock)
    finally:
        sock.close()
    return {"peak_growth_mib": growth, "after_growth_mib": after, "sent_mib": sent / MiB,
            "closed_1008": logged(server, "send buffer over"), **outcome, "seconds": seconds}


def server_did(sock: socket.socket) -> dict[str, float]:
    """Read what the server sent (pongs, ...) up to its close frame: close_code (NaN: none), dropped, kept_open."""
    buf, pos = bytearray(), 0
    code, dropped, kept_open = float("nan"), 0.0, 0.0
    deadline = time.monotonic() + DRAIN_CAP
    sock.settimeout(DRAIN_SILENCE)
    while time.monotonic() < deadline:
        while len(buf) - pos >= 2:  # parse whole (unmasked) server frames
            opcode, n, head = buf[pos] & 0x0F, buf[pos + 1] & 0x7F, 2
            if n >= 126:
                head = 4 if n == 126 else 10
                if len(buf) - pos < head:
                    break
                n = int.from_bytes(buf[pos + 2:pos + head], "big")
            if len(buf) - pos < head + n:
                break
            if opcode == 0x8:
                payload = buf[pos + head:pos + head + n]
                return {"close_code": float(int.from_bytes(payload[:2], "big")) if n >= 2 else 1005.0,
                        "dropped": 0.0, "kept_open": 0.0}
            pos += head + n
        if pos > MiB:
            del buf[:pos]
            pos = 0
        try:
            data = sock.recv(MiB)
        except (TimeoutError, socket.timeout):
            kept_open = 1.0
            break
        except OSError:  # reset
            dropped = 1.0
            break
        if not data:
            dropped = 1.0
            break
        buf += data
    else:
        kept_open = 1.0
    return {"close_code": code, "dropped": dropped, "kept_open": kept_open}


def unfinished_deflate(server: RunningServer, each_mib: int) -> dict[str, float]:
    (pid,) = server.workers()
    comp = zlib.compressobj(9, zlib.DEFLATED, -15)
    start = frame(0x2, comp.compress(bytes(each_mib * MiB)) + comp.flush(zlib.Z_SYNC_FLUSH), fin=False, rsv1=True)
    socks: list[socket.socket] = []
    refused = dropped = kept_open = 0
    code, started = float("nan"), time.monotonic()
    try:
        with bench.ProcessSampler([pid], interval=0.01) as peak:
            for _ in range(CONNECTIONS):
                sock = ws_open(server.port, extensions="permessage-deflate")
                socks.append(sock)
                sock.sendall(start)
            for sock in socks:  # a ping answered: held; a close: refused (its code kept)
                try:
                    sock.sendall(frame(0x9, b"held?"))
                except OSError:
                    pass  # already reset: server_did sees it
                did = server_did(sock) if not answers_ping(sock) else {"kept_open": 1.0}
                kept_open += int(did.get("kept_open", 0.0))
                dropped += int(did.get("dropped", 0.0))
                if did.get("close_code", float("nan")) == did.get("close_code"):
                    refused += 1
                    code = did["close_code"] if code != code else code
            seconds = time.monotonic() - started
            time.sleep(0.5)  # what is still held once the answers are in
            growth, after = growth_mib(peak)
    finally:
        for sock in socks:
            sock.close()
    return {"peak_growth_mib": growth, "after_growth_mib": after, "refused": float(refused), "close_code": code,
            "dropped": float(dropped), "kept_open": float(kept_open), "seconds": seconds}


def answers_ping(sock: socket.socket) -> bool:
    """True when the first frame the server sends is a pong (it holds the connection); else nothing is consumed
    beyond that frame's first two bytes, which are put back for ``server_did`` via MSG_PEEK."""
    sock.settimeout(20)
    try:
        first = sock.recv(2, socket.MSG_PEEK)
    except OSError:
        return False
    return len(first) == 2 and first[0] & 0x0F == 0xA


def spec(ws: Workspace, repo: Path, name: str) -> ServerSpec:
    """prefork from ``repo``, 1 worker, shipped defaults (only the logs and keep-alive pings set)."""
    def argv(port: int, log: Path) -> list[str]:
        cfg = log.with_suffix(".ini")
        cfg.write_text(f"[websocket]\nping_interval = 60m\n\n[logging]\naccess_log =\nerror_log = {log}\n")
        return [sys.executable, "-m", "prefork.cli", "-c", str(cfg), "-b", f"{HOST}:{port}", "-w", "1", WS_APP]

    return ServerSpec(name, argv, cwd=repo, env={"PYTHONPATH": str(repo)})


def peer_spec(name: str, max_size: int) -> ServerSpec:
    """The ``websockets`` asyncio server (``bench_ws_peer.echo``) with ``max_size``, compression at its default."""
    def argv(port: int, log: Path) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--peer-port", str(port), "--max-size", str(max_size)]

    return ServerSpec(name, argv)


def peer_main(port: int, max_size: int) -> int:
    """``--peer-port``: serve until killed (the library's defaults but ``max_size``; keep-alive pings off)."""
    import asyncio

    from websockets.asyncio.server import serve

    from bench_ws_peer import echo, health

    async def serve_forever() -> None:
        async with serve(echo, HOST, port, max_size=max_size, ping_interval=None, process_request=health) as srv:
            await srv.serve_forever()

    asyncio.run(serve_forever())
    return 0


def variants(quick: bool) -> dict[str, tuple[str, int]]:
    flood = FLOOD_MIB[1] if quick else FLOOD_MIB[0]
    out = {f"ping-flood-{flood}MiB": ("flood", flood)}
    out.update({f"deflate-{size}MiB": ("deflate", size) for size in DEFLATE_SIZES})
    return out


def run(args: argparse.Namespace, ws: Workspace, trees: dict[str, Path]) -> bench.Results:
    """Every attack on a fresh server of every tree (``label -> checkout``) and every peer, alternately."""
    plan = variants(args.quick)
    specs, attack = [], {}
    for variant, how in plan.items():
        for label, repo in trees.items():
            specs.append(spec(ws, repo, f"{label}: {variant}"))
            attack[specs[-1].name] = (variant, how)
        for label, max_size in PEERS.items():
            specs.append(peer_spec(f"{label}: {variant}", max_size))
            attack[specs[-1].name] = (variant, how)

    def measure(server: RunningServer) -> Measurement:
        variant, (kind, size) = attack[server.name]
        return {variant: ping_flood(server, size) if kind == "flood" else unfinished_deflate(server, size)}

    print(f"ws-hostile: {len(trees)} trees + {len(PEERS)} peers x {len(plan)} attacks x {args.runs} runs, "
          "a fresh server each", file=sys.stderr)
    results = bench.alternate(specs, args.runs, ws, measure)
    rows = [[variant, name.rpartition(": ")[0], did(results, name, variant)]
            + [bench.fmt(bench.median(results, name, variant, m)) for m in METRICS]
            for name, (variant, _how) in attack.items()]
    bench.print_table(f"WebSocket attacks: worker RSS (median of {args.runs})", rows,
                      header=("attack", "server", "server did", *METRICS),
                      note="Peers: the websockets library's asyncio server (1 process), its default max_size "
                           "(1 MiB) and at prefork's 16 MiB, permessage-deflate on, keep-alive pings off.")
    bench.save_json(args, "ws-hostile", results)
    return results


def did(results: bench.Results, name: str, variant: str) -> str:
    """What the server did to the attacker (the last run): closed with code N / kept open / dropped."""
    runs = results.get(name, {}).get(variant, [])
    if not runs:
        return "n/a"
    last = runs[-1]
    if "sent_mib" in last:  # the flood: one connection
        closed = last.get("closed_1008", 0.0) and "closed 1008 (logged), reset"
        if last["close_code"] == last["close_code"]:
            text = f"closed {last['close_code']:.0f}"
        else:
            text = closed or ("dropped" if last["dropped"] else "kept open")
        return f"{text} after {bench.fmt(last['sent_mib'], 'MiB')}"
    parts = []
    if last["refused"]:
        code = f" {last['close_code']:.0f}" if last["close_code"] == last["close_code"] else ""
        parts.append(f"{last['refused']:.0f} closed{code}")
    if last["kept_open"]:
        parts.append(f"{last['kept_open']:.0f} kept open")
    if last["dropped"]:
        parts.append(f"{last['dropped']:.0f} dropped")
    text = ", ".join(parts) or "no answer"
    return text.replace(f"{CONNECTIONS:.0f} ", f"{CONNECTIONS}/{CONNECTIONS} ", 1) if len(parts) == 1 else text


def summary_rows(results: bench.Results, label: str, quick: bool) -> list[SummaryRow]:
    def worst(name: str, variant: str) -> float:
        values = [m["peak_growth_mib"] for m in results.get(f"{name}: {variant}", {}).get(variant, [])]
        return max(values) if values else float("nan")

    def cell(name: str, variant: str) -> str:
        return f"{bench.fmt(worst(name, variant), 'MiB')}, {did(results, f'{name}: {variant}', variant)}"

    def with_cells(row: SummaryRow, variant: str) -> SummaryRow:
        peers = "; ".join(f"{cell(name, variant)} ({name})" for name in PEERS
                          if f"{name}: {variant}" in results)
        return dataclasses.replace(row, prefork=cell(label, variant), peer=peers or row.peer)

    flood = FLOOD_MIB[1] if quick else FLOOD_MIB[0]
    variant = f"ping-flood-{flood}MiB"
    rows = [with_cells(bench.target_max(f"WebSocket ping flood, {flood} MiB of pings, peer never reads: worker RSS "
                                        "growth (worst run)", worst(label, variant), "MiB",
                                        SEND_BUFFER_MIB + SLACK_MIB), variant)]
    for size in DEFLATE_SIZES:
        variant = f"deflate-{size}MiB"
        rows.append(with_cells(bench.target_max(f"WebSocket: {CONNECTIONS} unfinished deflate messages of {size} MiB: "
                                                "worker RSS growth (worst run)", worst(label, variant), "MiB",
                                                INFLATE_BUDGET_MIB + SLACK_MIB), variant))
    return rows


def scenario_ws_hostile(args: argparse.Namespace, ws: Workspace) -> list[SummaryRow]:
    """Worker RSS under a ping flood and unfinished compressed messages (this tree)."""
    return summary_rows(run(args, ws, {PREFORK: REPO}), PREFORK, args.quick)


def main(argv: list[str] | None = None) -> int:
    """Standalone: this tree, and optionally another checkout for the "before" figures."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--before", type=Path, help="another checkout to measure beside this one")
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", help="also merge raw per-run results into this JSON file")
    parser.add_argument("--peer-port", type=int, help=argparse.SUPPRESS)  # serve as the websockets peer
    parser.add_argument("--max-size", type=int, default=MiB, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.peer_port:
        return peer_main(args.peer_port, args.max_size)
    ws = Workspace(Path(tempfile.mkdtemp(prefix="prefork-ws-hostile-")), Path(tempfile.mkdtemp()))
    print(f"server logs: {ws.logdir}", file=sys.stderr)
    trees = {PREFORK: REPO}
    if args.before:
        trees[f"prefork @ {args.before}"] = args.before.resolve()
    results = run(args, ws, trees)
    bench.print_table("Targets (this tree)", [r.cells() for r in summary_rows(results, PREFORK, args.quick)],
                      header=("scenario", "prefork", "peer", "ratio", "target", "met?"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
