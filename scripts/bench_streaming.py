"""``scripts/bench.py streaming``: a chunked request body that does not end, read while it arrives.

Strategy: issue 16 §3 asks that a never-ending chunked POST at full loopback speed
for 60 s keep the worker's RSS growth under 16 MiB. Each contender takes one
chunked POST of 1 MiB chunks from a raw socket for 60 s (10 s with ``--quick``),
then the last chunk, alternately; the serving processes' RSS is sampled every
20 ms (``bench.ProcessSampler``) from the first MiB on:

- prefork, shipped ``conf/server.ini`` (2 workers, threads 4) with ``[limits]
  max_body_size = 0`` (a body without end passes any limit): the native
  ``bench_apps:native_app``, whose ``/ingest`` is declared ``stream=True`` and reads
  ``request.stream`` in 1 MiB pieces, and the WSGI ``bench_apps:stream_ingest``
  under ``[streaming] paths = /ingest``, reading ``wsgi.input`` in 1 MiB pieces;
- the peers serving that same WSGI app: gunicorn gthread 2x4 (which streams
  ``wsgi.input`` to the app) and granian. A server whose RSS grows past 2 GiB (one
  that buffers the body) is cut off there, and its figure says so.

Reported: MiB/s, the growth of the RSS over the stream (target ≤ 16 MiB for
prefork) and its peak, and the byte count the handler saw against what was sent.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

from bench import (HOST, MiB, ProcessSampler, RunningServer, SummaryRow, Workspace, alternate, fmt, granian_server,
                   gunicorn_server, median, prefork_server, print_medians, print_table, read_head, report_ratio,
                   save_json, target_max)

NAME = "prefork native, stream=True"
WSGI = "prefork WSGI, [streaming] paths"
GTHREAD = "gunicorn gthread 2x4"
GRANIAN = "granian wsgi 2w"
RSS_TARGET_MIB = 16.0
RSS_CUTOFF = 2 << 30  # a server that buffers the stream is stopped here, not when the machine is out of memory


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
                cut_off = False
                while time.perf_counter() - start < seconds:
                    sock.sendall(chunk)
                    sent += MiB
                    if sent % (64 * MiB) == 0 and sampler.rss_now() > RSS_CUTOFF:
                        cut_off = True
                        break
                elapsed = time.perf_counter() - start
                growth, peak = sampler.rss_growth(), max(sampler.peak_rss.values())
            sock.sendall(b"0\r\n\r\n")
            head, answer = read_head(sock)
            length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(answer) < length:
                piece = sock.recv(65536)
                if not piece:
                    break
                answer += piece
            answer = head + b"\r\n\r\n" + answer
        text = answer.partition(b"\r\n\r\n")[2].strip()
        seen = int(text) if text.isdigit() else -1
        if cut_off:
            failures.append(f"{server.name}: RSS past {RSS_CUTOFF >> 20} MiB after {sent >> 20} MiB: it buffers "
                            "the body; stopped there")
        elif seen != sent:
            failures.append(f"{server.name}: the handler saw {seen} of {sent} bytes: {answer[:200]!r}")
        return {"stream": {"mib_s": (sent - MiB) / MiB / elapsed, "rss_growth_mib": growth / MiB,
                           "rss_peak_mib": peak / MiB, "sent_gib": sent / (1 << 30),
                           "ok": float(seen == sent and not cut_off)}}

    # A stream without end passes any max_body_size (10 GiB by default, 10 s at loopback speed).
    unlimited = {"limits": {"max_body_size": "0"}}
    contenders = [prefork_server(ws, "native_app", threads=4, name=NAME, overrides=unlimited),
                  prefork_server(ws, "stream_ingest", threads=4, name=WSGI,
                                 overrides={**unlimited, "streaming": {"paths": "/ingest"}}),
                  gunicorn_server("stream_ingest", worker_class="gthread", threads=4, name=GTHREAD),
                  granian_server("stream_ingest", name=GRANIAN)]
    print(f"streaming: {seconds:g} s x {args.runs} runs", file=sys.stderr)
    results = alternate(contenders, args.runs, ws, measure)

    def med(metric: str, name: str = NAME) -> float:
        return median(results, name, "stream", metric)

    rows = [[f"{name}: {fmt(med('sent_gib', name), 'GiB')} sent", fmt(med("mib_s", name), "MiB/s"),
             f"RSS +{fmt(med('rss_growth_mib', name), 'MiB')}",
             "—" if name in (NAME, WSGI) else f"{med('mib_s', WSGI) / med('mib_s', name):.2f}x"]
            for name in (NAME, WSGI, GTHREAD, GRANIAN)]
    print_table(f"A chunked body that does not end, read while it arrives, for {seconds:g} s "
                f"(median of {args.runs})", rows,
                header=("scenario", "throughput", "RSS growth", "prefork WSGI ÷ this"),
                note="One raw-socket client sends 1 MiB chunks as fast as loopback takes them; the handler "
                     "counts them (native: `request.stream.chunks(1 << 20)`; WSGI: `wsgi.input.read(1 << 20)`). "
                     "RSS of the serving processes, sampled every 20 ms from the first MiB on: growth = the most "
                     "any of them grew; peak = the highest sample.")
    print_medians(results, ["stream"], ["mib_s", "rss_growth_mib", "rss_peak_mib", "sent_gib", "ok"])
    for text in failures:
        print(f"**Failed:** {text}")
    save_json(args, "streaming", results)
    label = f"never-ending chunked POST for {seconds:g} s at full speed"
    return [target_max(f"{label}: worker RSS growth (native stream=True)", med("rss_growth_mib"), "MiB",
                       RSS_TARGET_MIB),
            target_max(f"{label}: worker RSS growth (WSGI, [streaming] paths)", med("rss_growth_mib", WSGI), "MiB",
                       RSS_TARGET_MIB, GTHREAD, med("rss_growth_mib", GTHREAD)),
            report_ratio(f"{label}: throughput, WSGI", med("mib_s", WSGI), med("mib_s", GTHREAD), "MiB/s", GTHREAD),
            report_ratio(f"{label}: throughput, WSGI", med("mib_s", WSGI), med("mib_s", GRANIAN), "MiB/s", GRANIAN)]
