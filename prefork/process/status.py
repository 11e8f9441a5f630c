"""The status page: what every worker is doing, from the scoreboard.

Strategy: one ``snapshot()`` reads the shared-memory scoreboard into plain
data; three renderers turn it into HTML (a page that refreshes itself and
shows a live progress bar, rate and ETA for every upload in flight), JSON, and
Prometheus text exposition format. Counters include what retired workers had
served, so they never go down when a worker is replaced. ``StatusPage`` wraps
the application a worker serves (the loader assembles it): a request for
``[status] path`` is answered from the scoreboard on the loop thread (so the
page answers even while every handler thread is stuck, and is not counted
as a request served by the app), 403 unless the peer is in ``[status]
allow``; every other request goes to the application.
"""

from __future__ import annotations

import html
import ipaddress
import dataclasses
import json
import time
from collections.abc import Sequence
from typing import Any

from prefork.apps.handlers import CompleteRequest, LoadedApp, ResponseStream
from prefork.process.scoreboard import Scoreboard


def allowed(peer: str, networks: Sequence[str]) -> bool:
    """Whether a client address is in the ``[status] allow`` list (IPs or CIDR networks)."""
    if peer == "unix":
        return True  # a Unix socket is only reachable by local users with file access
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    for entry in networks:
        try:
            if address in ipaddress.ip_network(entry, strict=False):
                return True
        except ValueError:
            continue
    return False


def snapshot(board: Scoreboard, master_pid: int, now: float | None = None) -> dict[str, Any]:
    """Read every worker slot into a JSON-ready dict.

    Args:
        board: the scoreboard.
        master_pid: the master's pid, for the page.
        now: the wall-clock time to compute rates against (default: time.time()).

    Returns:
        Totals and one entry per worker with its uploads in flight.
    """
    wall = time.time() if now is None else now
    mono = time.monotonic()
    workers: list[dict[str, Any]] = []
    retired, views = board.totals_and_views()
    for view in views:
        uploads = []
        for upload in view.uploads:
            elapsed = max(wall - upload.started, 1e-6)
            rate = upload.received / elapsed
            eta = (upload.declared - upload.received) / rate if upload.declared and rate > 0 else None
            uploads.append({"path": upload.path, "received": upload.received, "declared": upload.declared,
                            "elapsed": round(elapsed, 3), "rate": round(rate),
                            "eta": None if eta is None else round(eta, 1)})
        workers.append({
            "pid": view.pid, "state": view.state.name.lower(), "generation": view.generation,
            "heartbeat_age": round(max(mono - view.heartbeat, 0.0), 3),
            "uptime": round(wall - view.started, 1), "requests": view.requests,
            "connections": view.connections, "websockets": view.ws_connections,
            "bytes_received": view.bytes_received, "staged_ram": view.staged_ram,
            "staged_disk": view.staged_disk, "threads": view.threads, "busy_threads": view.busy_threads,
            "shed": view.shed, "streams": view.streams,
            "broadcast": {"redis": _REDIS_STATES[view.broadcast_state],
                          **dict(zip(BROADCAST_OUTCOMES, view.broadcast))},
            "uploads": uploads,
        })
    return {
        "master_pid": master_pid,
        "time": wall,
        "requests_total": retired.requests + sum(w["requests"] for w in workers),
        "bytes_received_total": retired.bytes_received + sum(w["bytes_received"] for w in workers),
        "shed_total": retired.shed + sum(w["shed"] for w in workers),
        "broadcast": {outcome: retired.broadcast[n] + sum(w["broadcast"][outcome] for w in workers)
                      for n, outcome in enumerate(BROADCAST_OUTCOMES)},
        "redis_connected": sum(w["broadcast"]["redis"] == "connected" for w in workers),
        "staged_ram": sum(w["staged_ram"] for w in workers),
        "staged_disk": sum(w["staged_disk"] for w in workers),
        "memory_budget": board.memory_budget,
        "workers": workers,
    }


