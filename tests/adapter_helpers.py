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
import pytest
import requests

from prefork.protocol.limits import FormLimits
from prefork.staging.forms import FormData, FormParser
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


def served_fixture(app: str) -> Any:
    """A module-scoped fixture serving ``app`` (``MODULE:NAME``) as ``serve`` does."""

    @pytest.fixture(scope="module")
    def served(start_module_server: Callable[..., Server], tmp_path_factory: pytest.TempPathFactory) -> Served:
        return serve(start_module_server, tmp_path_factory.mktemp(app.split(":")[0].rsplit(".", 1)[-1]), app)

    return served


def assert_written_per_byte(served: Served, expected: tuple[float, float], seed: int, label: str) -> None:
    """Upload 16 MiB as file part ``f`` to ``/upload`` and check the worker wrote
    between ``expected[0]`` and ``expected[1]`` bytes per byte uploaded."""
    size = 16 * MiB
    body = pattern(size, seed)

    def upload() -> Any:
        return requests.post(served.server.url + "/upload", files={"f": ("b.bin", body)}, timeout=60).json()

    wchar, _, doc = written_per_byte(served, upload, size)
    assert doc["files"][0]["sha256"] == sha(body)
    low, high = expected
    assert low <= wchar <= high, f"{label}: {wchar:.3f} bytes written per byte uploaded"


def parsed_form(tmp_path: Path, parts: list[tuple[str, str | None, bytes]], threshold: int = 1024) -> FormData:
    """A ``FormData`` as the server would hand it over: ``(name, filename or None, data)``
    parts parsed with parts past ``threshold`` bytes staged under ``tmp_path``."""
    body = b"".join(b'--B\r\nContent-Disposition: form-data; name="%s"%s\r\n\r\n%s\r\n'
                    % (name.encode(), b'; filename="%s"' % fn.encode() if fn is not None else b"", data)
                    for name, fn, data in parts) + b"--B--\r\n"
    parser = FormParser(b"B", limits=FormLimits(), spool_threshold=threshold, spool_dir=str(tmp_path))
    parser.feed(body)
    parser.feed(b"")
    return parser.finish()
