"""``--reload``: workers restart when the app's source changes; a broken app shows a 500 page.

The end-to-end tests edit a real module under a running ``prefork-serve
--reload`` and watch the answers change, the master staying up throughout.
"""

from __future__ import annotations

import os
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from prefork.apps import reloader
from prefork.apps.loader import failure_app, failure_files, load_application
from tests.server import Server, wait_for

APP_V1 = "def app(environ, start_response):\n    start_response('200 OK', [])\n    return [b'v1']\n"
APP_V2 = APP_V1.replace("v1", "v2")  # same size: a stale bytecode cache would not notice
BROKEN = APP_V1.replace("def app(environ,", "def app(environ")
APP_V3 = APP_V1.replace("v1", "v3")
PID_APP = ("import os\ndef app(environ, start_response):\n    start_response('200 OK', [])\n"
           "    return [str(os.getpid()).encode()]\n")


def _get(server: Server) -> requests.Response:
    return requests.get(server.url + "/", timeout=5, headers={"Connection": "close"})


def _answer(server: Server) -> tuple[int, str] | None:
    try:
        response = _get(server)
    except requests.RequestException:
        return None
    return response.status_code, response.text


def _answers(server: Server, predicate: Callable[[int, str], bool], what: str) -> tuple[int, str]:
    def check() -> tuple[int, str] | None:
        answer = _answer(server)
        return answer if answer is not None and predicate(*answer) else None

    return wait_for(check, 20, interval=0.2, what=what)  # type: ignore[return-value]


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
    # Its first round only records: edit (a new modification time each time) until the
    # thread reports the change, however late that first round comes.
    base = path.stat().st_mtime_ns
    edits = [0]

    def edit_until_seen() -> bool:
        edits[0] += 1
        path.write_text(f"x = {edits[0]}\n")
        os.utime(path, ns=(base, base + edits[0] * 10**9))
        return bool(seen)

    wait_for(edit_until_seen, 5, what="the edit reported")
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


# --- end to end -----------------------------------------------------------------------------------


def test_reload_on_source_change_and_a_broken_app(start_server: Callable[..., Server], tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    module = code / "reload_app.py"
    module.write_text(APP_V1)
    second = int(time.time()) * 10**9
    os.utime(module, ns=(second, second + 100_000_000))
    server = start_server(app="reload_app:app", workers=1, env={"PYTHONDONTWRITEBYTECODE": ""},
                          extra_args=["--reload", "--pythonpath", str(code)])
    assert _get(server).text == "v1"
    master = server.pid

    # The same size and the same whole second: a bytecode cache written for v1 would
    # look valid for v2 (CPython checks seconds and size), so none may be written.
    module.write_text(APP_V2)
    os.utime(module, ns=(second, second + 200_000_000))
    _answers(server, lambda status, text: text == "v2", "the edit served")
    assert f"{module} changed; restarting" in server.output()

    module.write_text(BROKEN)
    status, text = _answers(server, lambda status, text: status == 500, "the 500 page")
    assert "the application 'reload_app:app' could not be loaded" in text
    assert "SyntaxError" in text and str(module) in text
    assert server.proc.poll() is None, "the master must keep running"

    module.write_text(APP_V3)
    _answers(server, lambda status, text: status == 200 and text == "v3", "the fixed app")
    assert server.proc.poll() is None and server.pid == master
    assert "reload is on" in server.output()


def test_broken_app_at_start_under_reload_keeps_the_master(start_server: Callable[..., Server],
                                                          tmp_path: Path) -> None:
    code = tmp_path / "code"
    code.mkdir()
    module = code / "late_app.py"
    module.write_text("import no_such_dependency_here\n" + APP_V1)
    server = start_server(app="late_app:app", workers=1, extra_args=["--reload", "--pythonpath", str(code)])
    status, text = _answers(server, lambda status, text: status == 500, "the 500 page")
    assert "No module named 'no_such_dependency_here'" in text
    module.write_text(APP_V1)  # the failing module's own file is watched
    _answers(server, lambda status, text: status == 200 and text == "v1", "the repaired app")
    assert server.proc.poll() is None


def test_config_change_under_reload_reloads_the_master_once(start_server: Callable[..., Server],
                                                            tmp_path: Path) -> None:
    # "zcode" sorts after "server.ini": a poll round looks at the config file before the app's.
    code = tmp_path / "zcode"
    code.mkdir()
    module = code / "pid_app.py"
    module.write_text(PID_APP)
    server = start_server(app="pid_app:app", workers=2, extra_args=["--reload", "--pythonpath", str(code)])
    before = {p.pid for p in server.workers()}
    # Each worker's first round is its baseline: edit the config only once both have taken it.
    wait_for(lambda: all(f"worker {pid}: --reload is watching" in server.output() for pid in before), 20,
             what="both reloaders watching")
    server.config_path.write_text(server.config_path.read_text().replace("level = debug", "level = info"))
    wait_for(lambda: "reloading: starting generation 2" in server.output(), 20, what="a HUP reload")
    wait_for(lambda: not before & {p.pid for p in server.workers()}, 20, what="old workers replaced")
    assert int(_get(server).text) not in before
    # A fence: touch the app's source, and wait until each new worker reports it. Each has
    # then compared the config file in that round or before, so a second "asking master"
    # (a config change seen again) would be in the log by now.
    new = {p.pid for p in server.workers()}
    stat = module.stat()
    os.utime(module, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    wait_for(lambda: all(f"worker {pid}: {module} changed; restarting" in server.output() for pid in new), 20,
             what="every new worker saw the app's edit")
    log = server.output()
    assert log.count("changed; asking master") == 1, log
    assert "generation 3" not in log
