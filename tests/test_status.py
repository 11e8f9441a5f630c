"""The scoreboard seen from outside: the status page (HTML, JSON, Prometheus), who may see
it, and ``prefork-serve status``."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import requests

from tests.server import REPO, Server, free_port, request, wait_for

UPLOAD_APP = "tests.apps.upload:app"
STATUS = "/server-status"
DECLARED = 64 * 1024 * 1024


@pytest.fixture(scope="module")
def server(start_module_server: Callable[..., Server]) -> Server:
    return start_module_server(app=UPLOAD_APP, workers=2, config={"limits": "body_min_rate = 0"})


def _get(server: Server, query: str = "") -> requests.Response:
    resp = requests.get(server.url + STATUS + query, timeout=5)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Cache-Control"] == "no-store"
    return resp


def _json(server: Server) -> dict[str, Any]:
    resp = _get(server, "?format=json")
    assert resp.headers["Content-Type"].startswith("application/json")
    document: dict[str, Any] = resp.json()
    return document


def _uploads(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [u for w in document["workers"] for u in w["uploads"]]


@contextmanager
def slow_upload(server: Server, path: str, declared: int = DECLARED, sent: int = 2 * 1024 * 1024,
                ) -> Iterator[None]:
    """Declare a big body, send ``sent`` bytes of it slowly, and keep the upload open.

    The server sees an upload in flight with a known length and a measurable rate for as long as
    the block runs; the connection is closed (upload abandoned) at the end.
    """
    sock = server.connect()
    try:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: t\r\nContent-Length: {declared}\r\n\r\n".encode())
        piece = b"x" * (sent // 8)
        for _ in range(8):
            sock.sendall(piece)
            time.sleep(0.03)  # a slow client's pace: the upload has a measurable rate
        yield
    finally:
        sock.close()


def _upload_in_flight(server: Server, path: str, minimum: int) -> dict[str, Any] | None:
    for upload in _uploads(_json(server)):
        if upload["path"] == path and upload["received"] >= minimum:
            return upload
    return None


def test_html_page_refreshes_and_shows_workers_and_upload_progress(server: Server) -> None:
    with slow_upload(server, "/sha256?html"):
        wait_for(lambda: _upload_in_flight(server, "/sha256?html", 2 * 1024 * 1024), 10,
                 what="the upload on the scoreboard")
        resp = _get(server)
        page = resp.text
    assert resp.headers["Content-Type"].startswith("text/html")
    assert re.search(r'<meta http-equiv="refresh" content="\d+', page)
    for worker in server.workers():
        assert f"<td>{worker.pid}</td>" in page
    assert page.count("class='l ready'") == 2
    assert "No uploads in progress" not in page
    row = re.search(r"<tr><td class='l'>/sha256\?html</td>(.*?)</tr>", page)
    assert row, page
    cells = row.group(1)
    # progress bar: 2 MiB of 64 MiB is about 3 %
    width = float(re.search(r"width:([\d.]+)%", cells).group(1))  # type: ignore[union-attr]
    assert 2.0 < width < 5.0, cells
    assert "2.0 MiB / 64.0 MiB" in cells
    assert re.search(r"<td>[\d.]+ (B|KiB|MiB)/s</td>", cells), cells  # rate
    assert re.search(r"<td>\d+:\d\d:\d\d</td>", cells), cells  # ETA
    # once the upload is gone, so is its row
    wait_for(lambda: not _uploads(_json(server)), 5, what="the abandoned upload leaves the scoreboard")
    assert "No uploads in progress" in _get(server).text


def test_json_shows_upload_in_flight(server: Server) -> None:
    with slow_upload(server, "/sha256?json"):
        upload = wait_for(lambda: _upload_in_flight(server, "/sha256?json", 2 * 1024 * 1024), 10,
                          what="the upload on the scoreboard")
        document = _json(server)
    assert isinstance(upload, dict)
    assert upload["received"] == 2 * 1024 * 1024
    assert upload["declared"] == DECLARED
    assert upload["rate"] > 0
    assert upload["eta"] is not None and upload["eta"] > 0
    assert document["master_pid"] == server.pid
    assert {w["pid"] for w in document["workers"]} == {p.pid for p in server.workers()}
    assert all(w["state"] == "ready" for w in document["workers"])
    # one worker holds the connection of the upload
    assert sum(w["connections"] for w in document["workers"]) >= 2  # the upload + this request


_SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\.)*",?)*\})?'
                     r' (\S+)( -?\d+)?$')
_TYPES = {"counter", "gauge", "histogram", "summary", "untyped"}


def parse_prometheus(text: str) -> dict[str, list[tuple[str, float]]]:
    """Parse the text exposition format strictly enough to catch malformed output.

    Returns:
        Samples by metric name: (label string, value). Every sample has a ``# TYPE`` line that
        comes before it; a metric's TYPE appears once; the text ends with a newline.
    """
    assert text.endswith("\n")
    types: dict[str, str] = {}
    samples: dict[str, list[tuple[str, float]]] = {}
    for line in text.splitlines():
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 2 and parts[1] == "TYPE":
                assert len(parts) == 4 and parts[3] in _TYPES, line
                assert parts[2] not in types, f"duplicate TYPE for {parts[2]}"
                types[parts[2]] = parts[3]
            continue
        match = _SAMPLE.match(line)
        assert match, f"malformed sample line: {line!r}"
        name = match.group(1)
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or base in types, f"sample {name} has no # TYPE"
        value = float(match.group(3))  # raises for a malformed value
        if types.get(name) == "counter":
            assert name.endswith("_total") and value >= 0, line
        samples.setdefault(name, []).append((match.group(2) or "", value))
    return samples


def _prometheus(server: Server) -> dict[str, list[tuple[str, float]]]:
    resp = _get(server, "?format=prometheus")
    assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return parse_prometheus(resp.text)


def _requests_total(server: Server) -> float:
    return _prometheus(server)["prefork_requests_total"][0][1]


def test_prometheus_is_valid_and_counters_survive_a_killed_worker(server: Server) -> None:
    for _ in range(20):
        assert requests.get(server.url + "/environ", timeout=5).status_code == 200
    samples = _prometheus(server)
    for name in ("prefork_requests_total", "prefork_received_bytes_total", "prefork_workers",
                 "prefork_open_connections", "prefork_staged_bytes", "prefork_uploads_in_progress",
                 "prefork_worker_heartbeat_age_seconds", "prefork_staging_memory_budget_bytes"):
        assert name in samples, name
    assert samples["prefork_workers"] == [('{state="ready"}', 2.0)]
    before = _requests_total(server)
    assert before >= 20
    received_before = _prometheus(server)["prefork_received_bytes_total"][0][1]

    pids = {p.pid for p in server.workers()}
    victim = max(pids)
    os.kill(victim, signal.SIGKILL)
    seen = [before]

    def replaced() -> bool:
        # Sample the counter all along the replacement: it must never dip.
        seen.append(_requests_total(server))
        now = {p.pid for p in server.workers()}
        return len(now) == 2 and victim not in now

    wait_for(replaced, 10, what="a replacement worker")
    seen.append(_requests_total(server))
    assert all(b >= a for a, b in zip(seen, seen[1:])), seen
    assert seen[-1] >= before
    assert _prometheus(server)["prefork_received_bytes_total"][0][1] >= received_before


def test_client_not_in_allow_gets_403(start_server: Callable[..., Server]) -> None:
    server = start_server(app=UPLOAD_APP, config={"status": "allow = 10.0.0.0/8, 192.168.1.1"})
    for query in ("", "?format=json", "?format=prometheus"):
        resp = requests.get(server.url + STATUS + query, timeout=5)
        assert resp.status_code == 403
        assert "pid" not in resp.text and "prefork_requests_total" not in resp.text
    # the connection and the server are fine after the 403
    resp = request(server, f"GET {STATUS} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n".encode())
    assert resp.status == 403
    assert requests.get(server.url + "/environ", timeout=5).status_code == 200


def _cli_status(server: Server, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "prefork.cli", "status", "-c", str(server.config_path), *extra],
                          cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True,
                          text=True, timeout=20)


def test_cli_status_prints_table_and_json(server: Server) -> None:
    with slow_upload(server, "/sha256?cli"):
        wait_for(lambda: _upload_in_flight(server, "/sha256?cli", 2 * 1024 * 1024), 10,
                 what="the upload on the scoreboard")
        table = _cli_status(server)
        raw = _cli_status(server, "--json")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    assert lines[0].startswith("requests ")
    assert lines[1].split() == ["PID", "STATE", "GEN", "BEAT", "REQS", "HTTP", "WS", "BUSY", "STREAMS", "RAM", "DISK"]
    pids = {p.pid for p in server.workers()}
    rows = [line.split() for line in lines[2:] if line.split() and line.split()[0].isdigit()]
    assert {int(r[0]) for r in rows} == pids
    assert all(r[1] == "ready" for r in rows)
    assert all(r[7] == "0/4" for r in rows), rows  # the upload is staging: no handler thread runs yet
    upload_lines = [line for line in lines if "upload /sha256?cli" in line]
    assert len(upload_lines) == 1 and "3%" in upload_lines[0] and "ETA" in upload_lines[0], lines

    assert raw.returncode == 0, raw.stderr
    document = json.loads(raw.stdout)
    assert {w["pid"] for w in document["workers"]} == pids
    assert document["master_pid"] == server.pid
    assert any(u["path"] == "/sha256?cli" and u["declared"] == DECLARED for u in _uploads(document))


def test_cli_status_reports_a_server_that_is_not_running(tmp_path: Any) -> None:
    config = tmp_path / "down.ini"
    config.write_text(f"[server]\nbind = 127.0.0.1:{free_port()}\n")
    result = subprocess.run([sys.executable, "-m", "prefork.cli", "status", "-c", str(config)], cwd=REPO,
                            env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
                            timeout=20)
    assert result.returncode == 1
    assert "cannot read the status" in result.stderr


def test_scoreboard_totals_never_dip_or_double_while_workers_retire() -> None:
    """The master retires a dead worker's counters while status pages read them (in-process).

    Without the consistent read, a reader sees a dead worker's requests twice (in its slot and in
    the retired total) or not at all, about once per 30 000 reads here: a probabilistic guard.
    """
    ROUNDS = 5000
    from prefork.process.scoreboard import Scoreboard

    board = Scoreboard(4, 1 << 20)
    live = board.claim(0, 1)
    board.set_pid(live, 1)
    stop = threading.Event()
    totals: list[int] = []

    def read() -> None:
        while not stop.is_set():
            retired, views = board.totals_and_views()
            totals.append(retired.requests + sum(v.requests for v in views))

    switch = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # interleave the two threads as much as possible
    reader = threading.Thread(target=read)
    reader.start()
    rounds = 0
    try:
        # At least ROUNDS retirements, and on until the reader has sampled often enough for
        # the guard to mean something (bounded, so a slow machine cannot hang here).
        while rounds < ROUNDS or (len(totals) <= 200 and rounds < 40 * ROUNDS):
            n = rounds
            rounds += 1
            index = board.claim(0, 1)
            board.set_pid(index, 100 + n)
            slot = board.slot(index)
            for _ in range(3):
                slot.count_request()
            board.slot(live).count_request()
            board.retire(index)
    finally:
        stop.set()
        reader.join(10)
        sys.setswitchinterval(switch)
    assert len(totals) > 100
    assert all(b >= a for a, b in zip(totals, totals[1:])), "a total went down"
    assert max(totals) <= rounds * 4
    assert board.totals_and_views()[0].requests == rounds * 3
