"""``scripts/bench.py tls``: HTTPS terminated in the workers: small GETs and a large upload.

Strategy: the figures of issue 15 §4 ("Measured"), reported without targets
(the issue gives none) except the flat worker RSS. At the start a throwaway CA
and a server certificate for 127.0.0.1 are made with ``trustme`` (ECDSA P-256,
its default; the key re-written as PKCS#8, the only form granian loads) in the
scratch directory, which is removed at exit: no key outlives the run. Python
clients trust that CA and check the name; wrk does not verify certificates.

1. HTTPS hello, c100 keep-alive and c100 ``Connection: close`` (a full handshake
   per request: wrk keeps no TLS sessions, so none is resumed), ``wrk -t2
   --latency``, req/s and p99. Contenders, all serving ``bench_apps:hello`` with 2
   workers, run alternately: prefork (shipped conf/server.ini, threads 4,
   ``-b https://… --certfile --keyfile``, its access log as ``--access-log``
   says), granian (``--ssl-certificate/--ssl-keyfile``, its access log alike),
   gunicorn sync 2w and gthread 2x4 (``--certfile/--keyfile``, access log off,
   its default), and prefork over plain TCP, the same server without TLS, for
   the ratio TLS ÷ plain.
2. A raw Content-Length upload (``--size``, 1 GiB by default) through the WSGI
   app that saves it with ``wsgi.input.move_to`` (``bench_apps:upload_move``),
   sent by ``bench.post_body`` with its socket wrapped in ``ssl``: MiB/s over TLS,
   over plain TCP, and into a TLS ceiling (``python scripts/bench_tls.py``: an
   ``ssl`` server socket, each connection in a thread, the body ``recv_into`` a
   preallocated 4 MiB buffer and written to a file, ``bench.ceiling_serve``),
   and the growth of any prefork worker's RSS during the TLS upload, bounded by
   16 MiB as in ``bigupload``.
3. A file response of the same size (``bench_apps:download``, ``wsgi.file_wrapper``)
   read by a Python client (``recv_into`` a 4 MiB buffer): prefork over TLS
   (kernel TLS needs Python 3.12, so its bounded ``pread`` + TLS write loop),
   over plain TCP (``sendfile``), and gunicorn gthread and granian over TLS
   serving the same app; MiB/s and the growth of any serving process's RSS.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import shutil
import socket
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench import (HOST, MiB, Measurement, ProcessSampler, Results, RunningServer, ServerSpec, SummaryRow, Workspace,
                   alternate, ceiling_serve, check_answer, cpu_per_gib, granian_server, gunicorn_server, log_label,
                   median, post_body, prefork_server, print_failures, read_head, print_medians, print_table, ratio_rows,
                   report_ratio, run_wrk, save_json, target_max, tls_client_context)

VARIANTS = [(100, False), (100, True)]  # (connections, Connection: close)
RSS_TARGET_MIB = 16.0  # worker RSS growth during the TLS upload, as bigupload's bound
PREFORK_TLS = "prefork threads=4, TLS"
PREFORK_PLAIN = "prefork threads=4, plain TCP"
GRANIAN_TLS = "granian wsgi 2w, TLS"
SYNC_TLS = "gunicorn sync 2w, TLS"
GTHREAD_TLS = "gunicorn gthread 2x4, TLS"
DOWNLOAD_TLS = "prefork file_wrapper, TLS"
DOWNLOAD_PLAIN = "prefork file_wrapper, plain TCP (sendfile)"
DOWNLOAD_GRANIAN = "granian file_wrapper, TLS"
DOWNLOAD_GTHREAD = "gunicorn gthread 2x4 file_wrapper, TLS"
UPLOAD_TLS = "prefork move_to, TLS"
UPLOAD_PLAIN = "prefork move_to, plain TCP"
CEILING_TLS = "TLS ceiling (ssl socket)"


@dataclass(frozen=True)
class Certs:
    """The throwaway CA (what clients trust) and the server's certificate and key (PEM)."""

    ca: Path
    cert: Path
    key: Path


def make_certs(directory: Path) -> Certs:
    """A new CA and a certificate for 127.0.0.1 under ``directory``; the key as PKCS#8, mode 0600."""
    import trustme
    from cryptography.hazmat.primitives import serialization

    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    leaf = ca.issue_cert(HOST)
    certs = Certs(directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    ca.cert_pem.write_to_path(str(certs.ca))
    certs.cert.write_bytes(b"".join(pem.bytes() for pem in leaf.cert_chain_pems))
    key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
    fd = os.open(certs.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                    serialization.NoEncryption()))
    return certs


