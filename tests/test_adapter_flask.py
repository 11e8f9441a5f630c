"""The Flask adapter: ``staged_uploads(app)`` makes ``request.files[...].save()`` a rename.

A real Flask app (``tests/apps/flask_staged.py``) served by the real server, with the
one line (``:app``) and without it (``:plain``, Werkzeug re-parses the staged body);
then the adapter's objects without a server.
"""

from __future__ import annotations

import io
import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flask
import pytest
import requests

from prefork.apps.adapters.flask import StagedFileStorage, StagedFormsRequest, staged_uploads
from prefork.apps.handlers import TakesStagedForms
from prefork.apps.loader import load_application
from prefork.apps.wsgi import FORM_ENVIRON_KEY, ParsedFormInput
from tests.adapter_helpers import MiB, parsed_form, Served, assert_written_per_byte, pattern, refused_upload, serve, served_fixture, sha
from tests.server import Server

BIG, SMALL = 3 * MiB, 1000


staged = served_fixture("tests.apps.flask_staged:app")  # with the adapter's one line
plain = served_fixture("tests.apps.flask_staged:plain")  # the same app without it


def _post_files(served: Served) -> dict[str, Any]:
    big, small = pattern(BIG, 1), pattern(SMALL, 2)
    files = [("f", ("big.bin", big, "application/x-big")), ("f", ("small.txt", small, "text/plain")),
             ("empty", ("", b"", "application/octet-stream"))]
    resp = requests.post(served.server.url + "/upload", files=files, data={"note": ["Zoë", "two"]}, timeout=30)
    assert resp.status_code == 200, resp.text
    doc: dict[str, Any] = resp.json()
    assert doc["form"] == {"note": ["Zoë", "two"]}
    by_name = {f["filename"]: f for f in doc["files"]}
    assert [f["field"] for f in doc["files"]] == ["f", "f", "empty"]
    assert by_name["big.bin"]["sha256"] == sha(big) and by_name["big.bin"]["size"] == BIG
    assert by_name["big.bin"]["head"] == big[:16].hex()
    assert by_name["small.txt"]["sha256"] == sha(small) and by_name["small.txt"]["mimetype"] == "text/plain"
    assert by_name["big.bin"]["mimetype"] == "application/x-big"
    assert by_name[""]["size"] == 0 and by_name[""]["sha256"] == sha(b"")
    return doc


def test_fields_and_files_arrive_and_save_is_a_rename(staged: Served) -> None:
    doc = _post_files(staged)
    by_name = {f["filename"]: f for f in doc["files"]}
    assert doc["staged"] is True and doc["rest"] == 0
    assert by_name["big.bin"]["same_inode"] is True  # the saved file is the staged inode
    assert by_name["big.bin"]["content_length"] == BIG and by_name["small.txt"]["content_length"] == SMALL
    umask = os.umask(0)
    os.umask(umask)
    assert {f["mode"] for f in doc["files"]} == {oct(0o666 & ~umask)}, "a new file's mode, as Werkzeug's open()"
    assert not staged.leftovers()


def test_without_the_line_werkzeug_reparses_as_before(plain: Served) -> None:
    doc = _post_files(plain)
    assert doc["staged"] is False
    assert not any(f["same_inode"] for f in doc["files"])
    assert {f["content_length"] for f in doc["files"]} == {0}  # Werkzeug's: the parts declare none


@pytest.mark.parametrize("which, expected", [("staged", (0.97, 1.1)), ("plain", (2.9, 3.2))])
def test_bytes_written_per_byte_uploaded(which: str, expected: tuple[float, float],
                                         request: pytest.FixtureRequest) -> None:
    assert_written_per_byte(request.getfixturevalue(which), expected, 3, which)


