"""What the Flask and Django adapter tests share: a served app, bytes written, a refused upload.

Bytes written are the worker's ``wchar`` from ``/proc/PID/io`` (every byte handed to
``write()``-family calls, whatever the filesystem; ``write_bytes`` is reported beside
it), read before and after one upload on a server with a single worker.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from tests.server import RawClient, Server, send_until_answered, staging_fds, wait_for

MiB = 1 << 20
#: Small enough that a test's large parts are staged on disk, large enough for the small ones.
THRESHOLD = "64KiB"


def pattern(size: int, seed: int = 0) -> bytes:
    """``size`` reproducible pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Served:
    """A server and the uploads directory its app saves into."""

    server: Server
    uploads: Path

    @property
    def worker(self) -> psutil.Process:
        (worker,) = self.server.workers()
        return worker

    def leftovers(self) -> list[str]:
        """Staged files still open in the worker, or left in the staging directory."""
        return staging_fds({self.worker.pid}, self.server.staging) + [str(p) for p in self.server.staging.iterdir()]


def serve(start: Callable[..., Server], tmp: Path, app: str, config: dict[str, str] | None = None,
          env: dict[str, str] | None = None) -> Served:
    """Serve ``app`` with one worker, its staged parts on disk past ``THRESHOLD``."""
    uploads = tmp / f"app-uploads-{app.replace(':', '-')}"
    uploads.mkdir(exist_ok=True)
    sections = {"staging": f"memory_threshold = {THRESHOLD}"}
    for name, text in (config or {}).items():
        sections[name] = sections.get(name, "") + "\n" + text
    server = start(app=app, workers=1, threads=2, config=sections,
                   env={"PREFORK_TEST_UPLOADS": str(uploads), **(env or {})})
    return Served(server, uploads)


def written_per_byte(served: Served, upload: Callable[[], Any], size: int) -> tuple[float, float, Any]:
    """``(wchar, write_bytes)`` per uploaded byte while ``upload()`` ran, and what it returned."""
    worker = served.worker
    before = worker.io_counters()
    result = upload()
    wait_for(lambda: not served.leftovers(), 10, what="the request's staged parts are released")
    after = worker.io_counters()
    return ((after.write_chars - before.write_chars) / size,
            (after.write_bytes - before.write_bytes) / size, result)


def refused_upload(served: Served, path: bytes, parts: list[tuple[bytes, bytes | None, int]]) -> int:
    """POST a multipart body of ``parts`` (name, filename or None, size), stopping at the answer.

    Returns the status. The declared length fits; a part grows past a form limit while
    it streams, and the client stops sending once answered, as curl does.
    """
    boundary = b"b0undary"

    def pieces() -> Iterator[bytes]:
        for name, filename, size in parts:
            disposition = b'form-data; name="%s"' % name + (b'; filename="%s"' % filename if filename else b"")
            yield b"--%s\r\nContent-Disposition: %s\r\n\r\n" % (boundary, disposition)
            for _ in range(size // (64 * 1024)):
                yield b"z" * (64 * 1024)
            yield b"\r\n"
        yield b"--%s--\r\n" % boundary

    length = sum(len(piece) for piece in pieces())
    client = RawClient(served.server.connect())
    client.send(b"POST %s HTTP/1.1\r\nHost: t\r\nContent-Type: multipart/form-data; boundary=%s\r\n"
                b"Content-Length: %d\r\n\r\n" % (path, boundary, length))
    send_until_answered(client, pieces())
    status = client.read_response().status
    client.close()
    return status
