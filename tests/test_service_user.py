"""Run as a service: root master with ``user = nobody``, and a non-root user from the start.

Issue 11, §2 and §3: with ``user = nobody`` the pidfile, the log files and the
unix socket must work where a unit file puts them (directories only root may
write), log rotation and reloads must keep working, the unix socket must be
usable by the proxy's user, and everything must be cleaned up at exit. The
same server started by an unprivileged user must work on every path too.
These need root (they run as root here and on CI) and the accounts ``nobody``
and ``daemon``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import requests

from tests.server import REPO, Server, free_port, wait_for

UPLOAD_APP = "tests.apps.upload:app"
# The system interpreter: nobody cannot reach the one under /root that runs the tests.
SYSTEM_PYTHON = "/usr/bin/python3.11"

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs the tests to run as root")


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory every user can reach (pytest's tmp dirs are root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="prefork-service-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def _root_only(parent: Path, name: str) -> Path:
    path = parent / name
    path.mkdir(mode=0o700)
    return path


def _get_over_unix(path: Path, as_user: str) -> str:
    """GET / over a unix socket from a process running as ``as_user``; returns the status line."""
    client = ("import socket, sys\n"
              "s = socket.socket(socket.AF_UNIX)\ns.settimeout(10)\ns.connect(sys.argv[1])\n"
              "s.sendall(b'GET /environ HTTP/1.1\\r\\nHost: t\\r\\nConnection: close\\r\\n\\r\\n')\n"
              "print(s.recv(100).split(b'\\r\\n')[0].decode())\n")
    result = subprocess.run([SYSTEM_PYTHON, "-c", client, str(path)], user=as_user, group=as_user,
                            extra_groups=[], capture_output=True, text=True, timeout=30, cwd="/")
    return (result.stdout + result.stderr).strip()


def test_root_master_with_user_nobody_on_unit_file_paths(open_dir: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    run = _root_only(open_dir, "run")      # like /run: the pidfile
    logs = open_dir / "log"                # like /var/log/prefork made by root: nobody cannot create files
    logs.mkdir(mode=0o755)
    sockets = open_dir / "sockets"
    sockets.mkdir(mode=0o755)
    sock = sockets / "app.sock"
    pidfile = run / "prefork.pid"
    server = Server(open_dir, app=UPLOAD_APP, workers=2, log_dir=logs, bind=f"unix:{sock}",
                    config={"server": f"user = nobody\npidfile = {pidfile}\numask = 027"})
    try:
        wait_for(lambda: pidfile.exists() and sock.exists(), 20, what="pidfile and socket")
        server.wait_ready()
        assert pidfile.read_text() == f"{server.pid}\n"
        assert psutil.Process(server.pid).uids().effective == 0
        assert {p.uids().effective for p in server.workers()} == {nobody.pw_uid}
        for log in (server.error_log, server.access_log):
            assert log.stat().st_uid == nobody.pw_uid, log  # the workers can reopen them
            assert stat.S_IMODE(log.stat().st_mode) == 0o640, log  # umask 027
        info = sock.stat()
        assert stat.S_ISSOCK(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o666
        assert info.st_uid == nobody.pw_uid
        assert _get_over_unix(sock, "daemon") == "HTTP/1.1 200 OK"  # the proxy's user connects
        # logrotate: move the files away, USR1; master (root) and workers (nobody) reopen.
        rotated = logs / "access.log.1"
        server.access_log.rename(rotated)
        server.error_log.rename(logs / "error.log.1")
        server.signal(signal.SIGUSR1)
        wait_for(lambda: server.access_log.exists() and server.error_log.exists(), 10, what="new log files")
        assert server.access_log.stat().st_uid == nobody.pw_uid

        def lands_in_new_file() -> bool:
            assert _get_over_unix(sock, "daemon") == "HTTP/1.1 200 OK"
            return "/environ" in server.access_log.read_text()

        wait_for(lands_in_new_file, 10, what="access lines in the new file")
        server.signal(signal.SIGHUP)
        wait_for(lambda: "reload complete (generation 2)" in server.error_log.read_text(), 20, what="the reload")
        assert "cannot reopen" not in (logs / "error.log.1").read_text() + server.error_log.read_text()
        server.signal(signal.SIGTERM)
        assert server.wait(20) == 0
        assert not pidfile.exists() and not sock.exists()
    finally:
        server.stop()


def test_a_pidfile_that_cannot_be_written_stops_start_up_cleanly(open_dir: Path) -> None:
    sock = open_dir / "app.sock"
    pidfile = open_dir / "no-such-dir" / "prefork.pid"
    server = Server(open_dir, app=UPLOAD_APP, bind=f"unix:{sock}", config={"server": f"pidfile = {pidfile}"})
    try:
        assert server.wait(20) == 2
    finally:
        server.stop()
    assert f"[server] pidfile = '{pidfile}': cannot write it: No such file or directory" in server.output()
    assert "Traceback" not in server.output()
    assert not sock.exists()


def test_socket_mode_and_owner(open_dir: Path) -> None:
    sock = open_dir / "app.sock"
    server = Server(open_dir, app=UPLOAD_APP, bind=f"unix:{sock}",
                    config={"server": "socket_mode = 0660\nsocket_owner = nobody:daemon"})
    try:
        server.wait_ready()
        info = sock.stat()
        assert stat.S_IMODE(info.st_mode) == 0o660
        assert (info.st_uid, info.st_gid) == (pwd.getpwnam("nobody").pw_uid, pwd.getpwnam("daemon").pw_gid)
        assert _get_over_unix(sock, "daemon") == "HTTP/1.1 200 OK"  # group daemon may write it
    finally:
        server.stop()


@pytest.fixture
def nobody_python(open_dir: Path) -> Path:
    """A directory with psutil for the system interpreter, readable by everyone."""
    import psutil as installed

    target = open_dir / "site"
    shutil.copytree(Path(installed.__file__).parent, target / "psutil",
                    ignore=shutil.ignore_patterns("__pycache__", "tests"))
    for path in [target, *target.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


def test_started_by_an_unprivileged_user_every_path_works(open_dir: Path, nobody_python: Path) -> None:
    if not os.path.exists(SYSTEM_PYTHON):
        pytest.fail(f"{SYSTEM_PYTHON} is missing (Debian's python3.11; .ci/run installs it)")
    home = open_dir / "srv"
    home.mkdir()
    shutil.chown(home, "nobody")
    for name in ("staging", "uploads", "logs"):
        (home / name).mkdir()
        shutil.chown(home / name, "nobody")
    port, sock, pidfile = free_port(), home / "app.sock", home / "prefork.pid"
    config = home / "server.ini"
    config.write_text(
        f"[server]\nbind = 127.0.0.1:{port}\n    unix:{sock}\nworkers = 2\npidfile = {pidfile}\n"
        f"[staging]\ndir = {home}/staging\n[uploads]\ndir = {home}/uploads\n"
        f"[logging]\nerror_log = {home}/logs/error.log\naccess_log = {home}/logs/access.log\nlevel = debug\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{nobody_python}:{REPO}", "PYTHONDONTWRITEBYTECODE": "1"}
    with open(home / "stdout.log", "wb") as out:
        proc = subprocess.Popen([SYSTEM_PYTHON, "-m", "prefork.cli", "-c", str(config), UPLOAD_APP],
                                user="nobody", group="nogroup", cwd=str(home), env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            try:
                return requests.get(url + "/environ", timeout=2).status_code == 200
            except requests.ConnectionError:
                assert proc.poll() is None, (home / "stdout.log").read_text()
                return False

        wait_for(ready, 20, what="the server started by nobody")
        assert pidfile.read_text() == f"{proc.pid}\n"
        assert _get_over_unix(sock, "daemon") == "HTTP/1.1 200 OK"
        body = os.urandom(3 * 1024 * 1024)  # over memory_threshold: staged on disk
        resp = requests.post(url + "/sha256", data=body, timeout=20)
        assert resp.status_code == 200 and resp.json()["size"] == len(body)
        access = home / "logs" / "access.log"
        access.rename(home / "logs" / "access.log.1")
        os.kill(proc.pid, signal.SIGUSR1)
        wait_for(access.exists, 10, what="the reopened access log")
        os.kill(proc.pid, signal.SIGHUP)
        error_log = home / "logs" / "error.log"
        wait_for(lambda: "reload complete (generation 2)" in error_log.read_text(), 20, what="the reload")
        assert requests.get(url + "/environ", timeout=5).status_code == 200
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(20) == 0
        assert not pidfile.exists() and not sock.exists()
        assert "Traceback" not in error_log.read_text() + (home / "stdout.log").read_text()
    finally:
        if proc.poll() is None:
            children = psutil.Process(proc.pid).children()
            proc.kill()
            proc.wait(10)
            for child in children:
                child.kill()


def test_usr1_never_gives_a_symlinked_log_file_to_the_service_user(open_dir: Path) -> None:
    # The log directory belongs to the service user (as the README's deployment has it), so
    # whoever runs the app may swap a log file for a symbolic link to a root file before
    # logrotate's USR1. The master (root) must neither give that file away nor write to it.
    nobody = pwd.getpwnam("nobody")
    logs = open_dir / "logs"
    logs.mkdir()
    os.chown(logs, nobody.pw_uid, nobody.pw_gid)
    victim = open_dir / "victim"
    victim.write_text("root's file\n")
    server = Server(open_dir, app=UPLOAD_APP, workers=1, log_dir=logs, config={"server": "user = nobody"})
    try:
        server.wait_ready()
        swap = ("import os, sys\nlogs, victim = sys.argv[1:]\n"
                "os.rename(logs + '/access.log', logs + '/access.log.1')\n"
                "os.symlink(victim, logs + '/access.log')\n")
        subprocess.run([SYSTEM_PYTHON, "-c", swap, str(logs), str(victim)], user="nobody", group="nogroup",
                       extra_groups=[], check=True, timeout=30, cwd="/")
        server.signal(signal.SIGUSR1)
        wait_for(lambda: f"cannot reopen log file {logs}/access.log: it is a symbolic link"
                 in server.error_log.read_text(), 10, what="the refused reopen logged")
        assert victim.stat().st_uid == 0, "a root file now belongs to nobody"
        assert victim.read_text() == "root's file\n"
        assert server.proc.poll() is None
    finally:
        server.stop()