def with_flags(base: ServerSpec, certs: Certs, flags: list[str], name: str, https_bind: bool = False) -> ServerSpec:
    """``base`` with ``flags`` before its app argument, speaking HTTPS; ``https_bind`` writes prefork's
    ``-b`` as https://host:port."""
    def argv(port: int, log: Path) -> list[str]:
        cmd = base.argv(port, log)
        if https_bind:
            cmd[cmd.index("-b") + 1] = f"https://{HOST}:{port}"
        return cmd[:-1] + flags + cmd[-1:]

    return dataclasses.replace(base, name=name, argv=argv, tls_ca=certs.ca)


def prefork_tls(ws: Workspace, app: str, certs: Certs, name: str) -> ServerSpec:
    """prefork as ``prefork_server`` starts it (2 workers, threads 4), on an https:// bind."""
    return with_flags(prefork_server(ws, app, threads=4), certs,
                      ["--certfile", str(certs.cert), "--keyfile", str(certs.key)], name, https_bind=True)


def hello_contenders(ws: Workspace, certs: Certs) -> list[ServerSpec]:
    """prefork, granian, gunicorn sync and gthread over TLS, then prefork over plain TCP."""
    gunicorn_flags = ["--certfile", str(certs.cert), "--keyfile", str(certs.key)]
    return [prefork_tls(ws, "hello", certs, PREFORK_TLS),
            with_flags(granian_server("hello", access_log=ws.access_log), certs,
                       ["--ssl-certificate", str(certs.cert), "--ssl-keyfile", str(certs.key)], GRANIAN_TLS),
            with_flags(gunicorn_server("hello", worker_class="sync"), certs, gunicorn_flags, SYNC_TLS),
            with_flags(gunicorn_server("hello", worker_class="gthread", threads=4), certs, gunicorn_flags,
                       GTHREAD_TLS),
            prefork_server(ws, "hello", threads=4, name=PREFORK_PLAIN)]


def variant_name(conns: int, close: bool) -> str:
    """``keep-alive c100`` or ``close c100``, as the hello scenario names them."""
    return f"{'close' if close else 'keep-alive'} c{conns}"


def tls_hello(args: argparse.Namespace, ws: Workspace, certs: Certs) -> list[SummaryRow]:
    """HTTPS GETs with wrk against every contender; tables, then the summary rows."""
    if not shutil.which("wrk"):
        raise RuntimeError("tls needs wrk (its HTTPS load); the Python fallback client has no TLS")
    raw_errors: list[str] = []

    def measure(server: RunningServer) -> Measurement:
        scheme = "https" if server.spec.tls_ca else "http"
        if not args.quick:
            run_wrk(server.port, 10, 1, False, scheme=scheme)  # warm-up, not recorded
        out: Measurement = {}
        for conns, close in VARIANTS:
            metrics, text = run_wrk(server.port, conns, args.duration, close, scheme=scheme)
            if sum(v for k, v in metrics.items() if k.startswith("err_") or k == "non2xx"):
                raw_errors.append(f"{server.name}, {variant_name(conns, close)} (log {server.log}):\n{text}")
            out[variant_name(conns, close)] = metrics
        return out

    contenders = hello_contenders(ws, certs)
    print(f"tls hello: {len(contenders)} servers x {args.runs} runs x {len(VARIANTS)} variants of "
          f"{args.duration:g}s, access log {log_label(ws.access_log)}", file=sys.stderr)
    results = alternate(contenders, args.runs, ws, measure)
    variants = [variant_name(c, close) for c, close in VARIANTS]
    label = log_label(ws.access_log)
    print_hello_tables(results, variants, args, label)
    if raw_errors:
        print(f"**Errors reported by wrk ({len(raw_errors)} measurements)** — first ones:\n")
        for text in raw_errors[:6]:
            print("```\n" + text.strip() + "\n```")
    save_json(args, "tls-hello", results)
    return hello_summary(results, label)


