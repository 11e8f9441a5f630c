"""The Flask adapter: one line, and ``request.files[...].save()`` is a rename of the staged part.

A real Flask app (``tests/apps/flask_staged.py``) runs in the real server.
"Written once" is measured the way an operator would: the worker's
``/proc/PID/io`` ``wchar`` (bytes passed to write(2)) over one upload, against
the same upload through the unchanged Flask app (``tests/apps/flask_upload.py``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import requests

from tests.server import Server

pytest.importorskip("flask")

MiB = 1 << 20


def staged_server(start_server: Callable[..., Server], tmp_path: Path, app: str = "tests.apps.flask_staged:app",
                  config: dict[str, str] | None = None) -> tuple[Server, Path]:
    uploads = tmp_path / "flask-uploads"
    uploads.mkdir()
    server = start_server(app=app, workers=1, env={"PREFORK_TEST_UPLOADS": str(uploads)}, config=config)
    assert requests.get(server.url + "/", timeout=5).text == "hello from flask"
    return server, uploads


def written_by_worker(server: Server) -> int:
    (worker,) = server.workers()
    return int(psutil.Process(worker.pid).io_counters().write_chars)


def test_fields_and_several_files_arrive_and_save_is_a_rename(start_server: Callable[..., Server],
                                                               tmp_path: Path) -> None:
    server, uploads = staged_server(start_server, tmp_path)
    big = os.urandom(3 * MiB)
    files = [("upload", ("big.bin", big, "application/octet-stream")),
             ("upload", ("empty.txt", b"", "text/plain")),
             ("upload", ("notes – ü.txt", b"small text\n", "text/plain"))]
    resp = requests.post(server.url + "/upload", files=files, data={"who": ["Zoë", "Ana"], "n": "3"}, timeout=30)
    assert resp.status_code == 200, resp.text
    doc = resp.json()
    assert doc["staged"] is True
    assert doc["body"] == 0  # the body went into the parts: wsgi.input is empty
    assert doc["form"] == {"who": ["Zoë", "Ana"], "n": ["3"]}
    assert [(f["filename"], f["mimetype"], f["size"], f["sha256"]) for f in doc["files"]] == [
        ("big.bin", "application/octet-stream", len(big), hashlib.sha256(big).hexdigest()),
        ("empty.txt", "text/plain", 0, hashlib.sha256(b"").hexdigest()),
        ("notes – ü.txt", "text/plain", 11, hashlib.sha256(b"small text\n").hexdigest()),
    ]
    assert doc["files"][0]["renamed"], "save() of a part staged on disk copied it instead of linking it"
    assert (uploads / "saved-0").read_bytes() == big
    assert sorted(p.name for p in uploads.iterdir()) == ["saved-0", "saved-1", "saved-2"]  # no temporary left
    assert not list(server.staging.iterdir()), "staged parts outlived the request"


def test_save_replaces_an_existing_file_as_werkzeug_does(start_server: Callable[..., Server],
                                                          tmp_path: Path) -> None:
    server, uploads = staged_server(start_server, tmp_path)
    (uploads / "saved-0").write_bytes(b"an older upload")
    resp = requests.post(server.url + "/upload", files={"upload": ("a.bin", b"new bytes")}, timeout=30)
    assert resp.status_code == 200, resp.text
    assert (uploads / "saved-0").read_bytes() == b"new bytes"
    assert [p.name for p in uploads.iterdir()] == ["saved-0"]


def test_a_part_can_be_read_instead_of_saved(start_server: Callable[..., Server], tmp_path: Path) -> None:
    server, _ = staged_server(start_server, tmp_path)
    payload = os.urandom(2 * MiB + 17)
    resp = requests.post(server.url + "/read", files={"upload": ("r.bin", payload)}, data={"k": "v"}, timeout=30)
    assert resp.json() == {"sha256": hashlib.sha256(payload).hexdigest(), "form": {"k": "v"}}


def test_a_body_that_is_not_a_form_is_unchanged(start_server: Callable[..., Server], tmp_path: Path) -> None:
    server, _ = staged_server(start_server, tmp_path)
    payload = os.urandom(MiB)
    resp = requests.post(server.url + "/raw", data=payload, headers={"Content-Type": "application/octet-stream"},
                         timeout=30)
    assert resp.json() == {"sha256": hashlib.sha256(payload).hexdigest(), "mimetype": "application/octet-stream"}
    # "multipart/form-datax" is not a form (prefork.protocol.mediatype decides): a raw body too.
    resp = requests.post(server.url + "/raw", data=b"x=1", headers={"Content-Type": "multipart/form-datax"},
                         timeout=30)
    assert resp.json()["sha256"] == hashlib.sha256(b"x=1").hexdigest()


def test_a_form_over_the_limit_is_413_and_leaves_nothing(start_server: Callable[..., Server],
                                                          tmp_path: Path) -> None:
    server, uploads = staged_server(start_server, tmp_path, config={"limits": "max_body_size = 1048576"})
    resp = requests.post(server.url + "/upload", files={"upload": ("big.bin", os.urandom(2 * MiB))}, timeout=30)
    assert resp.status_code == 413
    assert not list(uploads.iterdir()) and not list(server.staging.iterdir())


@pytest.mark.parametrize(("app", "most", "least"), [
    ("tests.apps.flask_staged:app", 1.1, 0.0),  # staged once, then linked into place
    ("tests.apps.flask_upload:app", None, 1.9),  # staged, re-parsed by Werkzeug, then copied
])
def test_bytes_written_per_byte_uploaded(start_server: Callable[..., Server], tmp_path: Path, app: str,
                                         most: float | None, least: float) -> None:
    server, uploads = staged_server(start_server, tmp_path, app=app)
    size = 24 * MiB
    before = written_by_worker(server)
    resp = requests.post(server.url + "/upload", files={"upload": ("f.bin", os.urandom(size))}, timeout=60)
    assert resp.status_code == 200, resp.text
    per_byte = (written_by_worker(server) - before) / size
    assert per_byte >= least
    if most is not None:
        assert per_byte <= most, f"{per_byte:.2f} bytes written per byte uploaded"
