"""Test app: a Flask app, unchanged, whose ``/ingest`` reads ``request.stream`` to its end
(under ``[streaming] paths`` it is read while it arrives; elsewhere it was staged)."""

from __future__ import annotations

import hashlib

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.post("/ingest")
def ingest():  # type: ignore[no-untyped-def]
    digest, total = hashlib.sha256(), 0
    while piece := request.stream.read(65536):
        digest.update(piece)
        total += len(piece)
    return jsonify(bytes=total, sha256=digest.hexdigest())