def print_hello_tables(results: Results, variants: list[str], args: argparse.Namespace, label: str) -> None:
    """req/s and p99 of prefork over TLS against each peer and against itself over plain TCP."""
    peers = [GRANIAN_TLS, GTHREAD_TLS, SYNC_TLS, PREFORK_PLAIN]
    print_table(f"HTTPS small GET, req/s (2 workers each; median of {args.runs}; higher is better)",
                ratio_rows(results, variants, "req_s", "req/s", [PREFORK_TLS], peers,
                           lambda v: f"HTTPS GET 100 B, {v}"),
                note=f"Client: `wrk -t2 --latency`, {args.duration:g}s per variant. Every server offers TLS 1.3 "
                     "and gets it (TLS_AES_256_GCM_SHA384 when checked with `openssl s_client`); the certificate "
                     "is ECDSA P-256. wrk resumes no TLS session, so `close` is a full handshake per request. "
                     f"prefork and granian with the access log {label} (prefork's as conf/server.ini ships it, "
                     "granian's `--access-log`), gunicorn's off. The plain-TCP row is the same prefork without "
                     "TLS: its ratio is TLS ÷ plain. gunicorn (27.0.1 here), sync and gthread alike, builds a "
                     "new SSLContext, certificate and key loaded, for every connection "
                     "(`gunicorn.sock.ssl_wrap_socket`).")
    print_table(f"HTTPS small GET, p99 latency (median of {args.runs}; lower is better)",
                ratio_rows(results, variants, "p99_ms", "ms", [PREFORK_TLS], peers,
                           lambda v: f"HTTPS GET 100 B, {v}"))
    print_medians(results, variants, ["req_s", "p50_ms", "p99_ms", "err_connect", "err_read", "err_write",
                                      "err_timeout", "non2xx"])


def hello_summary(results: Results, label: str) -> list[SummaryRow]:
    """Reported rows: prefork over TLS ÷ each peer over TLS, and ÷ itself over plain TCP."""
    def med(name: str, variant: str, metric: str = "req_s") -> float:
        return median(results, name, variant, metric)

    ka, close = variant_name(100, False), variant_name(100, True)
    ka_row = f"HTTPS hello c100 keep-alive, threads=4, {label}"
    close_row = f"HTTPS hello c100 Connection: close (handshake-bound), threads=4, {label}"
    return [report_ratio(ka_row, med(PREFORK_TLS, ka), med(GRANIAN_TLS, ka), "req/s", "granian TLS"),
            report_ratio(ka_row, med(PREFORK_TLS, ka), med(GTHREAD_TLS, ka), "req/s", GTHREAD_TLS),
            report_ratio(f"{ka_row}: p99 latency", med(PREFORK_TLS, ka, "p99_ms"), med(GRANIAN_TLS, ka, "p99_ms"),
                         "ms", "granian TLS"),
            report_ratio(close_row, med(PREFORK_TLS, close), med(GRANIAN_TLS, close), "req/s", "granian TLS"),
            report_ratio(close_row, med(PREFORK_TLS, close), med(GTHREAD_TLS, close), "req/s", GTHREAD_TLS),
            report_ratio(close_row, med(PREFORK_TLS, close), med(SYNC_TLS, close), "req/s", SYNC_TLS),
            report_ratio(f"hello c100 keep-alive, prefork TLS ÷ plain TCP, {label}", med(PREFORK_TLS, ka),
                         med(PREFORK_PLAIN, ka), "req/s", "prefork plain TCP"),
            report_ratio(f"hello c100 Connection: close, prefork TLS ÷ plain TCP, {label}",
                         med(PREFORK_TLS, close), med(PREFORK_PLAIN, close), "req/s", "prefork plain TCP")]


def ceiling_tls(ws: Workspace, certs: Certs) -> ServerSpec:
    """The TLS ceiling receiver: this module run as a script (``ceiling_main``)."""
    def argv(port: int, log: Path) -> list[str]:
        return [sys.executable, str(Path(__file__).resolve()), "--port", str(port), "--dir", str(ws.scratch),
                "--certfile", str(certs.cert), "--keyfile", str(certs.key)]

    return ServerSpec(CEILING_TLS, argv, tls_ca=certs.ca)


def tls_upload(args: argparse.Namespace, ws: Workspace, certs: Certs) -> list[SummaryRow]:
    """The same raw upload over TLS and plain TCP to prefork's move_to app, and into the TLS ceiling."""
    size = args.size
    block = memoryview(os.urandom(4 * MiB))
    failures: list[str] = []

    def measure(server: RunningServer) -> Measurement:
        tls = tls_client_context(server.spec.tls_ca) if server.spec.tls_ca else None
        with ProcessSampler(server.workers(), interval=0.01) as sampler:
            send_s, wait_s, response = post_body(server.port, size, block, tls=tls)
        ok = check_answer(server, response, size, failures)
        return {"upload": {"mib_s": size / MiB / (send_s + wait_s), "send_s": send_s, "after_send_s": wait_s,
                           "rss_growth_mib": sampler.rss_growth() / MiB,
                           "disk_write_per_byte": sampler.io_delta("write_bytes") / size,
                           **cpu_per_gib(sampler, size), "ok": float(ok)}}

    contenders = [prefork_tls(ws, "upload_move", certs, UPLOAD_TLS),
                  prefork_server(ws, "upload_move", threads=4, name=UPLOAD_PLAIN), ceiling_tls(ws, certs)]
    print(f"tls upload: {size / MiB:,.0f} MiB x {args.runs} runs x {len(contenders)} servers", file=sys.stderr)
    results = alternate(contenders, args.runs, ws, measure)
    print_upload_tables(results, size, args)
    print_failures(failures)
    save_json(args, "tls-upload", results)

    return transfer_rows(results, "upload", f"raw {size / MiB:,.0f} MiB upload over TLS (WSGI move_to)",
                         UPLOAD_TLS, [(UPLOAD_PLAIN, "prefork plain TCP"), (CEILING_TLS, "TLS ceiling")])