# Broadcast counts (Redis transport): published to Redis, received from it, kept to this
# server's workers while Redis was away, lost (queue overflow, a failed send).
BROADCAST_OUTCOMES = ("published", "received", "local_only", "dropped")
_REDIS_STATES = {0: "none", 1: "connected", 2: "away"}


def render_json(snap: dict[str, Any]) -> bytes:
    """The snapshot as JSON."""
    return json.dumps(snap, indent=1).encode("utf-8")


def render_prometheus(snap: dict[str, Any]) -> bytes:
    """The snapshot in the Prometheus text exposition format (version 0.0.4)."""
    workers = snap["workers"]
    lines = [
        "# HELP prefork_requests_total Requests served since the master started.",
        "# TYPE prefork_requests_total counter",
        f"prefork_requests_total {snap['requests_total']}",
        "# HELP prefork_received_bytes_total Bytes received from clients since the master started.",
        "# TYPE prefork_received_bytes_total counter",
        f"prefork_received_bytes_total {snap['bytes_received_total']}",
        "# HELP prefork_connections_shed_total Connections closed at max_connections to let new ones in.",
        "# TYPE prefork_connections_shed_total counter",
        f"prefork_connections_shed_total {snap['shed_total']}",
        "# HELP prefork_workers Worker processes by state.",
        "# TYPE prefork_workers gauge",
    ]
    states: dict[str, int] = {}
    for worker in workers:
        states[worker["state"]] = states.get(worker["state"], 0) + 1
    lines += [f'prefork_workers{{state="{state}"}} {count}' for state, count in sorted(states.items())]
    lines += [
        "# HELP prefork_open_connections Open client connections by protocol.",
        "# TYPE prefork_open_connections gauge",
        f'prefork_open_connections{{protocol="http"}} {sum(w["connections"] for w in workers)}',
        f'prefork_open_connections{{protocol="websocket"}} {sum(w["websockets"] for w in workers)}',
        "# HELP prefork_staged_bytes Request body bytes staged, in memory and on disk.",
        "# TYPE prefork_staged_bytes gauge",
        f'prefork_staged_bytes{{location="memory"}} {snap["staged_ram"]}',
        f'prefork_staged_bytes{{location="disk"}} {snap["staged_disk"]}',
        "# HELP prefork_staging_memory_budget_bytes Limit on request body bytes held in memory.",
        "# TYPE prefork_staging_memory_budget_bytes gauge",
        f"prefork_staging_memory_budget_bytes {snap['memory_budget']}",
        "# HELP prefork_uploads_in_progress Request bodies being received.",
        "# TYPE prefork_uploads_in_progress gauge",
        f"prefork_uploads_in_progress {sum(len(w['uploads']) for w in workers)}",
        "# HELP prefork_streams_in_progress Streamed request bodies being read by their handlers.",
        "# TYPE prefork_streams_in_progress gauge",
        f"prefork_streams_in_progress {sum(w['streams'] for w in workers)}",
        "# HELP prefork_broadcast_messages_total Broadcast messages through Redis, by outcome "
        "(local_only: Redis was away, only this server's workers got it).",
        "# TYPE prefork_broadcast_messages_total counter",
        *(f'prefork_broadcast_messages_total{{outcome="{outcome}"}} {count}'
          for outcome, count in snap["broadcast"].items()),
        "# HELP prefork_broadcast_redis_connected Workers whose Redis broadcast transport is connected.",
        "# TYPE prefork_broadcast_redis_connected gauge",
        f"prefork_broadcast_redis_connected {snap['redis_connected']}",
        "# HELP prefork_handler_threads Handler threads, and how many of them run a handler now.",
        "# TYPE prefork_handler_threads gauge",
        f'prefork_handler_threads{{state="busy"}} {sum(w["busy_threads"] for w in workers)}',
        f'prefork_handler_threads{{state="idle"}} {sum(w["threads"] - w["busy_threads"] for w in workers)}',
        "# HELP prefork_worker_heartbeat_age_seconds Time since each worker's last heartbeat.",
        "# TYPE prefork_worker_heartbeat_age_seconds gauge",
    ]
    lines += [f'prefork_worker_heartbeat_age_seconds{{pid="{w["pid"]}"}} {w["heartbeat_age"]}' for w in workers]
    return ("\n".join(lines) + "\n").encode("utf-8")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _threads(worker: dict[str, Any]) -> str:
    """Busy handler threads of a worker, as "busy/all" ("-" when handlers run inline)."""
    return f"{worker['busy_threads']}/{worker['threads']}" if worker["threads"] else "-"


