"""``scripts/bench.py reload``: requests lost while the master reloads and recycles workers.

Strategy: the scenario of issue 11 §1, the long version. 50 keep-alive clients
(``requests.Session``, one connection each, reused for as long as the server
keeps it open) and a few clients uploading 20 MiB bodies run for 66 s while the
master gets 12 HUP, 2 TTIN and 2 TTOU, spread evenly, and workers recycle
themselves every 200 requests (``max_requests``). Nothing is retried: every
exception or wrong answer is a failed request. The same run against gunicorn
gthread (same app, same signals, ``--max-requests 200``) is the peer figure.
prefork runs with the shipped ``conf/server.ini`` and its access log on.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests

from bench import (HOST, MiB, Measurement, RunningServer, ServerSpec, SummaryRow, Workspace, alternate,
                   median, prefork_server, print_medians, save_json, target_max)

KEEP_ALIVE_CLIENTS = 50
UPLOAD_CLIENTS = 2
UPLOAD_SIZE = 20 * MiB
MAX_REQUESTS = 200
SECONDS = 66.0
QUICK_SECONDS = 8.0
SIGNALS = [signal.SIGHUP] * 12 + [signal.SIGTTIN] * 2 + [signal.SIGTTOU] * 2
PREFORK = "prefork (shipped config, access log on)"
GUNICORN = "gunicorn gthread 2x4"


@dataclass
class Tally:
    """Counts of one run, shared by the client threads."""

    ok: int = 0
    failed: int = 0
    uploads_ok: int = 0
    uploads_failed: int = 0
    first_failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fail(self, what: str, upload: bool = False) -> None:
        with self.lock:
            if upload:
                self.uploads_failed += 1
            else:
                self.failed += 1
            if len(self.first_failures) < 5:
                self.first_failures.append(what)


def _keep_alive(url: str, stop: threading.Event, tally: Tally) -> None:
    with requests.Session() as session:
        while not stop.is_set():
            try:
                resp = session.get(url + "/", timeout=30)
            except requests.RequestException as exc:
                tally.fail(f"GET: {exc!r}")
                continue
            if resp.status_code == 200 and resp.text == "0\n":
                with tally.lock:
                    tally.ok += 1
            else:
                tally.fail(f"GET: {resp.status_code} {resp.text[:80]!r}")


def _uploads(url: str, stop: threading.Event, tally: Tally) -> None:
    # With a Content-Length: the bench app (and gunicorn) count the body by its declared size.
    body = os.urandom(UPLOAD_SIZE)
    with requests.Session() as session:
        while not stop.is_set():
            try:
                resp = session.post(url + "/", data=body, timeout=60)
            except requests.RequestException as exc:
                tally.fail(f"upload: {exc!r}", upload=True)
                continue
            if resp.status_code == 200 and resp.text == f"{UPLOAD_SIZE}\n":
                with tally.lock:
                    tally.uploads_ok += 1
            else:
                tally.fail(f"upload: {resp.status_code} {resp.text[:80]!r}", upload=True)


def run_load(server: RunningServer, seconds: float) -> Tally:
    """Drive the load and the signals against ``server`` for ``seconds``; count the failures."""
    url = f"http://{HOST}:{server.port}"
    stop = threading.Event()
    tally = Tally()
    threads = [threading.Thread(target=_keep_alive, args=(url, stop, tally)) for _ in range(KEEP_ALIVE_CLIENTS)]
    threads += [threading.Thread(target=_uploads, args=(url, stop, tally)) for _ in range(UPLOAD_CLIENTS)]
    for thread in threads:
        thread.start()
    try:
        # The signals spread over the run, leaving its last tenth for the settled server.
        interval = seconds * 0.9 / len(SIGNALS)
        started = time.monotonic()
        for n, sig in enumerate(_interleaved(SIGNALS)):
            time.sleep(max(0.0, started + (n + 1) * interval - time.monotonic()))
            os.kill(server.proc.pid, sig)
        time.sleep(max(0.0, started + seconds - time.monotonic()))
    finally:
        stop.set()
        for thread in threads:
            thread.join(90)
    return tally


def _interleaved(signals: list[signal.Signals]) -> list[signal.Signals]:
    """HUPs with the TTINs and TTOUs spread among them (TTIN before TTOU, so never below 2)."""
    hups = [s for s in signals if s == signal.SIGHUP]
    others = [s for s in signals if s != signal.SIGHUP]
    others.sort(key=lambda s: s != signal.SIGTTIN)
    order: list[signal.Signals] = []
    step = max(1, len(hups) // (len(others) + 1))
    for n, hup in enumerate(hups):
        order.append(hup)
        if others and (n + 1) % step == 0:
            order.append(others.pop(0))
    return order + others


def _gunicorn_spec() -> ServerSpec:
    def argv(port: int, log: Path) -> list[str]:
        return [sys.executable, "-m", "gunicorn", "-b", f"{HOST}:{port}", "-w", "2", "-k", "gthread",
                "--threads", "4", "--max-requests", str(MAX_REQUESTS), "--timeout", "300",
                "--graceful-timeout", "30", "--error-logfile", "-", "--log-level", "warning",
                "bench_apps:upload"]

    return ServerSpec(GUNICORN, argv)


def scenario_reload(args: argparse.Namespace, ws: Workspace) -> list[SummaryRow]:
    """Failed requests under keep-alive load and uploads while the master reloads and recycles."""
    seconds = QUICK_SECONDS if args.quick else SECONDS

    def measure(server: RunningServer) -> Measurement:
        tally = run_load(server, seconds)
        for failure in tally.first_failures:
            print(f"    ! {failure}", file=sys.stderr)
        return {"reload": {"requests": tally.ok + tally.failed, "failed": tally.failed,
                           "uploads": tally.uploads_ok + tally.uploads_failed,
                           "uploads_failed": tally.uploads_failed}}

    access_log = ws.logdir / "reload-access.log"
    prefork = prefork_server(ws, "upload", workers=2, threads=4, name=PREFORK, overrides={
        "process": {"max_requests": str(MAX_REQUESTS)}, "logging": {"access_log": str(access_log)}})
    print(f"reload: {KEEP_ALIVE_CLIENTS} keep-alive + {UPLOAD_CLIENTS} upload clients, {seconds:g} s, "
          f"12 HUP + 2 TTIN + 2 TTOU, max_requests {MAX_REQUESTS}, x {args.runs} runs",
          file=sys.stderr)
    results = alternate([prefork, _gunicorn_spec()], args.runs, ws, measure)
    print_medians(results, ["reload"], ["requests", "failed", "uploads", "uploads_failed"])
    save_json(args, "reload", results)
    rows = []
    for failed, total, label in (("failed", "requests", "requests"), ("uploads_failed", "uploads", "uploads")):
        worst = max((m[failed] for m in results[PREFORK].get("reload", [])), default=float("nan"))
        peer = max((m[failed] for m in results[GUNICORN].get("reload", [])), default=float("nan"))
        rows.append(target_max(f"{label} failed under {len(SIGNALS)} reload signals + max_requests "
                               f"{MAX_REQUESTS}, {seconds:g} s (worst run, of a median "
                               f"{median(results, PREFORK, 'reload', total):,.0f})",
                               worst, "", 0, GUNICORN, peer))
    return rows