def transfer_rows(results: Results, variant: str, row: str, primary: str,
                  peers: list[tuple[str, str]]) -> list[SummaryRow]:
    """MiB/s of ``primary`` against each (contender, label) of ``peers``, then its worst RSS growth."""
    def med(name: str) -> float:
        return median(results, name, variant, "mib_s")

    growth = [m["rss_growth_mib"] for m in results[primary].get(variant, [])]
    return [*(report_ratio(row, med(primary), med(peer), "MiB/s", label) for peer, label in peers),
            target_max(f"worker RSS growth, {row} (max over {len(growth)} runs)",
                       max(growth) if growth else float("nan"), "MiB", RSS_TARGET_MIB)]


def print_upload_tables(results: Results, size: int, args: argparse.Namespace) -> None:
    """MiB/s of prefork over TLS against plain TCP and the TLS ceiling, then every median."""
    label = f"POST {size / MiB:,.0f} MiB to a file"
    print_table(f"Upload over TLS, Content-Length body (median of {args.runs}; higher is better)",
                ratio_rows(results, ["upload"], "mib_s", "MiB/s", [UPLOAD_TLS], [UPLOAD_PLAIN, CEILING_TLS],
                           lambda v: label),
                note="prefork serves `bench_apps:upload_move` (`wsgi.input.move_to(path)`), 2 workers, threads 4; "
                     "the client is `bench.post_body` (sendall from a 4 MiB buffer), its socket wrapped in `ssl` "
                     "(TLS 1.3) for the TLS rows. The TLS ceiling: a Python `ssl` server socket, a thread per "
                     "connection, `recv_into` a preallocated 4 MiB buffer + write to a file. rss_growth_mib = "
                     "the largest growth of one serving process's RSS during the upload.")
    print_medians(results, ["upload"], ["mib_s", "send_s", "after_send_s", "rss_growth_mib", "disk_write_per_byte",
                                        "user_s_per_gib", "sys_s_per_gib", "ok"])


def get_body(port: int, path: str, view: memoryview, tls: ssl.SSLContext | None) -> tuple[float, int, bytes]:
    """GET ``path`` (Connection: close) and read the whole response into ``view``, reused.

    Returns:
        (seconds from the request to the last byte, body bytes received, the response head).
    """
    with socket.create_connection((HOST, port), timeout=600) as raw, \
            (tls.wrap_socket(raw, server_hostname=HOST) if tls else contextlib.nullcontext(raw)) as sock:
        start = time.perf_counter()
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode())
        head, rest = read_head(sock)
        received = len(rest)
        while n := sock.recv_into(view):
            received += n
        return time.perf_counter() - start, received, head


