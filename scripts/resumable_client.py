"""A resumable upload from the command line: the IETF draft's client side, for ``upload.py --resumable``.

Strategy: the upload is created empty first (``POST`` with ``Upload-Complete: ?0``),
so its URL is known before any content is sent, and kept in a small state file
named after the target URL and the file (path, size, mtime), so that the same
command run again, after ^C or a crash, resumes instead of starting over. The
content then goes in one ``PATCH`` from the server's offset with
``Upload-Complete: ?1``, streamed from disk; the answer to it is the
application's answer to the whole file. A dropped connection or a server that
is away (restarting) is retried: ``HEAD`` for the offset, then ``PATCH`` from
there, with a growing delay. ``Upload-Draft-Interop-Version: 9`` is sent
(draft -12); nothing here is specific to prefork.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit, urlunsplit

BLOCK = 1 << 20
INTEROP = {"Upload-Draft-Interop-Version": "9"}
RETRYABLE = (OSError, http.client.HTTPException)


class UploadFailed(Exception):
    """The server refused the upload (not a network failure)."""


@dataclass
class Answer:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes


def state_path(url: str, path: str) -> Path:
    """Where the upload URL of ``path`` to ``url`` is remembered between runs."""
    info = os.stat(path)
    key = hashlib.sha256(f"{url}\0{os.path.abspath(path)}\0{info.st_size}\0{info.st_mtime_ns}".encode()).hexdigest()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "prefork-upload" / f"{key[:32]}.json"


def _request(url: str, method: str, headers: dict[str, str], timeout: float, body: Any = None,
             send: Any = None) -> Answer:
    parts = urlsplit(url)
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname or "", parts.port, timeout=timeout)
    try:
        conn.putrequest(method, urlunsplit(("", "", parts.path or "/", parts.query, "")), skip_accept_encoding=True)
        for key, value in headers.items():
            conn.putheader(key, value)
        conn.endheaders(body)
        if send is not None:
            try:
                send(conn)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the server answered early: read what it said
        response = conn.getresponse()
        return Answer(response.status, response.reason, {k.lower(): v for k, v in response.getheaders()},
                      response.read())
    finally:
        conn.close()


def _create(url: str, name: str, size: int, timeout: float) -> str:
    answer = _request(url, "POST", {**INTEROP, "Upload-Complete": "?0", "Upload-Length": str(size),
                                    "Content-Type": "application/octet-stream", "Content-Length": "0",
                                    "Content-Disposition": f'attachment; filename="{_quoted(name)}"'}, timeout)
    location = answer.headers.get("location")
    if answer.status >= 300 or not location:
        raise UploadFailed(f"creating the upload: {answer.status} {answer.reason}: {answer.body[:200]!r}")
    return urljoin(url, location)


def _offset(location: str, timeout: float) -> int | None:
    """The server's offset for the upload; None when it no longer knows it (start over)."""
    answer = _request(location, "HEAD", dict(INTEROP), timeout)
    if answer.status in (404, 410):
        return None
    if answer.status >= 300 or "upload-offset" not in answer.headers:
        raise UploadFailed(f"asking for the offset: {answer.status} {answer.reason}")
    return int(answer.headers["upload-offset"])


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "").replace("\n", "")


def upload_resumable(url: str, path: str, *, timeout: float, bar_for: Any, retries: int = 10,
                     log: Any = print) -> tuple[Answer, str]:
    """Upload ``path`` to the resumable collection at ``url``, resuming a previous run's upload.

    Args:
        bar_for: ``bar_for(total, initial)`` gives a progress bar (``update``, ``close``).
        retries: network failures in a row tolerated before giving up.
        log: where progress messages go.

    Returns:
        (the answer to the request that completed the upload, local SHA-256 hex).

    Raises:
        UploadFailed: the server refused the upload.
        OSError: the network failed ``retries`` times in a row (the state is kept).
    """
    size = os.path.getsize(path)
    state = state_path(url, path)
    location = json.loads(state.read_text())["location"] if state.exists() else None
    failures = 0
    while True:
        try:
            offset = _offset(location, timeout) if location else None
            if offset is None:
                location, offset = _create(url, os.path.basename(path), size, timeout), 0
                state.parent.mkdir(parents=True, exist_ok=True)
                state.write_text(json.dumps({"location": location}))
            elif offset:
                log(f"resuming at {offset * 100 // max(size, 1)} % ({offset} of {size} bytes)")
            answer = _append(location, path, offset, size, timeout, bar_for)
        except RETRYABLE as exc:
            failures += 1
            if failures > retries:
                raise
            delay = min(30.0, 0.5 * 2 ** (failures - 1))
            log(f"connection failed ({exc}); retrying in {delay:g} s")
            time.sleep(delay)
            continue
        if answer.status in (409, 423):  # moved on, or still held by our previous attempt: ask again
            failures += 1
            if failures > retries:
                raise UploadFailed(f"{answer.status} {answer.reason}: {answer.body[:200]!r}")
            time.sleep(float(answer.headers.get("retry-after", "1")))
            continue
        if answer.status in (404, 410):
            location = None
            continue
        state.unlink(missing_ok=True)
        return answer, _sha256(path)


def _append(location: str, path: str, offset: int, size: int, timeout: float, bar_for: Any) -> Answer:
    headers = {**INTEROP, "Upload-Offset": str(offset), "Upload-Complete": "?1",
               "Content-Type": "application/partial-upload", "Content-Length": str(size - offset)}
    bar = bar_for(size, offset)

    def send(conn: http.client.HTTPConnection) -> None:
        with open(path, "rb") as handle:
            handle.seek(offset)
            while block := handle.read(BLOCK):
                conn.send(block)
                bar.update(len(block))

    try:
        return _request(location, "PATCH", headers, timeout, send=send)
    finally:
        bar.close()


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(BLOCK):
            digest.update(block)
    return digest.hexdigest()
