"""``prefork-serve --check-config`` catches what start-up would refuse (real subprocesses).

Exit codes: 0 fine, 2 bad configuration (unknown user or group, a log file or
pidfile the master cannot write), 3 the application cannot be imported. The
import is checked as ``[server] user``, so those tests need root (they run as
root here and on CI) and the ``nobody`` account.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server import REPO

APP = "tests.apps.echo:app"

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="checks as another user need root")


def _check(config: Path | None, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "prefork.cli", "--check-config", *args]
    if config is not None:
        argv += ["-c", str(config)]
    env = {k: v for k, v in os.environ.items() if k != "WEB_CONCURRENCY"}
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=30,
                          env=dict(env, PYTHONPATH=str(REPO)))


def _ini(where: Path, text: str) -> Path:
    path = where / "check.ini"
    path.write_text(text)
    return path


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory that ``nobody`` can reach and write (tmp_path's parents are root-only)."""
    path = Path(tempfile.mkdtemp(prefix="prefork-check-", dir="/tmp"))
    path.chmod(0o777)
    yield path
    shutil.rmtree(path)


# --- user and group ---------------------------------------------------------------------------


def test_unknown_user_and_group_are_both_named(tmp_path: Path) -> None:
    result = _check(_ini(tmp_path, "[server]\nuser = no-such-user\ngroup = no-such-group\n"), APP)
    assert result.returncode == 2
    assert result.stderr == ("prefork-serve: [server] user = 'no-such-user': no such user\n"
                             "prefork-serve: [server] group = 'no-such-group': no such group\n")
    assert result.stdout == ""


def test_unknown_user_from_the_command_line(tmp_path: Path) -> None:
    result = _check(None, "-u", "no-such-user", APP)
    assert result.returncode == 2
    assert "[server] user = 'no-such-user': no such user" in result.stderr


# --- the application -----------------------------------------------------------------------------


def test_unimportable_app_exits_3_with_the_import_error() -> None:
    result = _check(None, "tests.apps.does_not_exist:app")
    assert result.returncode == 3
    assert result.stderr.startswith("prefork-serve: cannot load the application "
                                    "'tests.apps.does_not_exist:app': No module named 'tests.apps.does_not_exist'\n")
    result = _check(None, "tests.apps.echo:no_such_app")
    assert result.returncode == 3
    assert "module 'tests.apps.echo' has no attribute 'no_such_app'" in result.stderr


def test_app_with_a_syntax_error_shows_file_and_line(tmp_path: Path) -> None:
    (tmp_path / "broken_app.py").write_text("import os\n\ndef app(environ, start_response:\n    pass\n")
    result = _check(None, "--pythonpath", str(tmp_path), "broken_app:app")
    assert result.returncode == 3
    assert "cannot load the application 'broken_app:app'" in result.stderr
    assert f'File "{tmp_path / "broken_app.py"}", line 3' in result.stderr
    assert "SyntaxError" in result.stderr
    assert "prefork/checks.py" not in result.stderr  # the app's frames, not ours


def test_app_raising_at_import_shows_its_traceback(tmp_path: Path) -> None:
    (tmp_path / "raising_app.py").write_text("import helper_mod\n")
    (tmp_path / "helper_mod.py").write_text("raise RuntimeError('no database')\n")
    result = _check(None, "--chdir", str(tmp_path), "raising_app:app")
    assert result.returncode == 3
    assert "'raising_app:app': no database" in result.stderr
    assert re.search(r"helper_mod\.py\", line 1, in <module>\n.*\nRuntimeError: no database\n$",
                     result.stderr), result.stderr


@needs_root
def test_app_is_imported_as_the_service_user(open_dir: Path) -> None:
    module = open_dir / "root_only_app.py"
    module.write_text("def app(environ, start_response):\n    return [b'']\n")
    module.chmod(0o600)  # root can read it; nobody, whom the workers run as, cannot
    open_dir.chmod(0o755)
    assert _check(None, "--pythonpath", str(open_dir), "root_only_app:app").returncode == 0
    result = _check(None, "--pythonpath", str(open_dir), "-u", "nobody", "root_only_app:app")
    assert result.returncode == 3
    assert "Permission denied" in result.stderr


# --- files the master writes -----------------------------------------------------------------------


