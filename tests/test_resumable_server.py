"""Resumable uploads end to end: tus (tuspy and raw) and the IETF draft on the real server.

Interrupted appends, a SIGKILLed worker, a whole-server restart, concurrent requests
for one upload, cancellation, limits, expiry, and the completed upload as the demo
gallery and WSGI apps (plain and Flask) see it.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tusclient import client
from tusclient.storage import filestorage

from prefork.staging.partial_uploads import PartialUploadStore
from tests.server import RawClient, Response, Server, process_gone, request, status, wait_for, worker_holding

MiB = 1 << 20
PREFIX = "/resumable/"
TUS = {"Tus-Resumable": "1.0.0"}
DRAFT = {"Upload-Draft-Interop-Version": "9"}
PROBLEM = "https://iana.org/assignments/http-problem-types#"
# Bounded waits: generous for a loaded 2-core machine, never a sleep for correctness.
WAIT = 10.0
WSGI_APP = "tests.apps.resumable_wsgi:app"
FLASK_APP = "tests.apps.resumable_wsgi:flask_app"


# --- helpers ------------------------------------------------------------------------------------
def _content(size: int, seed: str) -> bytes:
    """``size`` incompressible bytes, different for every ``seed``."""
    return hashlib.shake_256(seed.encode()).digest(size)


def _file(tmp: Path, size: int, seed: str) -> tuple[Path, bytes]:
    data = _content(size, seed)
    path = tmp / f"{seed}.bin"
    path.write_bytes(data)
    return path, data


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _head_bytes(method: str, path: str, fields: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: t", *(f"{k}: {v}" for k, v in fields.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _send(server: Server, method: str, path: str, fields: dict[str, str], body: bytes = b"") -> Response:
    """One request on a new connection; a Content-Length is added for any body."""
    if body or method in ("POST", "PATCH"):
        fields = {**fields, "Content-Length": str(len(body))}
    return request(server, _head_bytes(method, path, fields) + body, head_request=method == "HEAD")


def _tus_create(server: Server, length: int) -> str:
    """A tus upload of ``length`` bytes; its path."""
    resp = _send(server, "POST", PREFIX, {**TUS, "Upload-Length": str(length)})
    assert resp.status == 201, (resp.raw_head, resp.body)
    location = resp.header("Location")
    assert location is not None and location.startswith(PREFIX), resp.raw_head
    return location


def _tus_head(server: Server, path: str) -> Response:
    return _send(server, "HEAD", path, TUS)


def _tus_patch(server: Server, path: str, offset: int, data: bytes) -> Response:
    fields = {**TUS, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream"}
    return _send(server, "PATCH", path, fields, data)


def _offset(resp: Response) -> int:
    value = resp.header("Upload-Offset")
    assert value is not None, resp.raw_head
    return int(value)


def _partial_dir(server: Server) -> Path:
    return server.uploads / ".partial"


def _upload_files(server: Server, path: str) -> list[str]:
    """The names in the partial store that belong to the upload at ``path``."""
    upload_id = path.rsplit("/", 1)[1]
    return sorted(n for n in os.listdir(_partial_dir(server)) if n.startswith(upload_id))


def _record(server: Server, path: str) -> dict[str, Any]:
    upload_id = path.rsplit("/", 1)[1]
    return json.loads((_partial_dir(server) / f"{upload_id}.json").read_bytes())


def _gallery_entry(server: Server, sha256: str) -> dict[str, Any] | None:
    resp = _send(server, "GET", "/api/files", {"Connection": "close"})
    assert resp.status == 200, resp.raw_head
    return next((f for f in json.loads(resp.body)["files"] if f["sha256"] == sha256), None)


def _assert_in_gallery(server: Server, data: bytes) -> dict[str, Any]:
    entry = _gallery_entry(server, _sha(data))
    assert entry is not None, f"no gallery entry with sha256 {_sha(data)}"
    assert entry["size"] == len(data)
    stored = server.uploads / entry["name"]
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == _sha(data)
    return entry


def _uploads_in_flight(server: Server) -> list[int]:
    """Bytes received so far by every request body the status page shows in progress."""
    return [u["received"] for w in status(server)["workers"] for u in w["uploads"]]


def _start_append(server: Server, path: str, offset: int, total: int, first: bytes) -> RawClient:
    """A tus PATCH announcing ``total`` bytes of which only ``first`` is sent; the socket
    stays open. Returns once the server has received all of ``first``."""
    fields = {**TUS, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream",
              "Content-Length": str(total)}
    raw = RawClient(server.connect())
    raw.send(_head_bytes("PATCH", path, fields) + first)
    wait_for(lambda: len(first) in _uploads_in_flight(server), WAIT, what=f"{len(first)} body bytes received")
    return raw


def _closed_by_server(raw: RawClient, timeout: float) -> bytes:
    """Whatever the server sends until it closes the connection (reset counts as closed)."""
    raw.sock.settimeout(timeout)
    received = b""
    try:
        while True:
            data = raw.sock.recv(65536)
            if not data:
                return received
            received += data
    except ConnectionResetError:
        return received


def _tus_client(server: Server) -> client.TusClient:
    return client.TusClient(server.url + PREFIX)


@pytest.fixture(scope="module")
def demo(start_module_server: Callable[..., Server]) -> Server:
    """One demo server for the tests that need nothing special (1 MiB checkpoints)."""
    return start_module_server(app="", config={"resumable": "checkpoint = 1MiB\ncheckpoint_interval = 0"})


# --- 1. tuspy, whole file ------------------------------------------------------------------------
def test_tuspy_upload_in_chunks_reaches_the_gallery(demo: Server, tmp_path: Path) -> None:
    path, data = _file(tmp_path, 20 * MiB + 12345, "tuspy-whole")
    uploader = _tus_client(demo).uploader(str(path), chunk_size=4 * MiB, metadata={"filename": "whole.bin"})
    uploader.upload()
    assert uploader.offset == len(data)
    entry = _assert_in_gallery(demo, data)
    assert entry["filename"] == "whole.bin"
    upload_path = "/" + uploader.url.split("/", 3)[3]
    names = _upload_files(demo, upload_path)
    assert all(n.endswith(".json") for n in names), names  # the data file went to the gallery
    record = _record(demo, upload_path)
    assert record["complete"] is True and record["offset"] == len(data) and record["sha256"] == _sha(data)


# --- 2. interrupted append, resumed by tuspy from its stored URL --------------------------------
def test_interrupted_tus_append_keeps_what_was_sent_and_tuspy_resumes(demo: Server, tmp_path: Path) -> None:
    path, data = _file(tmp_path, 3 * MiB, "interrupted")
    storage = filestorage.FileStorage(str(tmp_path / "tus-urls.json"))
    first = _tus_client(demo).uploader(str(path), chunk_size=MiB, store_url=True, url_storage=storage)
    first.set_url(first.create_url())
    upload_path = "/" + first.url.split("/", 3)[3]
    sent = MiB + 54321
    fields = {**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream",
              "Content-Length": str(len(data))}
    with RawClient(demo.connect()) as raw:
        raw.send(_head_bytes("PATCH", upload_path, fields) + data[:sent])
        raw.sock.shutdown(socket.SHUT_WR)
        _closed_by_server(raw, WAIT)
    head = _tus_head(demo, upload_path)
    assert head.status == 200, head.raw_head
    assert _offset(head) == sent
    assert head.header("Upload-Length") == str(len(data))
    assert head.header("Cache-Control") == "no-store"
    resumed = _tus_client(demo).uploader(str(path), chunk_size=MiB, store_url=True, url_storage=storage)
    assert resumed.url == first.url and resumed.offset == sent
    resumed.upload()
    _assert_in_gallery(demo, data)


def test_tuspy_small_chunks_across_two_workers(start_server: Callable[..., Server], tmp_path: Path) -> None:
    # Each PATCH of tuspy is a new connection, which either worker may accept: the one that
    # answered the last append must have let go of the upload by the time it answered.
    server = start_server(app="", workers=2)
    path, data = _file(tmp_path, 3 * MiB, "two-workers")
    uploader = _tus_client(server).uploader(str(path), chunk_size=128 * 1024)
    uploader.upload()
    assert uploader.offset == len(data)
    _assert_in_gallery(server, data)


# --- 3. the worker SIGKILLed mid-append ---------------------------------------------------------
def test_worker_killed_mid_append_keeps_a_durable_prefix(start_server: Callable[..., Server], tmp_path: Path) -> None:
    server = start_server(app="", config={"resumable": "checkpoint = 1MiB\ncheckpoint_interval = 0"})
    path, data = _file(tmp_path, 6 * MiB, "killed")
    upload_path = _tus_create(server, len(data))
    sent = 3 * MiB + MiB // 2
    raw = _start_append(server, upload_path, 0, len(data), data[:sent])
    try:
        wait_for(lambda: _record(server, upload_path)["offset"] > 0, WAIT, what="a checkpoint committed")
        pid = worker_holding(server, raw.sock)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: process_gone(pid), WAIT, what="the worker gone")
        assert _closed_by_server(raw, WAIT) == b""
    finally:
        raw.close()
    wait_for(lambda: any(w.pid != pid for w in server.workers()), WAIT, what="a new worker")
    server.wait_ready()
    recorded = _record(server, upload_path)["offset"]
    data_file = _partial_dir(server) / (upload_path.rsplit("/", 1)[1] + ".data")
    assert data_file.stat().st_size >= recorded  # the kill may leave bytes past the record
    head = _tus_head(server, upload_path)
    assert head.status == 200, head.raw_head
    offset = _offset(head)
    assert 0 < offset <= sent
    assert offset == recorded
    assert data_file.stat().st_size == offset  # cut back to what the record vouches for
    uploader = client.Uploader(str(path), url=server.url + upload_path, chunk_size=2 * MiB)
    assert uploader.offset == offset
    uploader.upload()
    _assert_in_gallery(server, data)


# --- 4. the whole server restarted between two appends ------------------------------------------
def test_upload_resumes_across_a_server_restart(start_server: Callable[..., Server], tmp_path: Path) -> None:
    files = tmp_path / "client"
    files.mkdir()
    path, data = _file(files, 4 * MiB + 777, "restart")
    before = start_server(app="", config={"resumable": "checkpoint = 1MiB\ncheckpoint_interval = 0"})
    uploader = _tus_client(before).uploader(str(path), chunk_size=MiB)
    uploader.upload(stop_at=2 * MiB)
    assert uploader.offset == 2 * MiB
    upload_path = "/" + uploader.url.split("/", 3)[3]
    before.stop()
    assert before.wait() == 0
    after = start_server(app="", config={"resumable": "checkpoint = 1MiB\ncheckpoint_interval = 0"})
    assert after.uploads == before.uploads
    resumed = client.Uploader(str(path), url=after.url + upload_path, chunk_size=MiB)
    assert resumed.offset == 2 * MiB
    resumed.upload()
    _assert_in_gallery(after, data)
    assert all(n.endswith(".json") for n in _upload_files(after, upload_path))


# --- 5. the IETF draft, raw -----------------------------------------------------------------------
def _heads(stream: bytes) -> list[tuple[str, dict[str, str]]]:
    """The status lines and fields of every response head in a raw (bodiless) stream."""
    heads = []
    for block in stream.split(b"\r\n\r\n")[:-1]:
        status_line, *lines = block.decode("latin-1").split("\r\n")
        heads.append((status_line, dict(line.split(": ", 1) for line in lines)))
    return heads


def _draft_creation_fields(length: int) -> dict[str, str]:
    return {**DRAFT, "Upload-Complete": "?0", "Content-Type": "application/octet-stream",
            "Content-Length": str(length)}


def test_draft_creation_stream_has_104_with_location_then_201(demo: Server) -> None:
    data = _content(200_000, "draft-104")
    with RawClient(demo.connect()) as raw:
        raw.send(_head_bytes("POST", PREFIX, {**_draft_creation_fields(len(data)), "Connection": "close"}) + data)
        stream = _closed_by_server(raw, WAIT)
    (interim, early), (final, created) = _heads(stream)
    assert interim == "HTTP/1.1 104 Upload Resumption Supported", stream[:300]
    assert final == "HTTP/1.1 201 Created", stream[:600]
    location = created["Location"]
    assert location.startswith(PREFIX) and early["Location"] == location
    assert "max-age=" in early["Upload-Limit"] and "max-size=" in early["Upload-Limit"]
    assert early["Upload-Draft-Interop-Version"] == "9"
    assert created["Upload-Offset"] == str(len(data))
    assert created["Upload-Complete"] == "?0"
    assert created["Upload-Draft-Interop-Version"] == "9"
    _cancel(demo, location)


def test_draft_creation_104_arrives_before_the_content_is_in(demo: Server) -> None:
    # The 104's point (draft §4.2.2): a client whose creation is cut off still knows the
    # upload's URL. So it must leave before the server has the whole content.
    data = _content(300_000, "draft-104-early")
    with RawClient(demo.connect(3.0)) as raw:
        raw.send(_head_bytes("POST", PREFIX, _draft_creation_fields(len(data))) + data[:100_000])
        try:
            interim = raw.read_until(b"\r\n\r\n")
        except TimeoutError:
            interim = b""
        raw.send(data[100_000:])
        created = raw.read_response()
    location = created.header("Location")
    assert created.status == 201 and location is not None
    _cancel(demo, location)
    assert interim.startswith(b"HTTP/1.1 104 "), "no 104 within 3 s while the content was still coming"
    assert f"Location: {location}".encode() in interim


def test_draft_creation_without_interop_version_gets_no_104(demo: Server) -> None:
    fields = {"Upload-Complete": "?0", "Content-Length": "5", "Connection": "close"}
    with RawClient(demo.connect()) as raw:
        raw.send(_head_bytes("POST", PREFIX, fields) + b"hello")
        stream = _closed_by_server(raw, WAIT)
    [(final, created)] = _heads(stream)  # one response, no interim before it
    assert final == "HTTP/1.1 201 Created", stream[:300]
    assert created["Location"].startswith(PREFIX)
    assert created["Upload-Offset"] == "5"
    assert created["Upload-Complete"] == "?0"
    assert "Upload-Draft-Interop-Version" not in created
    _cancel(demo, created["Location"])


def _cancel(server: Server, path: str) -> None:
    resp = _send(server, "DELETE", path, {})
    assert resp.status == 204, resp.raw_head


def test_draft_offset_retrieval_mismatch_and_completion(demo: Server) -> None:
    data = _content(2 * MiB + 99, "draft-full")
    resp = _send(demo, "POST", PREFIX, {**DRAFT, "Upload-Complete": "?0"}, data[:MiB])
    assert resp.status == 201, resp.raw_head
    location = resp.header("Location")
    assert location is not None

    head = _send(demo, "HEAD", location, DRAFT)
    assert head.status == 204, head.raw_head
    assert head.header("Upload-Offset") == str(MiB)
    assert head.header("Upload-Complete") == "?0"
    assert head.header("Cache-Control") == "no-store"
    limit = head.header("Upload-Limit")
    assert limit is not None and "max-age=" in limit

    append = {**DRAFT, "Content-Type": "application/partial-upload"}
    wrong = _send(demo, "PATCH", location, {**append, "Upload-Offset": "7", "Upload-Complete": "?0"}, b"x" * 10)
    assert wrong.status == 409, wrong.raw_head
    assert wrong.header("Content-Type") == "application/problem+json"
    assert wrong.header("Upload-Offset") == str(MiB)
    problem = json.loads(wrong.body)
    assert problem["type"].endswith("#mismatching-upload-offset")
    assert problem["expected-offset"] == MiB and problem["provided-offset"] == 7

    done = _send(demo, "PATCH", location, {**append, "Upload-Offset": str(MiB), "Upload-Complete": "?1"}, data[MiB:])
    assert done.status == 201, (done.raw_head, done.body)
    assert done.header("Upload-Complete") == "?1"
    saved = json.loads(done.body)["files"]
    assert [f["sha256"] for f in saved] == [_sha(data)] and saved[0]["size"] == len(data)
    _assert_in_gallery(demo, data)

    completed = _send(demo, "HEAD", location, DRAFT)
    assert completed.status == 204, completed.raw_head
    assert completed.header("Upload-Offset") == str(len(data))
    assert completed.header("Upload-Complete") == "?1"
    assert completed.header("Upload-Length") == str(len(data))



def test_draft_append_to_a_completed_upload_is_refused_with_400(demo: Server) -> None:
    # A completed upload is never modified again (draft §4.4.2; check_append's 400), and
    # the server still knows it: HEAD answers Upload-Complete: ?1 for it.
    data = _content(1000, "draft-completed")
    created = _send(demo, "POST", PREFIX, {**DRAFT, "Upload-Complete": "?0"}, data)
    location = created.header("Location")
    assert created.status == 201 and location is not None, created.raw_head
    done = _send(demo, "PATCH", location, {**DRAFT, "Content-Type": "application/partial-upload",
                                           "Upload-Offset": str(len(data)), "Upload-Complete": "?1"})
    assert done.status == 201 and done.header("Upload-Complete") == "?1", done.raw_head
    assert [f["sha256"] for f in json.loads(done.body)["files"]] == [_sha(data)]
    head = _send(demo, "HEAD", location, DRAFT)
    assert head.status == 204 and head.header("Upload-Complete") == "?1", head.raw_head
    append = {**DRAFT, "Content-Type": "application/partial-upload", "Upload-Complete": "?1"}
    empty = _send(demo, "PATCH", location, {**append, "Upload-Offset": str(len(data))})
    assert empty.status == 400, (empty.raw_head, empty.body)
    more = _send(demo, "PATCH", location, {**append, "Upload-Offset": str(len(data))}, b"more")
    assert more.status == 400, (more.raw_head, more.body)


def test_draft_options_announce_limits(demo: Server) -> None:
    resp = _send(demo, "OPTIONS", PREFIX, {})
    assert resp.status == 204, resp.raw_head
    accept = resp.header("Accept-Patch")
    assert accept is not None and "application/partial-upload" in accept
    limit = resp.header("Upload-Limit")
    assert limit is not None and "max-size=10737418240" in limit


def test_tus_creation_with_upload_and_deferred_length(demo: Server) -> None:
    stream = {**TUS, "Content-Type": "application/offset+octet-stream"}
    data = _content(300_000, "tus-with-upload")
    created = _send(demo, "POST", PREFIX, {**stream, "Upload-Length": str(len(data))}, data[:100_000])
    assert created.status == 201 and _offset(created) == 100_000, created.raw_head
    assert created.header("Upload-Expires") is not None
    location = created.header("Location")
    assert location is not None
    done = _tus_patch(demo, location, 100_000, data[100_000:])
    assert done.status == 204 and _offset(done) == len(data), done.raw_head
    _assert_in_gallery(demo, data)

    deferred_data = _content(5000, "tus-deferred")
    deferred = _send(demo, "POST", PREFIX, {**TUS, "Upload-Defer-Length": "1"})
    location = deferred.header("Location")
    assert deferred.status == 201 and location is not None, deferred.raw_head
    head = _tus_head(demo, location)
    assert head.header("Upload-Defer-Length") == "1" and head.header("Upload-Length") is None
    assert _offset(_tus_patch(demo, location, 0, deferred_data[:2000])) == 2000
    last = _send(demo, "PATCH", location, {**stream, "Upload-Offset": "2000", "Upload-Length": str(len(deferred_data))},
                 deferred_data[2000:])
    assert last.status == 204 and _offset(last) == len(deferred_data), last.raw_head
    assert _tus_head(demo, location).header("Upload-Length") == str(len(deferred_data))
    _assert_in_gallery(demo, deferred_data)


# --- 6. concurrent requests for one upload -------------------------------------------------------
def test_offset_retrieval_takes_over_a_stalled_append(demo: Server) -> None:
    data = _content(4 * MiB, "stalled")
    upload_path = _tus_create(demo, len(data))
    sent = MiB + MiB // 2 + 3
    raw = _start_append(demo, upload_path, 0, len(data), data[:sent])
    try:
        started = time.monotonic()
        head = _tus_head(demo, upload_path)
        assert time.monotonic() - started < 5.0
        assert head.status == 200, head.raw_head
        assert _offset(head) == sent
        assert _closed_by_server(raw, WAIT) == b""  # superseded: closed without an answer
    finally:
        raw.close()
    resumed = _tus_patch(demo, upload_path, sent, data[sent:])
    assert resumed.status == 204, resumed.raw_head
    assert _offset(resumed) == len(data)
    _assert_in_gallery(demo, data)


def test_second_append_while_the_first_is_active_gets_423(demo: Server) -> None:
    data = _content(3 * MiB, "second-append")
    upload_path = _tus_create(demo, len(data))
    sent = MiB + 1000
    raw = _start_append(demo, upload_path, 0, len(data), data[:sent])
    try:
        fields = {**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream",
                  "Content-Length": str(len(data))}
        busy = request(demo, _head_bytes("PATCH", upload_path, fields))  # refused before its content
        assert busy.status == 423, busy.raw_head
        assert busy.header("Retry-After") == "1"
        assert busy.header("Tus-Resumable") == "1.0.0"
        # The refusal asked the first append to let go: the server closes it.
        assert _closed_by_server(raw, WAIT) == b""
    finally:
        raw.close()
    head = _tus_head(demo, upload_path)
    assert _offset(head) == sent
    resumed = _tus_patch(demo, upload_path, sent, data[sent:])
    assert resumed.status == 204, resumed.raw_head
    assert _offset(resumed) == len(data)
    _assert_in_gallery(demo, data)


# --- 7. cancellation ----------------------------------------------------------------------------
def test_tus_delete_removes_the_upload(demo: Server) -> None:
    upload_path = _tus_create(demo, 10_000)
    appended = _tus_patch(demo, upload_path, 0, b"y" * 4000)
    assert appended.status == 204 and _offset(appended) == 4000
    upload_id = upload_path.rsplit("/", 1)[1]
    assert _upload_files(demo, upload_path) == [f"{upload_id}.data", f"{upload_id}.json"]
    deleted = _send(demo, "DELETE", upload_path, TUS)
    assert deleted.status == 204, deleted.raw_head
    assert deleted.header("Tus-Resumable") == "1.0.0"
    head = _tus_head(demo, upload_path)
    assert head.status == 404, head.raw_head
    assert head.header("Upload-Offset") is None
    assert _upload_files(demo, upload_path) == []
    assert _send(demo, "DELETE", upload_path, TUS).status == 404
    assert _tus_patch(demo, upload_path, 4000, b"z").status == 404


# --- 8. limits and refusals ---------------------------------------------------------------------
def test_limits_and_refusals(start_server: Callable[..., Server]) -> None:
    server = start_server(app="", config={"resumable": "max_size = 1MiB\nmax_uploads_per_client = 2"})
    too_big = _send(server, "POST", PREFIX, {**TUS, "Upload-Length": str(2 * MiB)})
    assert too_big.status == 413, too_big.raw_head
    assert too_big.header("Tus-Max-Size") == str(MiB)
    assert too_big.header("Tus-Resumable") == "1.0.0"
    limit = too_big.header("Upload-Limit")
    assert limit is not None and f"max-size={MiB}" in limit

    old = _send(server, "POST", PREFIX, {"Tus-Resumable": "0.2.2", "Upload-Length": "10"})
    assert old.status == 412, old.raw_head
    assert old.header("Tus-Version") == "1.0.0"

    _tus_create(server, 100)
    _tus_create(server, 100)
    third = _send(server, "POST", PREFIX, {**TUS, "Upload-Length": "100"})
    assert third.status == 429, third.raw_head
    assert third.header("Retry-After") is not None

    unknown = _tus_head(server, PREFIX + "A" * 24)
    assert unknown.status == 404, unknown.raw_head
    assert unknown.header("Upload-Offset") is None
    for bad in ("short", "not..an..id!!!!!!!!!!!", "A" * 65):
        resp = _tus_head(server, PREFIX + bad)
        assert resp.status == 404, (bad, resp.raw_head)
    assert _tus_patch(server, PREFIX + "B" * 24, 0, b"data").status == 404


# --- 9. expiry -------------------------------------------------------------------------------------
def test_expired_upload_is_not_served_and_is_swept(start_server: Callable[..., Server]) -> None:
    server = start_server(app="", config={"resumable": "expire_after = 1s"})
    upload_path = _tus_create(server, 1000)
    appended = _tus_patch(server, upload_path, 0, b"q" * 100)
    assert appended.status == 204
    record = _record(server, upload_path)
    assert record["expires"] - record["created"] <= 2.0
    first = _tus_head(server, upload_path)
    assert first.status == 200 and _offset(first) == 100
    wait_for(lambda: _tus_head(server, upload_path).status == 404, WAIT, interval=0.2, what="the upload expired")
    assert _tus_patch(server, upload_path, 100, b"q").status == 404
    upload_id = upload_path.rsplit("/", 1)[1]
    assert _upload_files(server, upload_path) == [f"{upload_id}.data", f"{upload_id}.json"]  # not swept yet
    store = PartialUploadStore(str(_partial_dir(server)), 1.0)
    assert store.sweep(now=record["created"]) == 0  # as of its creation it was live
    assert _upload_files(server, upload_path) == [f"{upload_id}.data", f"{upload_id}.json"]
    assert store.sweep() == 1
    assert _upload_files(server, upload_path) == []


# --- 10. WSGI apps see the completed upload -----------------------------------------------------
def test_wsgi_app_gets_the_completed_tus_upload(start_server: Callable[..., Server], tmp_path: Path) -> None:
    saved = tmp_path / "saved"
    saved.mkdir()
    server = start_server(app=WSGI_APP, env={"PREFORK_TEST_UPLOADS": str(saved)},
                          config={"resumable": "checkpoint = 1MiB\ncheckpoint_interval = 0"})
    path, data = _file(tmp_path, 3 * MiB + 5, "wsgi")
    uploader = _tus_client(server).uploader(str(path), chunk_size=MiB,
                                            metadata={"filename": "w.bin", "filetype": "application/x-test"})
    uploader.upload()
    reports = sorted(saved.glob("*.report.json"))
    assert len(reports) == 1
    report = json.loads(reports[0].read_text())
    assert report["kind"] == "wsgi" and report["method"] == "POST" and report["path"] == PREFIX
    assert report["content_length"] == str(len(data))
    assert report["content_type"] == "application/x-test"
    assert report["filename"] == "w.bin"
    assert report["upload_size"] == report["input_size"] == report["saved_size"] == len(data)
    assert report["upload_sha256"] == report["input_sha256"] == report["saved_sha256"] == _sha(data)
    assert (saved / report["name"]).read_bytes() == data
    upload_path = "/" + uploader.url.split("/", 3)[3]
    assert all(n.endswith(".json") for n in _upload_files(server, upload_path))


def test_flask_app_gets_a_draft_upload_completed_in_one_request(start_server: Callable[..., Server],
                                                                tmp_path: Path) -> None:
    saved = tmp_path / "saved"
    saved.mkdir()
    server = start_server(app=FLASK_APP, env={"PREFORK_TEST_UPLOADS": str(saved)})
    data = _content(2 * MiB + 1, "flask")
    resp = _send(server, "POST", PREFIX, {"Upload-Complete": "?1", "Content-Type": "text/csv",
                                          "Content-Disposition": 'attachment; filename="f.csv"'}, data)
    assert resp.status == 201, (resp.raw_head, resp.body)
    assert resp.header("Upload-Complete") == "?1"
    report = json.loads(resp.body)
    assert report["kind"] == "flask" and report["filename"] == "f.csv"
    assert report["content_type"] == "text/csv"
    assert report["upload_size"] == report["input_size"] == report["saved_size"] == len(data)
    assert report["upload_sha256"] == report["input_sha256"] == report["saved_sha256"] == _sha(data)


def test_a_chunked_tus_append_that_reaches_the_length_completes_the_upload(demo: Server) -> None:
    data = _content(3 * MiB + 11, "chunked-tus")
    upload_path = _tus_create(demo, len(data))
    fields = {**TUS, "Upload-Offset": "0", "Content-Type": "application/offset+octet-stream",
              "Transfer-Encoding": "chunked"}
    body = b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + MiB]), data[i:i + MiB]) for i in range(0, len(data), MiB))
    resp = request(demo, _head_bytes("PATCH", upload_path, fields) + body + b"0\r\n\r\n")
    assert resp.status == 204, (resp.raw_head, resp.body)
    assert _offset(resp) == len(data)
    _assert_in_gallery(demo, data)  # completed on the bytes that arrived, not on a Content-Length