def test_save_replaces_an_existing_file(staged: Served) -> None:
    url = staged.server.url + "/overwrite"
    for seed in (4, 5):
        body = pattern(200 * 1024, seed)
        resp = requests.post(url, files={"f": ("x", body)}, data={"name": "same"}, timeout=30)
        assert resp.status_code == 200 and resp.json()["sha256"] == sha(body)
    assert [p.name for p in staged.uploads.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("which", ["staged", "plain"])
def test_non_multipart_posts_are_unchanged(which: str, request: pytest.FixtureRequest) -> None:
    served: Served = request.getfixturevalue(which)
    body = pattern(300 * 1024, 6)
    raw = requests.post(served.server.url + "/raw", data=body, timeout=30,
                        headers={"Content-Type": "application/octet-stream"}).json()
    assert raw == {"sha256": sha(body), "size": len(body), "mimetype": "application/octet-stream",
                   "staged": False, "form": {}}
    form = requests.post(served.server.url + "/raw", data={"a": "1", "b": "Zoë"}, timeout=30).json()
    assert form["form"] == {"a": ["1"], "b": ["Zoë"]} and form["staged"] is False
    # Not exactly multipart/form-data: a raw body (mediatype.is_form_data decides).
    odd = requests.post(served.server.url + "/raw", data=b"--x--", timeout=30,
                        headers={"Content-Type": "multipart/form-datax; boundary=x"}).json()
    assert odd["sha256"] == sha(b"--x--") and odd["staged"] is False


def test_413_over_a_form_limit_leaves_no_staged_file(start_server: Callable[..., Server], tmp_path: Path) -> None:
    served = serve(start_server, tmp_path, "tests.apps.flask_staged:app",
                   config={"uploads": "max_file_size = 1MiB", "limits": "max_field_size = 64KiB"})
    # A first file is staged on disk when the second grows past max_file_size.
    assert refused_upload(served, b"/upload", [(b"a", b"a.bin", 512 * 1024), (b"b", b"b.bin", 4 * MiB)]) == 413
    assert refused_upload(served, b"/upload", [(b"a", b"a.bin", 512 * 1024), (b"t", None, 1 * MiB)]) == 413
    assert not served.leftovers()
    assert list(served.uploads.iterdir()) == []


# --- without a server -------------------------------------------------------------------------------
def test_file_storage_save_links_replaces_and_copies(tmp_path: Path) -> None:
    data = pattern(5000, 7)
    with parsed_form(tmp_path, [("f", "a.bin", data)]) as form:
        storage = StagedFileStorage(form.files["f"])
        assert (storage.filename, storage.name, storage.content_length) == ("a.bin", "f", 5000)
        dest = tmp_path / "dest"
        dest.write_bytes(b"old")
        storage.save(dest)  # a path that exists: replaced, as Werkzeug's open(dst, "wb") would
        assert dest.read_bytes() == data
        assert os.stat(dest).st_ino == os.fstat(storage.stream.fileno()).st_ino
        copy = io.BytesIO()
        storage.save(copy)  # a file object: copied from the stream's position, as Werkzeug does
        assert copy.getvalue() == data
        second = tmp_path / "second"
        storage.stream.seek(0)
        storage.save(str(second))  # the staged file is taken: a second save copies
        assert second.read_bytes() == data and os.stat(second).st_ino != os.stat(dest).st_ino
        umask = os.umask(0)
        os.umask(umask)
        assert stat.S_IMODE(os.stat(dest).st_mode) == 0o666 & ~umask  # not the staging file's 0o600
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temporary name left"


def test_request_takes_the_staged_form(tmp_path: Path) -> None:
    app = staged_uploads(flask.Flask("t"))
    with parsed_form(tmp_path, [("t", None, b"text"), ("f", "a", b"x" * 3000), ("f", "b", b"y")]) as form:
        environ = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": "multipart/form-data; boundary=B",
                   "CONTENT_LENGTH": "4000", "wsgi.input": ParsedFormInput(), FORM_ENVIRON_KEY: form}
        with app.test_request_context(environ_base=environ):
            req = flask.request
            assert req.form.to_dict(flat=False) == {"t": ["text"]}
            assert [s.read() for s in req.files.getlist("f")] == [b"x" * 3000, b"y"]
            assert req.get_data() == b""  # used up, as after Werkzeug's own parse


def test_werkzeug_limits_still_apply(tmp_path: Path) -> None:
    app = staged_uploads(flask.Flask("t"))
    app.config["MAX_FORM_PARTS"] = 2
    with parsed_form(tmp_path, [("t", None, b"1"), ("u", None, b"2"), ("f", "a", b"x")]) as form:
        environ = {"REQUEST_METHOD": "POST", "CONTENT_TYPE": "multipart/form-data; boundary=B",
                   "CONTENT_LENGTH": "100", "wsgi.input": ParsedFormInput(), FORM_ENVIRON_KEY: form}
        with app.test_request_context(environ_base=environ):
            with pytest.raises(Exception) as caught:
                flask.request.form
            assert getattr(caught.value, "code", None) == 413


def test_wsgi_input_of_a_staged_form_refuses_to_read() -> None:
    with pytest.raises(io.UnsupportedOperation, match=r"environ\['prefork.form'\]"):
        ParsedFormInput().read(10)


def test_the_line_declares_it_and_keeps_a_custom_request_class() -> None:
    class Custom(flask.Request):
        marker = True

    app = flask.Flask("t")
    app.request_class = Custom
    assert not isinstance(app, TakesStagedForms)
    assert staged_uploads(app) is app and staged_uploads(app) is app  # twice is once
    assert isinstance(app, TakesStagedForms)
    assert issubclass(app.request_class, StagedFormsRequest) and issubclass(app.request_class, Custom)
    assert app.request_class.__mro__.count(StagedFormsRequest) == 1


def test_the_loader_parses_forms_only_for_the_app_that_declared_it() -> None:
    assert load_application("tests.apps.flask_staged:app", threads=1).forms is not None
    assert load_application("tests.apps.flask_staged:plain", threads=1).forms is None
