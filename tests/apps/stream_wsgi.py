"""Test app: a plain WSGI app for ``[streaming] paths``: reads ``wsgi.input`` to its end,
in pieces, as gunicorn apps read a streaming body, and answers what it saw."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from typing import Any


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    stream = environ["wsgi.input"]
    digest, total = hashlib.sha256(), 0
    while piece := stream.read(65536):
        digest.update(piece)
        total += len(piece)
    body = json.dumps({"bytes": total, "sha256": digest.hexdigest(), "content_length": environ["CONTENT_LENGTH"],
                       "seekable": bool(getattr(stream, "seekable", lambda: False)())}).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]