@needs_root
def test_everything_writable_by_the_service_user_passes(open_dir: Path) -> None:
    (open_dir / "logs").mkdir()
    shutil.chown(open_dir / "logs", "nobody")
    existing = open_dir / "access.log"
    existing.touch()
    shutil.chown(existing, "nobody")
    config = _ini(open_dir, f"[server]\nuser = nobody\npidfile = {open_dir}/p.pid\n"
                            f"[logging]\nerror_log = {open_dir}/logs/error.log\naccess_log = {existing}\n")
    result = _check(config, APP)
    assert result.returncode == 0, result.stderr
    assert re.search(r"^user = nobody$", result.stdout, re.M)
    assert sorted(os.listdir(open_dir)) == ["access.log", "check.ini", "logs"]  # nothing created
    assert os.listdir(open_dir / "logs") == []


@needs_root
def test_log_files_and_pidfile_only_root_may_write_pass(tmp_path: Path) -> None:
    # tmp_path lies under /tmp/pytest-of-root, mode 0700: root may write there, nobody not. The
    # master keeps root's rights, writes these files and gives the logs to nobody: that is fine.
    config = _ini(tmp_path, f"[server]\nuser = nobody\npidfile = {tmp_path}/p.pid\n"
                            f"[logging]\nerror_log = {tmp_path}/error.log\n")
    result = _check(config, APP)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(tmp_path)) == ["check.ini"]  # nothing created


@needs_root
def test_files_the_master_cannot_write(open_dir: Path) -> None:
    (open_dir / "a-file").touch()
    (open_dir / "a-dir").mkdir()
    config = _ini(open_dir, f"[server]\nuser = nobody\npidfile = {open_dir}/a-file/p.pid\n[logging]\n"
                            f"access_log = {open_dir}/a-dir\nerror_log = {open_dir}/missing/error.log\n")
    result = _check(config, APP)
    assert result.returncode == 2
    who = "root cannot write it"
    assert result.stderr.splitlines() == [
        f"prefork-serve: [logging] error_log = '{open_dir}/missing/error.log': {who}: "
        f"directory {open_dir}/missing does not exist",
        f"prefork-serve: [logging] access_log = '{open_dir}/a-dir': {who}: is a directory, not a file",
        f"prefork-serve: [server] pidfile = '{open_dir}/a-file/p.pid': {who}: "
        f"cannot be reached: a part of its path is a file, not a directory",
    ]


@needs_root
def test_file_problems_win_over_an_import_failure(open_dir: Path) -> None:
    config = _ini(open_dir, f"[server]\nuser = nobody\n[logging]\nerror_log = {open_dir}/no/such.log\n")
    result = _check(config, "tests.apps.does_not_exist:app")
    assert result.returncode == 2  # both are reported; the configuration is fixed first
    assert "error_log" in result.stderr and "No module named" in result.stderr


def test_missing_log_directory_without_a_user(tmp_path: Path) -> None:
    uid = os.getuid()
    config = _ini(tmp_path, f"[logging]\nerror_log = {tmp_path}/nope/error.log\n")
    result = _check(config, APP)
    assert result.returncode == 2
    who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    assert result.stderr == (f"prefork-serve: [logging] error_log = '{tmp_path}/nope/error.log': {who} "
                             f"cannot write it: directory {tmp_path}/nope does not exist\n")
    assert pwd.getpwuid(uid)  # the uid is a real account


# --- broadcast through Redis --------------------------------------------------------------------


def test_an_unreadable_redis_password_file_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-password"
    config = _ini(tmp_path, f"[websocket]\nbroadcast = redis\nredis_password_file = {missing}\n")
    result = _check(config, APP)
    assert result.returncode == 2
    assert f"{config}: [websocket] redis_password_file = '{missing}': No such file or directory" in result.stderr


def test_a_readable_redis_password_file_passes_even_with_redis_down(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("secret\n")
    result = _check(_ini(tmp_path, f"[websocket]\nbroadcast = redis\nredis_url = redis://127.0.0.1:1/0\n"
                                   f"redis_password_file = {tmp_path / 'pw'}\n"), APP)
    assert result.returncode == 0, result.stderr  # Redis down is a warning at start-up, not a refusal
    assert "secret" not in result.stdout + result.stderr
