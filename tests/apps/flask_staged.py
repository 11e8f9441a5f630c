"""A Flask app served with and without prefork's one line of setup (``staged_uploads``).

``app`` has the line, ``plain`` is the same app without it. ``POST /upload`` saves
every file of every field under ``$PREFORK_TEST_UPLOADS`` and reports, per file,
what Flask said about it, the saved file's hash, and whether the saved file is the
very inode the request's stream reads (a rename, not a copy); plus the text fields
and whether prefork handed over a parsed form. ``POST /raw`` hashes
``request.get_data()``. ``GET /`` is a readiness page.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from typing import Any

from flask import Flask, jsonify, request

from prefork.apps.adapters.flask import staged_uploads

UPLOAD_DIR = os.environ.get("PREFORK_TEST_UPLOADS", "uploads")


def _same_inode(stream: Any, path: str) -> bool:
    try:
        return bool(os.fstat(stream.fileno()).st_ino == os.stat(path).st_ino)
    except (AttributeError, OSError, ValueError):  # a BytesIO has no file: not the same
        return False


def _file_report(field: str, storage: Any) -> dict[str, Any]:
    head = storage.read(16)  # the stream works before save, and save still takes all of it
    storage.stream.seek(0)
    dest = os.path.join(UPLOAD_DIR, uuid.uuid4().hex)
    storage.save(dest)
    with open(dest, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    return {"field": field, "filename": storage.filename, "mimetype": storage.mimetype,
            "content_length": storage.content_length, "size": os.path.getsize(dest), "sha256": digest,
            "head": head.hex(), "same_inode": _same_inode(storage.stream, dest), "path": dest,
            "mode": oct(os.stat(dest).st_mode & 0o777)}


def make_app(staged: bool) -> Flask:
    """The test app, with prefork's line (``staged``) or without it."""
    flask_app = Flask(__name__)
    if staged:
        staged_uploads(flask_app)  # the one line

    @flask_app.post("/upload")
    def upload() -> Any:
        files = [_file_report(field, storage) for field, storage in request.files.items(multi=True)]
        return jsonify(files=files, form=request.form.to_dict(flat=False),
                       staged="prefork.form" in request.environ, rest=len(request.get_data()))

    @flask_app.post("/raw")
    def raw() -> Any:
        data = request.get_data()
        return jsonify(sha256=hashlib.sha256(data).hexdigest(), size=len(data), mimetype=request.mimetype,
                       staged="prefork.form" in request.environ, form=request.form.to_dict(flat=False))

    @flask_app.post("/overwrite")
    def overwrite() -> Any:
        dest = os.path.join(UPLOAD_DIR, request.form["name"])
        request.files["f"].save(dest)
        with open(dest, "rb") as handle:
            return jsonify(sha256=hashlib.sha256(handle.read()).hexdigest())

    @flask_app.get("/")
    def index() -> Any:
        return "hello from flask"

    return flask_app


app = make_app(staged=True)
plain = make_app(staged=False)