def _broadcast_summary(snap: dict[str, Any]) -> str:
    """"  broadcast via Redis: ..." when any worker has the Redis transport, else ""."""
    if not any(w["broadcast"]["redis"] != "none" for w in snap["workers"]):
        return ""
    counts = snap["broadcast"]
    return (f"  broadcast via Redis: {snap['redis_connected']}/{len(snap['workers'])} workers connected, "
            f"{counts['published']} published, {counts['received']} received, "
            f"{counts['local_only']} local only, {counts['dropped']} dropped")


def render_text(snap: dict[str, Any]) -> str:
    """The snapshot as a terminal table (``prefork-serve status``)."""
    out = [f"requests {snap['requests_total']}  received {_size(snap['bytes_received_total'])}  "
           f"staged RAM {_size(snap['staged_ram'])} / {_size(snap['memory_budget'])}  "
           f"staged disk {_size(snap['staged_disk'])}  shed {snap['shed_total']}" + _broadcast_summary(snap),
           f"{'PID':>8} {'STATE':<9} {'GEN':>3} {'BEAT':>6} {'REQS':>8} {'HTTP':>5} {'WS':>5} "
           f"{'BUSY':>7} {'STREAMS':>7} {'RAM':>10} {'DISK':>10}"]
    for w in snap["workers"]:
        out.append(f"{w['pid']:>8} {w['state']:<9} {w['generation']:>3} {w['heartbeat_age']:>5.1f}s "
                   f"{w['requests']:>8} {w['connections']:>5} {w['websockets']:>5} "
                   f"{_threads(w):>7} {w['streams']:>7} {_size(w['staged_ram']):>10} {_size(w['staged_disk']):>10}")
        for u in w["uploads"]:
            done = f"{100 * u['received'] / u['declared']:.0f}%" if u["declared"] else _size(u["received"])
            out.append(f"{'':>10} upload {u['path']}  {done}  {_size(u['rate'])}/s  ETA {_duration(u['eta'])}")
    return "\n".join(out) + "\n"


_STYLE = """body{font:14px system-ui,sans-serif;margin:2em;color:#222}table{border-collapse:collapse}
td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}th{background:#f4f4f4}
td.l,th.l{text-align:left}.bar{width:240px;height:12px;background:#eee;border-radius:6px;overflow:hidden}
.bar>div{height:100%;background:#2a7ae2}.ready{color:#1a7f37}.stopping{color:#b35900}.booting{color:#888}"""


