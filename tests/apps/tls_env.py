"""A WSGI app for the TLS tests: what the environ says about the connection, uploads, files.

- ``/env``: JSON of the scheme, the TLS variables and the client address.
- ``POST /upload``: reads ``wsgi.input`` in blocks; answers its size and SHA-256.
- ``/file?size=N``: N bytes of a fixed pattern through ``wsgi.file_wrapper`` (sendfile path).
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Callable, Iterable
from typing import Any

ENV_KEYS = ("wsgi.url_scheme", "HTTPS", "SSL_PROTOCOL", "SSL_CIPHER", "SSL_TLS_SNI", "SSL_CLIENT_VERIFY",
            "SSL_CLIENT_S_DN", "REMOTE_ADDR", "REMOTE_PORT", "HTTP_HOST", "SERVER_NAME", "SERVER_PORT",
            "HTTP_X_FORWARDED_FOR", "HTTP_FORWARDED")
PATTERN = bytes(range(256)) * 4096  # 1 MiB


def file_bytes(size: int) -> bytes:
    """What ``/file?size=N`` serves."""
    return (PATTERN * (size // len(PATTERN) + 1))[:size]


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Route by path."""
    path = environ["PATH_INFO"]
    if path == "/upload":
        digest, size = hashlib.sha256(), 0
        while block := environ["wsgi.input"].read(1 << 20):
            digest.update(block)
            size += len(block)
        return _json(start_response, {"size": size, "sha256": digest.hexdigest()})
    if path == "/file":
        size = int(environ["QUERY_STRING"].partition("=")[2] or 0)
        fh = tempfile.TemporaryFile()
        fh.write(file_bytes(size))
        fh.seek(0)
        start_response("200 OK", [("Content-Type", "application/octet-stream"), ("Content-Length", str(size))])
        wrapper: Iterable[bytes] = environ["wsgi.file_wrapper"](fh)
        return wrapper
    document = {key: environ.get(key) for key in ENV_KEYS}
    document["client_cert"] = environ.get("prefork.client_cert")
    return _json(start_response, document)


def _json(start_response: Callable[..., Any], document: dict[str, Any]) -> list[bytes]:
    payload = json.dumps(document).encode()
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(payload)))])
    return [payload]
