"""No signal, bad config or missing file takes the master down.

A log file that cannot be reopened on USR1, or a HUP whose config names a log
file that cannot be opened, must leave the master, its workers and the port as
they were, with the reason in the error log (issue 11, §2).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import requests

from tests.server import REPO, Server, wait_for

UPLOAD_APP = "tests.apps.upload:app"


def _serves(server: Server, path: str) -> bool:
    return requests.get(server.url + path, timeout=5).status_code == 200


def _generations(server: Server) -> list[int]:
    document = requests.get(server.url + "/server-status?format=json", timeout=5).json()
    return sorted(w["generation"] for w in document["workers"])


def test_usr1_when_the_log_directory_is_gone_keeps_the_old_files(
        start_server: Callable[..., Server], tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    server = start_server(app=UPLOAD_APP, workers=2, log_dir=logs)
    assert _serves(server, "/before")
    # The directory moves away and a plain file takes its name: no log file can be opened there.
    moved = tmp_path / "logs.moved"
    logs.rename(moved)
    logs.write_text("not a directory\n")
    server.signal(signal.SIGUSR1)
    error_log = moved / "error.log"
    wait_for(lambda: error_log.read_text().count("cannot reopen log file") >= 2, 10,
             what="the reopen failures logged (the master's and the workers')")
    assert server.proc.poll() is None, "the master died"
    assert len(server.workers()) == 2
    assert _serves(server, "/after-usr1")
    wait_for(lambda: "/after-usr1 " in (moved / "access.log").read_text(), 5,
             what="access lines still written to the file open before")
    text = error_log.read_text()
    assert f"cannot reopen log file {logs}/error.log: Not a directory; still writing to the file open before" in text
    assert "Traceback" not in text
    assert logs.read_text() == "not a directory\n"


def test_hup_with_an_unopenable_log_file_keeps_the_running_configuration(
        start_server: Callable[..., Server], tmp_path: Path) -> None:
    server = start_server(app=UPLOAD_APP, workers=1)
    good = server.config_path.read_text()
    missing = tmp_path / "no-such-dir" / "error.log"
    server.config_path.write_text(good.replace(f"error_log = {server.error_log}", f"error_log = {missing}"))
    server.signal(signal.SIGHUP)
    wait_for(lambda: "reload failed, keeping the running configuration" in server.error_log.read_text(), 10,
             what="the failed reload logged")
    assert (f"[logging] error_log = '{missing}': cannot open the file for appending: "
            "No such file or directory") in server.error_log.read_text()
    assert server.proc.poll() is None, "the master died"
    assert _serves(server, "/after-bad-hup")
    assert _generations(server) == [1]
    # The running logs were not touched: the error log still gets the master's lines.
    server.config_path.write_text(good)
    server.signal(signal.SIGHUP)
    wait_for(lambda: "reload complete (generation 2)" in server.error_log.read_text(), 15,
             what="a good reload after the bad one")
    wait_for(lambda: _generations(server) == [2], 10, what="generation 2 alone")
    assert "Traceback" not in server.error_log.read_text()


def test_startup_with_an_unopenable_log_file_exits_2_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "access.log"
    config = tmp_path / "server.ini"
    config.write_text(f"[server]\nbind = 127.0.0.1:0\n[logging]\nerror_log = -\naccess_log = {missing}\n")
    result = subprocess.run([sys.executable, "-m", "prefork.cli", "-c", str(config)], cwd=REPO,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2, result.stderr
    assert result.stderr == (f"prefork-serve: {config}: [logging] access_log = '{missing}': cannot open the "
                             "file for appending: No such file or directory\n")
