"""Completed resumable uploads seen by WSGI apps: a plain one and a Flask one.

On ``POST /resumable/`` (where the server hands over a completed upload) each reads
``wsgi.input`` to its end, saves ``environ["prefork.upload"]`` under
``$PREFORK_TEST_UPLOADS`` and answers JSON: the upload's own size and sha256, the
hash of what ``wsgi.input`` gave, and the saved file's. A tus client only gets the
server's 204 for a completion, so the same JSON is also written next to the saved
file (``<name>.report.json``) for the test to read.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask, jsonify, request

UPLOAD_DIR = os.environ.get("PREFORK_TEST_UPLOADS", "uploads")


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _report(environ: dict[str, Any], input_bytes: bytes, kind: str) -> dict[str, Any]:
    """Save the completed upload and describe it (also as ``<name>.report.json``)."""
    upload = environ["prefork.upload"]
    name = f"{kind}-{secrets.token_hex(6)}"
    dest = os.path.join(UPLOAD_DIR, name)
    upload.save(dest)
    report = {
        "kind": kind, "name": name, "method": environ["REQUEST_METHOD"], "path": environ["PATH_INFO"],
        "content_length": environ.get("CONTENT_LENGTH"), "content_type": environ.get("CONTENT_TYPE"),
        "upload_size": upload.size, "upload_sha256": upload.sha256, "filename": upload.filename,
        "input_size": len(input_bytes), "input_sha256": hashlib.sha256(input_bytes).hexdigest(),
        "saved_size": os.path.getsize(dest), "saved_sha256": _file_sha256(dest),
    }
    with open(dest + ".report.json", "w", encoding="utf-8") as handle:
        json.dump(report, handle)
    return report


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Plain WSGI: ``POST /resumable/`` with a completed upload; 404 for anything else."""
    if environ["REQUEST_METHOD"] != "POST" or environ["PATH_INFO"] != "/resumable/" \
            or "prefork.upload" not in environ:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found\n"]
    body = json.dumps(_report(environ, environ["wsgi.input"].read(), "wsgi")).encode()
    start_response("201 Created", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]


flask_app = Flask(__name__)


@flask_app.post("/resumable/")
def completed():  # type: ignore[no-untyped-def]
    """Flask, unchanged: the completed upload from the environ, the body from request.get_data()."""
    return jsonify(_report(request.environ, request.get_data(cache=False), "flask")), 201
