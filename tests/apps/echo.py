"""The conformance echo app: answers every request with a JSON description of it.

The contract is ../shared/conformance/http/README.md: method, path (not
percent-decoded), query, version, every header line as received in order, the
body (base64) and chunked trailers. Strings are the received bytes as latin-1.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable
from typing import Any


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Echo the parsed request as JSON."""
    raw_target = environ["RAW_URI"]
    path, _, query = raw_target.partition("?")
    query = query.partition("#")[0]
    path = path.partition("#")[0]
    if "://" in path:  # absolute-form: keep only the path
        path = "/" + path.split("://", 1)[1].partition("/")[2]
    body = environ["wsgi.input"].read()
    document = {
        "method": environ["REQUEST_METHOD"],
        "path": path,
        "query": query,
        "version": environ["SERVER_PROTOCOL"],
        "headers": [list(pair) for pair in environ["prefork.raw_headers"]],
        "body_b64": base64.b64encode(body).decode("ascii"),
        "trailers": [list(pair) for pair in environ["prefork.trailers"]],
    }
    payload = json.dumps(document).encode("utf-8")
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
    return [payload]
