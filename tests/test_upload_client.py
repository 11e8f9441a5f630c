"""scripts/upload.py against the real server: multipart and raw, streamed, with the local SHA-256."""

from __future__ import annotations

import hashlib
import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.server import REPO, Server

SCRIPT = REPO / "scripts" / "upload.py"
MiB = 1 << 20
# Runs the script and reports its peak RSS (KiB) on the last line of stderr. VmHWM, not
# ru_maxrss: Linux carries ru_maxrss over from the (large) forked pytest across execve.
_MEASURED = (
    "import runpy, sys\n"
    "sys.argv = sys.argv[1:]\n"
    "try:\n"
    "    runpy.run_path(sys.argv[0], run_name='__main__')\n"
    "finally:\n"
    "    hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM:')][0].split()[1]\n"
    "    print('maxrss', hwm, file=sys.stderr)\n"
)


@pytest.fixture(scope="module")
def server(start_module_server: Any) -> Server:
    return start_module_server(app="", workers=2)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("client") / "sample photo.bin"
    path.write_bytes(os.urandom(5 * MiB + 123))
    return path


def run(*args: str, measured: bool = False) -> subprocess.CompletedProcess[str]:
    prefix = [sys.executable, "-c", _MEASURED] if measured else [sys.executable]
    return subprocess.run([*prefix, str(SCRIPT), *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO)


def answer(out: str) -> tuple[str, dict[str, Any], str]:
    status, body, digest = out.strip().split("\n")
    return status, json.loads(body), digest.removeprefix("local sha256: ")


@pytest.mark.parametrize("raw", [False, True], ids=["multipart", "raw"])
def test_upload_and_hash(server: Server, sample: Path, raw: bool) -> None:
    result = run(f"{server.url}/upload", str(sample), *(["--raw"] if raw else []))
    assert result.returncode == 0, result.stderr
    status, body, local = answer(result.stdout)
    expected = hashlib.sha256(sample.read_bytes()).hexdigest()
    assert status == "201 Created"
    assert local == expected
    stored = body["files"][0]
    assert stored["sha256"] == expected and stored["size"] == sample.stat().st_size
    assert stored["filename"] == "sample photo.bin"
    assert (server.uploads / stored["name"]).read_bytes() == sample.read_bytes()
    # The progress bar (stderr) shows the total and a rate, both in binary units.
    assert "5.00 MiB/5.00 MiB" in result.stderr
    assert re.search(r"[0-9] [KMG]iB/s\]", result.stderr), result.stderr
    assert not re.search(r"[0-9.][kMG]B", result.stderr), "decimal labels on 1024-based numbers"


def test_custom_field_and_server_error(server: Server, sample: Path) -> None:
    result = run(f"{server.url}/upload", str(sample), "--field", "other", "--quiet")
    assert result.returncode == 0, result.stderr  # the demo takes files from any field
    result = run(f"{server.url}/no-such-route", str(sample), "--quiet")
    assert result.returncode == 1
    assert result.stdout.startswith("404 Not Found")


def test_413_is_reported(start_server: Any, sample: Path) -> None:
    server = start_server(app="", config={"limits": "max_body_size = 1MiB"})
    result = run(f"{server.url}/upload", str(sample), "--quiet")
    assert result.returncode == 1
    assert result.stdout.startswith("413 ")
    assert re.search(r"local sha256: [0-9a-f]{64}", result.stdout)


def test_streams_without_reading_the_file_into_ram(server: Server, tmp_path: Path) -> None:
    big = tmp_path / "big.bin"
    block = os.urandom(MiB)
    with open(big, "wb") as handle:
        for _ in range(192):
            handle.write(block)
    result = run(f"{server.url}/upload", str(big), "--raw", "--quiet", measured=True)
    assert result.returncode == 0, result.stderr
    maxrss_kib = int(result.stderr.strip().split("\n")[-1].split()[1])
    assert maxrss_kib * 1024 < 96 * MiB, f"client peaked at {maxrss_kib} KiB for a 192 MiB file"
    assert answer(result.stdout)[1]["files"][0]["size"] == 192 * MiB


# Runs the script with tqdm made unimportable, as in a plain ``pip install -e .``.
_NO_TQDM = "import runpy, sys\nsys.modules['tqdm'] = None\nsys.argv = sys.argv[1:]\nrunpy.run_path(sys.argv[0], run_name='__main__')\n"


def test_without_tqdm_a_one_line_message_and_quiet_still_works(server: Server, sample: Path) -> None:
    argv = [sys.executable, "-c", _NO_TQDM, str(SCRIPT), f"{server.url}/upload", str(sample)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 1
    assert result.stderr == ("upload: the progress bar needs tqdm, which is not installed: "
                             "pip install -e '.[upload]' (or pip install tqdm), or pass --quiet\n")
    result = subprocess.run(argv + ["--quiet"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr
    assert answer(result.stdout)[0] == "201 Created"


def test_binary_size_labels() -> None:
    namespace = runpy.run_path(str(SCRIPT))
    size = namespace["binary_size"]
    assert [size(n) for n in (0, 1023, 1024, 5 * MiB + 123, 3 << 30)] == [
        "0 B", "1023 B", "1.00 KiB", "5.00 MiB", "3.00 GiB"]