def tls_download(args: argparse.Namespace, ws: Workspace, certs: Certs) -> list[SummaryRow]:
    """The same file response over TLS and plain TCP from prefork, and over TLS from gunicorn and granian."""
    size = args.size
    source = ws.scratch / "download.bin"
    with open(source, "wb") as out:  # real bytes: a sparse file would be read from the zero page
        block = os.urandom(4 * MiB)
        for offset in range(0, size, len(block)):
            out.write(block[:min(len(block), size - offset)])
    env = {"BENCH_DOWNLOAD_FILE": str(source)}
    view = memoryview(bytearray(4 * MiB))
    failures: list[str] = []

    def measure(server: RunningServer) -> Measurement:
        tls = tls_client_context(server.spec.tls_ca) if server.spec.tls_ca else None
        with ProcessSampler(server.workers(), interval=0.01) as sampler:
            seconds, received, head = get_body(server.port, "/download", view, tls)
        ok = head.startswith(b"HTTP/1.1 200") and received == size
        if not ok:
            failures.append(f"{server.name}: {received:,} of {size:,} bytes, {head[:60]!r} (log {server.log})")
        return {"download": {"mib_s": size / MiB / seconds, "rss_growth_mib": sampler.rss_growth() / MiB,
                             **cpu_per_gib(sampler, size), "ok": float(ok)}}

    gunicorn_flags = ["--certfile", str(certs.cert), "--keyfile", str(certs.key)]
    contenders = [dataclasses.replace(spec, env=env) for spec in (
        prefork_tls(ws, "download", certs, DOWNLOAD_TLS),
        prefork_server(ws, "download", threads=4, name=DOWNLOAD_PLAIN),
        with_flags(gunicorn_server("download", worker_class="gthread", threads=4), certs, gunicorn_flags,
                   DOWNLOAD_GTHREAD),
        with_flags(granian_server("download", access_log=ws.access_log), certs,
                   ["--ssl-certificate", str(certs.cert), "--ssl-keyfile", str(certs.key)], DOWNLOAD_GRANIAN))]
    print(f"tls download: {size / MiB:,.0f} MiB x {args.runs} runs x {len(contenders)} servers", file=sys.stderr)
    try:
        results = alternate(contenders, args.runs, ws, measure)
    finally:
        source.unlink()
    print_table(f"File response over TLS, GET {size / MiB:,.0f} MiB (median of {args.runs}; higher is better)",
                ratio_rows(results, ["download"], "mib_s", "MiB/s", [DOWNLOAD_TLS],
                           [DOWNLOAD_PLAIN, DOWNLOAD_GTHREAD, DOWNLOAD_GRANIAN], lambda v: "GET a file"),
                note="Every server serves `bench_apps:download` (`wsgi.file_wrapper` over the file), 2 workers; "
                     "the client reads with `recv_into` a 4 MiB buffer, its socket wrapped in `ssl` (TLS 1.3) "
                     "for the TLS rows. prefork over plain TCP uses `sendfile`; over TLS it reads the file in "
                     "bounded pieces and writes them through OpenSSL (kernel TLS, which would let sendfile "
                     "encrypt in the kernel, needs Python 3.12's `OP_ENABLE_KTLS`).")
    print_medians(results, ["download"], ["mib_s", "rss_growth_mib", "user_s_per_gib", "sys_s_per_gib", "ok"])
    print_failures(failures)
    save_json(args, "tls-download", results)

    return transfer_rows(results, "download", f"{size / MiB:,.0f} MiB file response over TLS (wsgi.file_wrapper)",
                         DOWNLOAD_TLS, [(DOWNLOAD_PLAIN, "prefork plain TCP, sendfile"),
                                        (DOWNLOAD_GTHREAD, DOWNLOAD_GTHREAD), (DOWNLOAD_GRANIAN, DOWNLOAD_GRANIAN)])


def scenario_tls(args: argparse.Namespace, ws: Workspace) -> list[SummaryRow]:
    """Make the certificates, then the hello, upload and download parts; their summary rows."""
    certs = make_certs(ws.scratch / "tls")
    return tls_hello(args, ws, certs) + tls_upload(args, ws, certs) + tls_download(args, ws, certs)


# --------------------------------------------------------------------------- the TLS ceiling receiver


def _serve_tls(context: ssl.SSLContext, conn: socket.socket, directory: str) -> None:
    view = memoryview(bytearray(4 * MiB))
    try:
        conn.settimeout(600)
        with context.wrap_socket(conn, server_side=True) as tls:
            ceiling_serve(tls, view, directory)
    except OSError as exc:  # ssl.SSLError is one: a client that went away costs this connection only
        print(f"TLS ceiling: {exc!r}", file=sys.stderr, flush=True)
    finally:
        conn.close()


def ceiling_main(port: int, directory: str, certfile: str, keyfile: str) -> int:
    """Accept until killed (or 10,000 connections, or an hour idle), each connection in a thread."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certfile, keyfile)
    with socket.create_server((HOST, port), backlog=128) as srv:
        srv.settimeout(3600)
        for _ in range(10_000):
            try:
                conn, _ = srv.accept()
            except socket.timeout:
                return 0
            threading.Thread(target=_serve_tls, args=(context, conn, directory), daemon=True).start()
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the TLS ceiling (``python scripts/bench_tls.py --port N --dir D --certfile C --keyfile K``)."""
    parser = argparse.ArgumentParser(description="The TLS ceiling of `bench.py tls` (started by it).")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dir", required=True)
    parser.add_argument("--certfile", required=True)
    parser.add_argument("--keyfile", required=True)
    args = parser.parse_args(argv)
    return ceiling_main(args.port, args.dir, args.certfile, args.keyfile)


if __name__ == "__main__":
    sys.exit(main())
