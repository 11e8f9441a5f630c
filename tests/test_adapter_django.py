"""The Django adapter: prefork's ``get_wsgi_application`` makes saving an upload a rename.

A real Django project (``tests/apps/django_staged.py``: settings, a urls module, a
model ``FileField`` and ``FileSystemStorage``) served by the real server, with the
one line (``:app``) and with Django's own ``get_wsgi_application`` (``:plain``); then
the adapter's objects without a server.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests

from prefork.apps.handlers import TakesStagedForms
from prefork.apps.loader import load_application
from tests.adapter_helpers import MiB, parsed_form, Served, assert_written_per_byte, pattern, refused_upload, serve, served_fixture, sha
from tests.server import Server

BIG, SMALL = 3 * MiB, 1000


staged = served_fixture("tests.apps.django_staged:app")  # with the adapter's one line
plain = served_fixture("tests.apps.django_staged:plain")  # the same app without it


def _post_files(served: Served) -> dict[str, Any]:
    big, other, small = pattern(BIG, 1), pattern(BIG // 2, 2), pattern(SMALL, 3)
    files = [("f", ("big.bin", big, "application/x-big; charset=latin-1")), ("f", ("other.bin", other, None)),
             ("g", ("../../small.txt", small, "text/plain")), ("empty", ("", b"", "application/octet-stream"))]
    resp = requests.post(served.server.url + "/upload", files=files, data={"note": ["Zoë", "two"]}, timeout=30)
    assert resp.status_code == 200, resp.text
    doc: dict[str, Any] = resp.json()
    # A part with an empty file name is a text field to Django's parser, and here too.
    assert doc["form"] == {"note": ["Zoë", "two"], "empty": [""]}
    by_name = {f["name"]: f for f in doc["files"]}
    assert sorted(by_name) == ["big.bin", "other.bin", "small.txt"]
    for name, data in (("big.bin", big), ("other.bin", other), ("small.txt", small)):
        assert by_name[name]["sha256"] == sha(data) and by_name[name]["saved_size"] == len(data)
        assert by_name[name]["size"] == len(data) and by_name[name]["head"] == data[:16].hex()
    assert by_name["big.bin"]["content_type"] == "application/x-big" and by_name["big.bin"]["charset"] == "latin-1"
    assert by_name["big.bin"]["extra"] == {"charset": "latin-1"}
    assert Path(by_name["big.bin"]["path"]).parent.name == "docs"  # saved by the model's FileField
    return doc


def test_fields_and_files_arrive_and_saving_is_a_rename(staged: Served) -> None:
    doc = _post_files(staged)
    assert doc["staged"] is True
    by_name = {f["name"]: f for f in doc["files"]}
    for name in ("big.bin", "other.bin"):
        assert by_name[name]["class"] == "StagedTemporaryFile"
        assert by_name[name]["temporary_in_staging"] and by_name[name]["same_inode"], by_name[name]
    assert by_name["small.txt"]["class"] == "InMemoryUploadedFile"  # under memory_threshold, as Django does
    assert oct(os.stat(by_name["big.bin"]["path"]).st_mode & 0o777) == "0o644"  # FILE_UPLOAD_PERMISSIONS
    assert not staged.leftovers()


def test_with_djangos_own_handler_it_parses_as_before(plain: Served) -> None:
    doc = _post_files(plain)
    assert doc["staged"] is False
    by_name = {f["name"]: f for f in doc["files"]}
    assert by_name["big.bin"]["class"] == "TemporaryUploadedFile" and not by_name["big.bin"]["temporary_in_staging"]


@pytest.mark.parametrize("which, expected", [("staged", (0.97, 1.1)), ("plain", (1.9, 2.2))])
def test_bytes_written_per_byte_uploaded(which: str, expected: tuple[float, float],
                                         request: pytest.FixtureRequest) -> None:
    assert_written_per_byte(request.getfixturevalue(which), expected, 4, which)


@pytest.mark.parametrize("which", ["staged", "plain"])
def test_non_multipart_posts_are_unchanged(which: str, request: pytest.FixtureRequest) -> None:
    served: Served = request.getfixturevalue(which)
    body = pattern(300 * 1024, 5)
    raw = requests.post(served.server.url + "/raw", data=body, timeout=30,
                        headers={"Content-Type": "application/octet-stream"}).json()
    assert raw == {"sha256": sha(body), "size": len(body), "form": {}, "staged": False}
    form = requests.post(served.server.url + "/raw", data={"a": "1", "b": "Zoë"}, timeout=30).json()
    assert form["form"] == {"a": ["1"], "b": ["Zoë"]} and form["staged"] is False


def test_djangos_limits_and_prefork_s_413_leave_nothing(start_server: Callable[..., Server], tmp_path: Path) -> None:
    served = serve(start_server, tmp_path, "tests.apps.django_staged:app",
                   config={"uploads": "max_file_size = 1MiB"}, env={"PREFORK_TEST_MAX_FIELDS": "2"})
    fields = {"a": "1", "b": "2", "c": "3", "d": "4", "e": "5"}
    resp = requests.post(served.server.url + "/upload", files={"f": ("f.bin", pattern(200 * 1024))},
                         data=fields, timeout=30)
    assert resp.status_code == 400  # TooManyFieldsSent, as from Django's own parser
    assert refused_upload(served, b"/upload", [(b"a", b"a.bin", 512 * 1024), (b"b", b"b.bin", 4 * MiB)]) == 413
    assert not served.leftovers()
    assert list(served.uploads.rglob("*")) == []


# --- without a server -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adapter() -> Any:
    importlib.import_module("tests.apps.django_staged")  # configures Django for this process
    return importlib.import_module("prefork.apps.adapters.django")


def test_handler_builds_post_and_files(adapter: Any, tmp_path: Path) -> None:
    from django.core.files.storage import FileSystemStorage
    big = pattern(5000, 6)
    with parsed_form(tmp_path, [("t", None, b"text"), ("f", "a.bin", big), ("f", "b.bin", b"y"), ("n", "", b"")]) as form:
        handler = adapter.StagedFormHandler()
        post, files = handler.handle_raw_input(None, {"prefork.form": form}, 100, b"B", "utf-8")
        assert post.dict() == {"t": "text", "n": ""} and not post._mutable
        first, second = files.getlist("f")
        assert "n" not in files
        staged_name = first.temporary_file_path()
        assert os.path.dirname(staged_name) == str(tmp_path) and os.path.basename(staged_name).startswith("prefork-")
        assert not hasattr(second, "temporary_file_path")  # in RAM: Django reads it to save it
        inode = os.stat(staged_name).st_ino
        saved = FileSystemStorage(location=str(tmp_path / "media")).save("a.bin", first)
        assert os.stat(tmp_path / "media" / saved).st_ino == inode and not os.path.exists(staged_name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["media"], "the PID-named staging name is gone"


def test_handler_leaves_a_body_without_staged_form_to_django(adapter: Any) -> None:
    assert adapter.StagedFormHandler().handle_raw_input(None, {}, 100, b"B", "utf-8") is None


def test_an_unsaved_staged_name_goes_when_the_form_closes(adapter: Any, tmp_path: Path) -> None:
    with parsed_form(tmp_path, [("f", "a.bin", pattern(5000))]) as form:
        _, files = adapter.StagedFormHandler().handle_raw_input(None, {"prefork.form": form}, 1, b"B")
        assert os.path.exists(files["f"].temporary_file_path())
    assert list(tmp_path.iterdir()) == []


def test_file_names_are_sanitized_as_django_does(adapter: Any) -> None:
    from django.http.multipartparser import MultiPartParser
    for name in ["../../etc/passwd", "C:\\x\\y.txt", "a&amp;b", "..", "", "tab\there", "ok.txt"]:
        assert adapter.sanitize_file_name(name) == MultiPartParser.sanitize_file_name(None, name)


def test_the_line_declares_it(adapter: Any) -> None:
    import tests.apps.django_staged as project
    assert isinstance(project.app, TakesStagedForms) and not isinstance(project.plain, TakesStagedForms)
    assert load_application("tests.apps.django_staged:app", threads=1).forms is not None
    assert load_application("tests.apps.django_staged:plain", threads=1).forms is None
