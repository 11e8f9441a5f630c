"""``scripts/bench.py resumable``: a resumable upload against a plain one of the same size.

Strategy: issue 16 §3 asks for the throughput of a resumable upload against a
plain upload of the same 1 GiB (target ≥ 90 %) and for the cost of one
resumption. Each server runs the shipped ``conf/server.ini`` (resumable uploads
on at ``/resumable/``, a commit every 64 MiB) and serves both kinds, so the two
are measured on the same server, alternately, with the same streaming client
(``bench.post_body``):

- prefork's native app (``bench_apps:native_app``), SHA-256 on the way in (the
  default): plain = a multipart form whose file part is saved
  (``request.files["upload"].save``); resumable = the draft's upload creation
  carrying the whole file (``POST /resumable/`` with ``Upload-Complete: ?1``),
  handed to the app as ``request.upload`` and saved. Both hash every byte.
- the WSGI app that links ``wsgi.input`` into place (``bench_apps:upload_move``),
  ``[uploads] checksum = none``: plain = a raw POST; resumable = the same
  creation, whose completed file is the app's ``wsgi.input``. Neither hashes.
- resumed (both servers): the draft's creation without content, an append cut off
  by closing the socket half-way, the offset asked for (HEAD), and an append of
  the rest; MiB/s over the whole, and the HEAD's latency. The cost of one
  resumption is the difference to the uninterrupted resumable upload.
- tuspy (native server): the tus client library (``pip install tuspy``), one
  PATCH per 64 MiB chunk, for the figure with a peer's own client.

A plain upload is never made durable (it sits in the page cache); a resumable one
is fsync'ed at each commit. The durable-write rate of the disk under the workspace
(a file written and fdatasync'ed, as ``dd conv=fdatasync``) is printed beside the
figures: where the network is faster than that, it is what the commits cost.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from pathlib import Path

from bench import (HOST, MiB, Measurement, ProcessSampler, RunningServer, SummaryRow, Workspace, alternate,
                   check_answer, cpu_per_gib, fmt, median, multipart_frame, post_body, prefork_server, print_failures,
                   print_medians, print_table, read_head, report_ratio, save_json, target_max, target_ratio)

NATIVE = "prefork native, SHA-256"
WSGI = "prefork WSGI move_to, checksum none"
NO_CHECKSUM = {"uploads": {"checksum": "none"}}
TARGET = 0.9
RSS_TARGET_MIB = 16.0


def durable_write_rate(directory: Path, size: int, block: memoryview) -> float:
    """MiB/s of writing ``size`` bytes to a new file under ``directory`` and fdatasync'ing it."""
    path = directory / "durable-write-probe"
    start = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        remaining = size
        while remaining > 0:
            remaining -= os.write(fd, block[: min(remaining, len(block))])
        os.fdatasync(fd)
    finally:
        os.close(fd)
        path.unlink()
    return size / MiB / (time.perf_counter() - start)


def _request(port: int, head: str) -> tuple[bytes, bytes]:
    with socket.create_connection((HOST, port), timeout=60) as sock:
        sock.sendall(head.encode())
        return read_head(sock)


