"""The Flask app of ``flask_upload`` plus the one line that takes prefork's staged parts.

Every route reports what a Flask user would look at, plus the saved file's
inode and the staged part's path, so a test can tell a rename from a copy.
"""

from __future__ import annotations

import hashlib
import io
import os

from flask import Flask, jsonify, request

from prefork.apps.adapters.flask import StagedFileStorage, staged_uploads

app = staged_uploads(Flask(__name__))
UPLOAD_DIR = os.environ.get("PREFORK_TEST_UPLOADS", "uploads")


def _digest(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


def _inode(storage: object) -> int | None:
    """The staged part's inode, or None when it is held in memory (small) or not staged."""
    if not isinstance(storage, StagedFileStorage):
        return None
    try:
        return os.fstat(storage.stream.fileno()).st_ino
    except io.UnsupportedOperation:
        return None


@app.post("/upload")
def upload():  # type: ignore[no-untyped-def]
    """Save every file part (``save(path)``) and report each, with the text fields."""
    saved = []
    for index, storage in enumerate(request.files.getlist("upload")):
        dest = os.path.join(UPLOAD_DIR, f"saved-{index}")
        staged_inode = _inode(storage)
        storage.save(dest)
        saved.append({"filename": storage.filename, "mimetype": storage.mimetype, "size": os.path.getsize(dest),
                      "sha256": _digest(dest), "renamed": staged_inode == os.stat(dest).st_ino})
    return jsonify(files=saved, form=request.form.to_dict(flat=False), staged=isinstance(
        next(iter(request.files.values()), None), StagedFileStorage), body=len(request.get_data()))


@app.post("/read")
def read():  # type: ignore[no-untyped-def]
    """Read the part through its stream instead of saving it."""
    storage = request.files["upload"]
    return jsonify(sha256=hashlib.sha256(storage.read()).hexdigest(), form=request.form.to_dict())


@app.post("/raw")
def raw():  # type: ignore[no-untyped-def]
    """A body that is not a form: ``get_data`` as without the adapter."""
    return jsonify(sha256=hashlib.sha256(request.get_data()).hexdigest(), mimetype=request.mimetype)


@app.get("/")
def index():  # type: ignore[no-untyped-def]
    """A trivial page."""
    return "hello from flask"
