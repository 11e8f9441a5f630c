"""``scripts/bench.py streaming``: a chunked request body that does not end, read while it arrives.

Strategy: issue 16 §3 asks that a never-ending chunked POST at full loopback speed
for 60 s keep the worker's RSS growth under 16 MiB. One prefork server (shipped
``conf/server.ini``, 2 workers, the native ``bench_apps:native_app`` whose
``/ingest`` is declared ``stream=True`` and reads ``request.stream`` in 1 MiB
pieces; ``[limits] max_body_size = 0``, since a body without end passes any limit)
takes one chunked POST of 1 MiB chunks from a raw socket for 60 s (10 s
with ``--quick``), then the last chunk; the worker's RSS is sampled every 20 ms
(``bench.ProcessSampler``) from the first MiB on. Reported: MiB/s, the growth of
the worker's RSS over the stream (target ≤ 16 MiB) and its peak, and the byte
count the handler saw against what was sent.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

from bench import (HOST, MiB, ProcessSampler, RunningServer, SummaryRow, Workspace, alternate, fmt, median,
                   prefork_server, print_medians, print_table, save_json, target_max)

NAME = "prefork native, stream=True"
RSS_TARGET_MIB = 16.0


def scenario_streaming(args: argparse.Namespace, ws: Workspace) -> list[SummaryRow]:
    seconds = 10.0 if args.quick else 60.0
    chunk = b"%x\r\n%s\r\n" % (MiB, os.urandom(MiB))
    failures: list[str] = []

    def measure(server: RunningServer) -> dict[str, dict[str, float]]:
        with socket.create_connection((HOST, server.port), timeout=60) as sock:
            sock.sendall(f"POST /ingest HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
            sock.sendall(chunk)
            sent = MiB
            with ProcessSampler(server.workers()) as sampler:
                start = time.perf_counter()
                while time.perf_counter() - start < seconds:
                    sock.sendall(chunk)
                    sent += MiB
                elapsed = time.perf_counter() - start
                growth, peak = sampler.rss_growth(), max(sampler.peak_rss.values())
            sock.sendall(b"0\r\n\r\n")
            answer = b""
            while not answer.endswith(b"\n") or b"\r\n\r\n" not in answer:
                piece = sock.recv(65536)
                if not piece:
                    break
                answer += piece
        seen = int(answer.partition(b"\r\n\r\n")[2].strip() or -1)
        if seen != sent:
            failures.append(f"the handler saw {seen} of {sent} bytes: {answer[:200]!r}")
        return {"stream": {"mib_s": (sent - MiB) / MiB / elapsed, "rss_growth_mib": growth / MiB,
                           "rss_peak_mib": peak / MiB, "sent_gib": sent / (1 << 30), "ok": float(seen == sent)}}

    # A stream without end passes any max_body_size (10 GiB by default, 10 s at loopback speed).
    contenders = [prefork_server(ws, "native_app", threads=4, name=NAME, overrides={"limits": {"max_body_size": "0"}})]
    print(f"streaming: {seconds:g} s x {args.runs} runs", file=sys.stderr)
    results = alternate(contenders, args.runs, ws, measure)

    def med(metric: str) -> float:
        return median(results, NAME, "stream", metric)

    print_table(f"A chunked body that does not end, read while it arrives, for {seconds:g} s "
                f"(median of {args.runs})",
                [[f"{NAME}: {fmt(med('sent_gib'), 'GiB')} sent", fmt(med("mib_s"), "MiB/s"),
                  f"RSS +{fmt(med('rss_growth_mib'), 'MiB')}", "—"]],
                header=("scenario", "throughput", "worker RSS growth", "ratio"),
                note="One raw-socket client sends 1 MiB chunks as fast as loopback takes them; the handler "
                     "(`request.stream.chunks(1 << 20)`) counts them. RSS of the serving worker, sampled every "
                     "20 ms from the first MiB on; peak = the highest sample.")
    print_medians(results, ["stream"], ["mib_s", "rss_growth_mib", "rss_peak_mib", "sent_gib", "ok"])
    for text in failures:
        print(f"**Failed:** {text}")
    save_json(args, "streaming", results)
    return [target_max(f"never-ending chunked POST for {seconds:g} s at full speed: worker RSS growth",
                       med("rss_growth_mib"), "MiB", RSS_TARGET_MIB)]