def render_html(snap: dict[str, Any], refresh: float = 2.0) -> bytes:
    """A self-refreshing HTML page: workers and a progress bar for every upload in flight."""
    rows = []
    uploads = []
    for w in snap["workers"]:
        rows.append(
            f"<tr><td>{w['pid']}</td><td class='l {w['state']}'>{w['state']}</td><td>{w['generation']}</td>"
            f"<td>{w['heartbeat_age']:.1f} s</td><td>{w['requests']}</td><td>{w['connections']}</td>"
            f"<td>{w['websockets']}</td><td>{_threads(w)}</td><td>{w['streams']}</td><td>{_size(w['staged_ram'])}</td>"
            f"<td>{_size(w['staged_disk'])}</td></tr>")
        for u in w["uploads"]:
            pct = 100 * u["received"] / u["declared"] if u["declared"] else 0
            total = _size(u["declared"]) if u["declared"] else "?"
            uploads.append(
                f"<tr><td class='l'>{html.escape(u['path'])}</td><td>{w['pid']}</td>"
                f"<td><div class='bar'><div style='width:{pct:.1f}%'></div></div></td>"
                f"<td>{_size(u['received'])} / {total}</td><td>{_size(u['rate'])}/s</td>"
                f"<td>{_duration(u['eta'])}</td></tr>")
    upload_table = ("<table><tr><th class='l'>path</th><th>worker</th><th class='l'>progress</th>"
                    "<th>received</th><th>rate</th><th>ETA</th></tr>" + "".join(uploads) + "</table>"
                    if uploads else "<p>No uploads in progress.</p>")
    page = f"""<!doctype html><html><head><meta charset="utf-8">
<meta http-equiv="refresh" content="{refresh:g}"><title>prefork status</title><style>{_STYLE}</style></head>
<body><h1>prefork status</h1>
<p>{snap['requests_total']} requests served; {_size(snap['bytes_received_total'])} received;
staged in RAM {_size(snap['staged_ram'])} of {_size(snap['memory_budget'])}; on disk {_size(snap['staged_disk'])};
{snap['shed_total']} idle connections shed at max_connections.{html.escape(_broadcast_summary(snap))}</p>
<h2>Workers</h2><table><tr><th>pid</th><th class='l'>state</th><th>gen</th><th>heartbeat</th>
<th>requests</th><th>http</th><th>ws</th><th>busy threads</th><th>streams</th><th>RAM staged</th><th>disk staged</th></tr>{''.join(rows)}</table>
<h2>Uploads in progress</h2>{upload_table}
<p><a href="?format=json">JSON</a> · <a href="?format=prometheus">Prometheus</a></p></body></html>"""
    return page.encode("utf-8")


def status_response(board: Scoreboard, master_pid: int, peer: str, query: bytes,
                    allow: Sequence[str]) -> ResponseStream:
    """Answer a request for the status page.

    Args:
        board: the scoreboard.
        master_pid: the master's pid.
        peer: the client address (checked against ``allow``).
        query: the raw query string (``format=json`` or ``format=prometheus``).
        allow: the ``[status] allow`` list.

    Returns:
        The response: 403 for clients not allowed, else HTML, JSON or Prometheus text.
    """
    no_cache = [("Cache-Control", "no-store")]
    if not allowed(peer, allow):
        return ResponseStream(403, "Forbidden", [("Content-Type", "text/plain; charset=utf-8")] + no_cache,
                              [b"403 Forbidden: the status page is not available from this address\n"])
    snap = snapshot(board, master_pid)
    fmt = dict(p.split(b"=", 1) for p in query.split(b"&") if b"=" in p).get(b"format", b"html")
    if fmt == b"json":
        body, kind = render_json(snap), "application/json"
    elif fmt == b"prometheus":
        body, kind = render_prometheus(snap), "text/plain; version=0.0.4; charset=utf-8"
    else:
        body, kind = render_html(snap), "text/html; charset=utf-8"
    return ResponseStream(200, "OK", [("Content-Type", kind)] + no_cache, [body])


class StatusPage:
    """The status page, as a wrapper around the application a worker serves.

    Args:
        board: the scoreboard.
        master_pid: the master's pid, for the page.
        path: the request path it answers (``[status] path``, already encoded).
        allow: the ``[status] allow`` list; other clients get 403.
    """

    def __init__(self, board: Scoreboard, master_pid: int, path: bytes, allow: Sequence[str]) -> None:
        self.board = board
        self.master_pid = master_pid
        self.path = path
        self.allow = tuple(allow)

    def answer(self, request: CompleteRequest) -> ResponseStream | None:
        """The status page for a request to ``path`` (403 for a peer not allowed), else None."""
        if request.head.path != self.path:
            return None
        return status_response(self.board, self.master_pid, request.peer[0], request.head.query, self.allow)

    def wrap(self, app: LoadedApp) -> LoadedApp:
        """``app`` with this page in front of it (``LoadedApp.answer_on_loop``)."""
        return dataclasses.replace(app, on_loop=(self, *app.on_loop))
