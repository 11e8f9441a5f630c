"""A WSGI app that misbehaves in the ways a server must survive.

``/snowman`` sets a header that is not latin-1; ``/inject`` puts CR LF into the
status line; ``/two-lengths`` sends two different Content-Length headers;
``/close-raises`` streams a body whose close() raises; ``/drip`` yields a
block, then waits 2 s before the next (PEP 3333: the first must not wait);
``/ok`` is healthy and reports the worker's pid.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any


class _RaisingClose:
    def __iter__(self) -> Iterator[bytes]:
        for _ in range(64):
            yield b"x" * 8192

    def close(self) -> None:
        raise RuntimeError("deliberate failure in close()")


def _drip() -> Iterator[bytes]:
    yield b"first block\n"
    time.sleep(2)
    yield b"second block\n"


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Dispatch on PATH_INFO."""
    path = environ["PATH_INFO"]
    if path == "/snowman":
        start_response("200 OK", [("X-Name", "\u2603")])
        return [b"snow"]
    if path == "/inject":
        start_response("200 OK\r\nX-Injected: yes", [("Content-Type", "text/plain")])
        return [b"injected"]
    if path == "/two-lengths":
        start_response("200 OK", [("Content-Length", "2"), ("Content-Length", "20")])
        return [b"ok"]
    if path == "/drip":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _drip()
    if path == "/close-raises":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _RaisingClose()
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
