"""A WSGI app for the handler pool tests: fast, sleeping and streamed answers.

- ``GET /fast``: a small complete body.
- ``GET /sleep?s=N``: sleeps N s in the handler, then answers.
- ``GET /big?n=N``: a streamed body of N 128 KiB chunks (a generator).
- ``GET /hang-stream``: one chunk, then the generator sleeps 1000 s.
- ``GET /first-slow?s=N&marker=P``: sleeps N s before the first chunk (inside the generator).
- ``GET /file?marker=P``: a wsgi.file_wrapper body; its close() writes the closing thread's name.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qs

CHUNK = 128 * 1024


class _Body:
    def __init__(self, gen: Iterator[bytes], marker: str) -> None:
        self.gen = gen
        self.marker = marker

    def __iter__(self) -> Iterator[bytes]:
        return self.gen

    def close(self) -> None:
        if self.marker:
            with open(self.marker, "a", encoding="ascii") as handle:
                handle.write(f"closed {threading.get_ident()}\n")


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
    path = environ["PATH_INFO"]
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    marker = query.get("marker", "")
    if path == "/sleep":
        time.sleep(float(query.get("s", "1")))
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"slept\n"]
    if path == "/big":
        n = int(query.get("n", "100"))

        def big() -> Iterator[bytes]:
            for i in range(n):
                yield (b"%08d" % i) + b"x" * (CHUNK - 8)

        start_response("200 OK", [("Content-Type", "text/plain")])
        return _Body(big(), marker)
    if path == "/hang-stream":
        def hang() -> Iterator[bytes]:
            yield b"first\n"
            time.sleep(1000)
            yield b"never\n"

        start_response("200 OK", [("Content-Type", "text/plain")])
        return _Body(hang(), marker)
    if path == "/first-slow":
        s = float(query.get("s", "1"))

        def first_slow() -> Iterator[bytes]:
            time.sleep(s)
            yield b"late first\n"
            yield b"second\n"

        start_response("200 OK", [("Content-Type", "text/plain")])
        return _Body(first_slow(), marker)
    if path == "/file":
        import tempfile

        class _File:
            def __init__(self) -> None:
                self.handle = tempfile.TemporaryFile()
                self.handle.write(b"f" * 100_000)
                self.handle.seek(0)

            def read(self, n: int = -1) -> bytes:
                return self.handle.read(n)

            def fileno(self) -> int:
                return self.handle.fileno()

            def close(self) -> None:
                if marker:
                    with open(marker, "a", encoding="ascii") as out:
                        out.write(f"{threading.current_thread().name}\n")
                self.handle.close()

        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](_File())
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"fast\n"]