def _create_empty(port: int, size: int) -> str:
    head, _ = _request(port, f"POST /resumable/ HTTP/1.1\r\nHost: {HOST}\r\nUpload-Complete: ?0\r\n"
                             f"Upload-Length: {size}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"location:"):
            return line.split(b":", 1)[1].strip().decode()
    raise RuntimeError(f"no Location in {head[:300]!r}")


def _cut_append(port: int, location: str, size: int, block: memoryview) -> None:
    """Send the first half of the content of an append, then close the connection."""
    with socket.create_connection((HOST, port), timeout=60) as sock:
        sock.sendall((f"PATCH {location} HTTP/1.1\r\nHost: {HOST}\r\nUpload-Offset: 0\r\nUpload-Complete: ?1\r\n"
                      f"Content-Type: application/partial-upload\r\nContent-Length: {size}\r\n\r\n").encode())
        remaining = size // 2
        while remaining > 0:
            n = min(remaining, len(block))
            sock.sendall(block[:n])
            remaining -= n


def _offset(port: int, location: str) -> int:
    head, _ = _request(port, f"HEAD {location} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"upload-offset:"):
            return int(line.split(b":", 1)[1])
    raise RuntimeError(f"no Upload-Offset in {head[:300]!r}")


def resumed_upload(port: int, size: int, block: memoryview) -> tuple[float, float, bytes]:
    """(seconds for the whole, seconds of the HEAD, the final answer) of an upload resumed once."""
    start = time.perf_counter()
    location = _create_empty(port, size)
    _cut_append(port, location, size, block)
    asked = time.perf_counter()
    offset = _offset(port, location)
    head_s = time.perf_counter() - asked
    headers = f"Upload-Offset: {offset}\r\nUpload-Complete: ?1\r\n"
    _, _, answer = post_body(port, size - offset, block, location, content_type="application/partial-upload",
                             headers=headers, method="PATCH")
    return time.perf_counter() - start, head_s, answer


def tuspy_upload(port: int, path: Path) -> float:
    """Seconds for tuspy to upload ``path`` (64 MiB chunks)."""
    from tusclient import client  # type: ignore[import-untyped]

    start = time.perf_counter()
    uploader = client.TusClient(f"http://{HOST}:{port}/resumable/").uploader(
        str(path), chunk_size=64 * MiB, metadata={"filename": path.name})
    uploader.upload()
    return time.perf_counter() - start


def scenario_resumable(args: argparse.Namespace, ws: Workspace) -> list[SummaryRow]:
    size = args.size
    block = memoryview(os.urandom(4 * MiB))
    failures: list[str] = []
    _, prefix, suffix = multipart_frame()
    source = ws.scratch / "tuspy-source.bin"
    with open(source, "wb") as out:
        for _ in range(0, size, len(block)):
            out.write(block)
        out.truncate(size)
    disk = durable_write_rate(ws.scratch, min(size, 512 * MiB), block)

    def measure(server: RunningServer) -> Measurement:
        native = server.name == NATIVE
        result: Measurement = {}
        with ProcessSampler(server.workers()) as sampler:
            if native:
                send_s, wait_s, answer = post_body(server.port, size, block, "/form", prefix=prefix, suffix=suffix,
                                                   content_type=multipart_frame()[0])
            else:
                send_s, wait_s, answer = post_body(server.port, size, block, "/upload")
        result["plain"] = {"mib_s": size / MiB / (send_s + wait_s), "rss_growth_mib": sampler.rss_growth() / MiB,
                           **cpu_per_gib(sampler, size), "ok": float(check_answer(server, answer, size, failures))}
        with ProcessSampler(server.workers()) as sampler:
            send_s, wait_s, answer = post_body(server.port, size, block, "/resumable/",
                                               headers="Upload-Complete: ?1\r\n")
        result["resumable"] = {"mib_s": size / MiB / (send_s + wait_s), "rss_growth_mib": sampler.rss_growth() / MiB,
                               "disk_write_per_byte": sampler.io_delta("write_bytes") / size,
                               **cpu_per_gib(sampler, size), "ok": float(check_answer(server, answer, size, failures))}
        total_s, head_s, answer = resumed_upload(server.port, size, block)
        result["resumed"] = {"mib_s": size / MiB / total_s, "total_s": total_s, "head_ms": head_s * 1000,
                             "ok": float(check_answer(server, answer, size, failures))}
        if native:
            result["tuspy"] = {"mib_s": size / MiB / tuspy_upload(server.port, source)}
        return result

    contenders = [prefork_server(ws, "native_app", threads=4, name=NATIVE),
                  prefork_server(ws, "upload_move", threads=4, name=WSGI, overrides=NO_CHECKSUM)]
    print(f"resumable: {size / MiB:,.0f} MiB x {args.runs} runs x {len(contenders)} servers", file=sys.stderr)
    results = alternate(contenders, args.runs, ws, measure)
    source.unlink()

    def med(name: str, variant: str, metric: str = "mib_s") -> float:
        return median(results, name, variant, metric)

    rows = []
    for name, plain in ((NATIVE, "multipart form"), (WSGI, "raw POST")):
        for variant, what in (("resumable", "resumable, one request"), ("resumed", "resumed once"),
                              ("tuspy", "tuspy, 64 MiB chunks")):
            if med(name, variant) == med(name, variant):
                a, b = med(name, variant), med(name, "plain")
                rows.append([f"{name}: {what} vs plain {plain}", fmt(a, "MiB/s"), fmt(b, "MiB/s"),
                             f"{a / b:.2f}x"])
    print_table(f"Resumable upload of {size / MiB:,.0f} MiB vs a plain one (median of {args.runs})", rows,
                note=f"Same server, same client, alternately. The disk under the workspace writes "
                     f"{disk:,.0f} MiB/s durably (written and fdatasync'ed); a plain upload is never synced, "
                     "a resumable one at each commit (every 64 MiB, on a thread of its own). resumed = creation, "
                     "half the content then the connection closed, HEAD, the rest; over the whole time.")
    print_medians(results, ["plain", "resumable", "resumed", "tuspy"],
                  ["mib_s", "total_s", "head_ms", "rss_growth_mib", "disk_write_per_byte", "user_s_per_gib",
                   "sys_s_per_gib", "ok"])
    print_failures(failures)
    save_json(args, "resumable", results)
    label = f"resumable {size / MiB:,.0f} MiB upload, one request"
    cost = {name: med(name, "resumed", "total_s") - size / MiB / med(name, "resumable") for name in (NATIVE, WSGI)}
    return [target_ratio(f"{label} vs plain multipart ({NATIVE})", med(NATIVE, "resumable"), med(NATIVE, "plain"),
                         "MiB/s", "plain", TARGET),
            target_ratio(f"{label} vs plain raw POST ({WSGI})", med(WSGI, "resumable"), med(WSGI, "plain"),
                         "MiB/s", "plain", TARGET),
            report_ratio(f"tuspy {size / MiB:,.0f} MiB vs plain multipart ({NATIVE})", med(NATIVE, "tuspy"),
                         med(NATIVE, "plain"), "MiB/s", "plain"),
            SummaryRow(f"cost of one resumption of a {size / MiB:,.0f} MiB upload (extra seconds; HEAD ms)",
                       f"{fmt(cost[NATIVE], 's')}; {fmt(med(NATIVE, 'resumed', 'head_ms'), 'ms')}",
                       f"{fmt(cost[WSGI], 's')}; {fmt(med(WSGI, 'resumed', 'head_ms'), 'ms')} ({WSGI})", "—",
                       "report", None),
            target_max(f"{label}: worker RSS growth", max(med(NATIVE, "resumable", "rss_growth_mib"),
                                                          med(WSGI, "resumable", "rss_growth_mib")),
                       "MiB", RSS_TARGET_MIB)]
