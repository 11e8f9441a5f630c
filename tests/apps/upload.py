"""Test app: reports what it received and exercises the WSGI surface.

Routes: ``/sha256`` (hash and size of the body, read in pieces), ``/save`` (the body
copied into a new file in the uploads directory in 1 MiB reads; its name, size and hash), ``/stream``
(a streamed response of unknown length), ``/close?marker=&n=`` (an iterable
whose close() writes the marker file; n KiB of body), ``/write`` (the write() callable),
``/file`` (wsgi.file_wrapper over a real file), ``/boom`` (raises),
``/slow?s=N`` (sleeps in the handler), ``/environ`` (environ keys as JSON).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

_FILE_BYTES = bytes(range(256)) * 4096  # 1 MiB of known content


def _json(start_response: Callable[..., Any], document: object, status: str = "200 OK") -> list[bytes]:
    payload = json.dumps(document).encode()
    start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
    return [payload]


def _sha256(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    digest = hashlib.sha256()
    size = 0
    stream = environ["wsgi.input"]
    while chunk := stream.read(1 << 20):
        digest.update(chunk)
        size += len(chunk)
    return _json(start_response, {"sha256": digest.hexdigest(), "size": size,
                                  "content_length": environ.get("CONTENT_LENGTH")})


def _save(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """What a plain WSGI app does with an upload: copy wsgi.input into a file, piece by piece."""
    name = f"raw-{os.urandom(8).hex()}.bin"
    digest, size = hashlib.sha256(), 0
    stream = environ["wsgi.input"]
    with open(os.path.join(environ["prefork.apps.runtime"].uploads_dir, name), "wb") as out:
        while chunk := stream.read(1 << 20):
            out.write(chunk)
            digest.update(chunk)
            size += len(chunk)
    return _json(start_response, {"name": name, "size": size, "sha256": digest.hexdigest()})


def _stream(start_response: Callable[..., Any], count: int) -> Iterator[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    for n in range(count):
        yield b"line %d\n" % n


class _Closing:
    closed_marker = os.path.join(tempfile.gettempdir(), "prefork-test-closed")

    def __init__(self, path: str, count: int = 0) -> None:
        self.path = path
        self.count = count

    def __iter__(self) -> Iterator[bytes]:
        yield b"a"
        yield b"b"
        for _ in range(self.count):
            yield b"c" * 1024

    def close(self) -> None:
        with open(self.path, "w", encoding="ascii") as handle:
            handle.write("closed")


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Dispatch on PATH_INFO."""
    path = environ["PATH_INFO"]
    query = dict(p.split("=", 1) for p in environ["QUERY_STRING"].split("&") if "=" in p)
    if path == "/sha256":
        return _sha256(environ, start_response)
    if path == "/save":
        return _save(environ, start_response)
    if path == "/stream":
        return _stream(start_response, int(query.get("n", "1000")))
    if path == "/write":
        write = start_response("200 OK", [("Content-Type", "text/plain")])
        write(b"written ")
        return [b"returned"]
    if path == "/file":
        handle = tempfile.TemporaryFile()
        handle.write(_FILE_BYTES)
        handle.seek(0)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](handle)  # type: ignore[no-any-return]
    if path == "/close":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _Closing(query["marker"], int(query.get("n", "0")))
    if path == "/boom":
        raise RuntimeError("deliberate failure in the test app")
    if path == "/slow":
        time.sleep(float(query.get("s", "1")))
        return _json(start_response, {"slept": float(query.get("s", "1"))})
    if path == "/environ":
        keys = {k: v for k, v in environ.items() if isinstance(v, (str, bool, int))}
        return _json(start_response, keys)
    return _json(start_response, {"path": path, "method": environ["REQUEST_METHOD"]})
