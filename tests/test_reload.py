"""``--reload``: workers restart when the app's source changes; a broken app shows a 500 page.

The watcher and the failure page; the end-to-end tests come with the flag.
"""

from __future__ import annotations

import os
import sys
import time
import types
from pathlib import Path

import pytest

from prefork import reloader
from prefork.loader import failure_app, failure_files, load_application

BROKEN = "def app(environ start_response):\n    return [b'v1']\n"


# --- the watcher ------------------------------------------------------------------------------


def test_poll_reports_a_changed_file_once(tmp_path: Path) -> None:
    path = tmp_path / "watched.py"
    path.write_text("x = 1\n")
    reloader.watch_file(str(path))
    watcher = reloader.Reloader(lambda p: None, lambda p: None)
    assert str(path) not in watcher.poll()  # the first round only records
    assert watcher.poll() == []
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns - 10**9))  # older counts too
    assert watcher.poll() == [str(path)]
    assert watcher.poll() == []


def test_source_files_maps_bytecode_to_source(tmp_path: Path) -> None:
    module = types.ModuleType("fake")
    module.__file__ = str(tmp_path / "fake.pyc")
    reloader.set_config_file(str(tmp_path / "server.ini"))
    try:
        files = reloader.source_files([module, types.ModuleType("no_file")])
    finally:
        reloader.set_config_file(None)
    assert str(tmp_path / "fake.py") in files and str(tmp_path / "server.ini") in files
    assert str(tmp_path / "fake.pyc") not in files


def test_reloader_thread_calls_back_and_stops(tmp_path: Path) -> None:
    path = tmp_path / "edited.py"
    path.write_text("x = 1\n")
    reloader.watch_file(str(path))
    seen: list[str] = []
    watcher = reloader.Reloader(seen.append, lambda p: None, interval=0.05)
    watcher.start()
    time.sleep(0.2)
    path.write_text("x = 22\n")
    watcher.join(5)
    assert not watcher.is_alive() and seen == [str(path)]


def test_failed_load_under_reload_serves_the_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "syntax_fail_mod.py").write_text(BROKEN)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # load_application(reload=True) sets it
    with pytest.raises(SyntaxError):
        load_application("syntax_fail_mod:app", threads=1)
    app = load_application("syntax_fail_mod:app", threads=1, reload=True)
    assert sys.dont_write_bytecode is True
    assert str(tmp_path / "syntax_fail_mod.py") in reloader.source_files([])  # watched
    assert app is not None


def test_failure_app_answers_500_with_the_error() -> None:
    try:
        raise ImportError("no module named demo")
    except ImportError as exc:
        error = exc
    status: list[str] = []
    body = b"".join(failure_app("m:app", error)({}, lambda line, headers: status.append(line)))
    assert status == ["500 Internal Server Error"]
    assert body.startswith(b"prefork: the application 'm:app' could not be loaded.\n")
    assert body.endswith(b"ImportError: no module named demo\n")
    assert failure_files(error) == [__file__]
