"""scripts/upload.py --resumable against the real server: ^C, then the same command resumes.

The interruption is a real SIGINT to the script's process, sent once the server has
received part of the file (its partial upload's data file is not empty), with the process
frozen for the moment so that it cannot finish first; the second run of the same command
must report where it resumes and finish with the file whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.server import REPO, Server, wait_for

SCRIPT = REPO / "scripts" / "upload.py"
# Runs the script as a terminal would: a shell that starts jobs in the background (CI under
# nohup, say) leaves SIGINT ignored, and Python then installs no KeyboardInterrupt handler.
CTRL_C_ENABLED = ("import os, runpy, signal, sys\n"
                  "signal.signal(signal.SIGINT, signal.default_int_handler)\n"
                  "sys.argv = sys.argv[1:]\n"
                  "sys.path[0] = os.path.dirname(sys.argv[0])  # as `python script.py` has it\n"
                  "runpy.run_path(sys.argv[0], run_name='__main__')\n")
MiB = 1 << 20


@pytest.fixture
def server(start_server: Any) -> Server:
    return start_server(app="", workers=2, config={"resumable": "checkpoint = 1MiB\ncheckpoint_interval = 0"})  # type: ignore[no-any-return]


def received_bytes(server: Server) -> list[int]:
    """Sizes of the partial uploads' data files: what the server has received so far."""
    return [p.stat().st_size for p in (server.uploads / ".partial").glob("*.data")]


def test_interrupted_upload_resumes_where_the_server_says(server: Server, tmp_path: Path) -> None:
    data = os.urandom(256 * MiB + 5)
    path = tmp_path / "big file.bin"
    path.write_bytes(data)
    env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path / "cache"))
    command = [sys.executable, "-c", CTRL_C_ENABLED, str(SCRIPT), server.url + "/resumable/", str(path),
               "--resumable", "--quiet"]
    # Frozen (SIGSTOP) the moment the server has some of it, then ^C and let go: the interrupt
    # is taken at the next block it sends, long before the end of 256 MiB. Going away commits
    # what the server received, so the next run resumes past 0.
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: any(received_bytes(server)) or first.poll() is not None, 30, interval=0.002,
                 what="part of the file received")
        first.send_signal(signal.SIGSTOP)
        first.send_signal(signal.SIGINT)
        first.send_signal(signal.SIGCONT)
        _, err = first.communicate(timeout=30)
    finally:
        if first.poll() is None:
            first.kill()
    if first.returncode == 0:
        pytest.fail("the first run finished before it could be interrupted; the file is too small for this machine")
    assert first.returncode == 130, err
    assert "run the same command again to resume" in err
    assert len(list((tmp_path / "cache" / "prefork-upload").iterdir())) == 1  # the upload's URL, kept

    second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert second.returncode == 0, second.stderr
    resumed = re.search(r"resuming at (\d+) % \((\d+) of (\d+) bytes\)", second.stderr)
    assert resumed is not None, second.stderr
    assert 0 < int(resumed.group(2)) < len(data)
    answer = json.loads(second.stdout.splitlines()[1])
    sha256 = hashlib.sha256(data).hexdigest()
    assert answer["files"][0]["sha256"] == sha256 and answer["files"][0]["size"] == len(data)
    assert answer["files"][0]["filename"] == "big file.bin"
    assert f"local sha256: {sha256}" in second.stdout
    assert list((tmp_path / "cache" / "prefork-upload").iterdir()) == []  # done: nothing left to resume
