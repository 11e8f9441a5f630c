"""A WSGI app that misbehaves in the ways a server must survive.

``/snowman`` sets a header that is not latin-1; ``/inject`` puts CR LF into the
status line; ``/two-lengths`` sends two different Content-Length headers;
``/close-raises`` streams a body whose close() raises; ``/ok`` is healthy and
reports the worker's pid.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any


class _RaisingClose:
    def __iter__(self) -> Iterator[bytes]:
        for _ in range(64):
            yield b"x" * 8192

    def close(self) -> None:
        raise RuntimeError("deliberate failure in close()")


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
    if path == "/close-raises":
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _RaisingClose()
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
