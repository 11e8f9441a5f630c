"""A 1 GiB resumable upload through everything that can go wrong, finished by tuspy.

The client's connection is cut at random offsets, a worker is SIGKILLed in the
middle of an append, and then the whole server is (master and workers, SIGKILL)
and started again on the same directories; after each, the offset the server
reports is checked against what was sent and what was durably committed, and in
the end tuspy resumes from the stored URL and the file in the gallery must have
the SHA-256 of the file sent. The offsets come from a seeded generator, printed
when the test fails.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
from collections.abc import Callable
from pathlib import Path

import psutil
from tusclient import client


from tests.server import RawClient, Server, process_gone, wait_for, worker_holding
from tests.test_resumable_server import (MiB, TUS, WAIT, _gallery_entry, _head_bytes, _offset, _partial_dir, _record,
                                         _tus_create, _tus_head, _uploads_in_flight)

GiB = 1024 * MiB
SEED = 16
CONFIG = {"resumable": "checkpoint = 8MiB\ncheckpoint_interval = 0"}
BLOCK = 4 * MiB


def _make_file(path: Path, size: int, rng: random.Random) -> str:
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        for _ in range(size // BLOCK):
            block = rng.randbytes(BLOCK)
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def _append_part(server: Server, upload_path: str, source: Path, offset: int, stop: int, size: int) -> RawClient:
    """A tus PATCH from ``offset`` announcing the rest of the file, of which only the bytes up to
    ``stop`` are sent; returns once the server has received them, with the socket still open."""
    fields = {**TUS, "Upload-Offset": str(offset), "Content-Type": "application/offset+octet-stream",
              "Content-Length": str(size - offset)}
    raw = RawClient(server.connect())
    raw.send(_head_bytes("PATCH", upload_path, fields))
    with open(source, "rb") as data:
        data.seek(offset)
        left = stop - offset
        while left:
            piece = data.read(min(BLOCK, left))
            raw.sock.sendall(piece)
            left -= len(piece)
    wait_for(lambda: stop - offset in _uploads_in_flight(server), WAIT, what=f"{stop - offset} body bytes received")
    return raw


def _kill_all(server: Server) -> None:
    processes = [psutil.Process(server.proc.pid), *server.workers()]
    for process in processes:
        process.send_signal(signal.SIGKILL)
    psutil.wait_procs(processes, timeout=WAIT)


def test_gigabyte_upload_survives_cuts_a_killed_worker_and_a_killed_server(
        start_server: Callable[..., Server], tmp_path: Path) -> None:
    rng = random.Random(SEED)
    source = tmp_path / "one-gigabyte.bin"
    sha256 = _make_file(source, GiB, rng)
    server = start_server(app="", workers=2, config=CONFIG)
    upload_path = _tus_create(server, GiB)
    offset = 0

    for _ in range(3):  # the client goes away at a random offset: everything it sent is kept
        stop = offset + rng.randrange(16 * MiB, 160 * MiB)
        _append_part(server, upload_path, source, offset, stop, GiB).close()
        wait_for(lambda: _offset(_tus_head(server, upload_path)) == stop, WAIT, what=f"offset {stop} reported")
        offset = stop

    stop = offset + rng.randrange(64 * MiB, 160 * MiB)  # a worker dies in the middle of an append
    raw = _append_part(server, upload_path, source, offset, stop, GiB)
    wait_for(lambda: _record(server, upload_path)["offset"] > offset, WAIT, what="a checkpoint past the last offset")
    pid = worker_holding(server, raw.sock)
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: process_gone(pid), WAIT, what="the killed worker gone")
    raw.close()
    server.wait_ready()
    after_kill = _offset(_tus_head(server, upload_path))
    assert offset < after_kill <= stop, (SEED, offset, after_kill, stop)
    offset = after_kill

    stop = offset + rng.randrange(64 * MiB, 160 * MiB)  # and then the whole server
    raw = _append_part(server, upload_path, source, offset, stop, GiB)
    wait_for(lambda: _record(server, upload_path)["offset"] > offset, WAIT, what="a checkpoint past the last offset")
    _kill_all(server)
    raw.close()
    again = start_server(app="", workers=2, config=CONFIG)
    recorded = _record(again, upload_path)["offset"]
    assert offset < recorded <= stop, (SEED, offset, recorded, stop)
    assert _offset(_tus_head(again, upload_path)) == recorded
    data_file = _partial_dir(again) / (upload_path.rsplit("/", 1)[1] + ".data")
    assert data_file.stat().st_size == recorded  # bytes past the durable offset were cut off

    uploader = client.Uploader(str(source), url=again.url + upload_path, chunk_size=64 * MiB)
    assert uploader.offset == recorded
    uploader.upload()
    entry = _gallery_entry(again, sha256)  # the SHA-256 the server computed across the resumptions
    assert entry is not None and entry["size"] == GiB
    with open(again.uploads / entry["name"], "rb") as saved:  # and the bytes on disk agree
        assert hashlib.file_digest(saved, "sha256").hexdigest() == sha256
    assert not data_file.exists()
