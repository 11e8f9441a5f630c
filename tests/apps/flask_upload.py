"""A plain Flask app, unchanged: saves an uploaded file with request.files[...].save()."""

from __future__ import annotations

import hashlib
import os

from flask import Flask, jsonify, request

app = Flask(__name__)
UPLOAD_DIR = os.environ.get("PREFORK_TEST_UPLOADS", "uploads")


@app.post("/upload")
def upload():  # type: ignore[no-untyped-def]
    """Save the ``upload`` file part and report its name, size and hash."""
    storage = request.files["upload"]
    dest = os.path.join(UPLOAD_DIR, "saved-" + hashlib.sha256(storage.filename.encode()).hexdigest()[:12])
    storage.save(dest)
    with open(dest, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    return jsonify(filename=storage.filename, size=os.path.getsize(dest), sha256=digest,
                   commenter=request.form.get("commenter"))


@app.get("/")
def index():  # type: ignore[no-untyped-def]
    """A trivial page."""
    return "hello from flask"
