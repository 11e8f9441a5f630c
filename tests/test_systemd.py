"""systemd integration against the real server: sd_notify messages (a fake NOTIFY_SOCKET),
the watchdog, socket activation with systemd-socket-activate, the shipped unit files under
``systemd-analyze verify``, and ``[server] user`` dropping root."""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
import requests

from tests.server import REPO, Server, free_port, wait_for

UPLOAD_APP = "tests.apps.upload:app"


class NotifyListener:
    """A fake systemd notify socket: a Unix datagram socket that records every message."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.sock.settimeout(0.1)
        self.messages: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode()))

    def texts(self) -> list[str]:
        """Every message received so far, in order."""
        return [text for _, text in list(self.messages)]

    def wait_for(self, predicate: Callable[[str], bool], timeout: float, start: int = 0) -> int:
        """Index of the first message from ``start`` on that satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for index, text in enumerate(self.texts()[start:], start):
                if predicate(text):
                    return index
            time.sleep(0.02)  # the poll interval of this bounded wait
        raise AssertionError(f"no matching notify message within {timeout} s; got {self.texts()}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture
def notify(tmp_path: Path) -> Iterator[NotifyListener]:
    path = str(tmp_path / "notify.sock")
    short_dir = None
    if len(path) >= 100:  # sun_path is 108 bytes
        short_dir = tempfile.mkdtemp(prefix="pf-notify-")
        path = os.path.join(short_dir, "n.sock")
    listener = NotifyListener(path)
    yield listener
    listener.close()
    if short_dir:
        shutil.rmtree(short_dir, ignore_errors=True)


def _fields(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _is(field: str) -> Callable[[str], bool]:
    return lambda text: _fields(text).get(field.split("=")[0]) == field.split("=", 1)[1]


def _no_watchdog_pid(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WATCHDOG_PID", "WATCHDOG_USEC", "NOTIFY_SOCKET", "LISTEN_FDS", "LISTEN_PID"):
        monkeypatch.delenv(name, raising=False)


def test_notify_sequence_ready_status_reload_stopping_and_watchdog(
        start_server: Callable[..., Server], notify: NotifyListener, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_watchdog_pid(monkeypatch)
    server = start_server(app=UPLOAD_APP, workers=2, wait=False,
                          env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "1000000"})
    ready = notify.wait_for(_is("READY=1"), 20)
    # READY=1 comes only once every worker serves: the scoreboard shows them all ready now.
    status = requests.get(server.url + "/server-status?format=json", timeout=5).json()
    assert [w["state"] for w in status["workers"]] == ["ready", "ready"]
    fields = _fields(notify.texts()[ready])
    assert fields["STATUS"].startswith("serving with 2 workers"), fields
    assert fields["MAINPID"] == str(server.pid)
    assert not any(_is("READY=1")(t) for t in notify.texts()[:ready])

    # Serve some requests, then watch for one periodic STATUS and the watchdog pings.
    for _ in range(5):
        assert requests.get(server.url + "/environ", timeout=5).status_code == 200
    periodic = notify.wait_for(lambda t: "requests" in _fields(t).get("STATUS", ""), 8, start=ready)
    text = _fields(notify.texts()[periodic])["STATUS"]
    assert re.fullmatch(r"2 workers, \d+ requests, \d+ connections, \d+ uploads in progress", text), text
    assert int(text.split()[2]) >= 5
    pings = [t for t, m in notify.messages if m == "WATCHDOG=1"]
    assert len(pings) >= 6, notify.texts()
    gaps = [b - a for a, b in zip(pings, pings[1:])]
    assert all(0.4 < g < 0.7 for g in gaps), gaps  # half of WATCHDOG_USEC, on time
    assert abs(sum(gaps) / len(gaps) - 0.5) < 0.1, gaps

    # HUP: RELOADING=1 with MONOTONIC_USEC, then READY=1 once the new generation serves.
    mark = len(notify.texts())
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    server.signal(signal.SIGHUP)
    reloading = notify.wait_for(_is("RELOADING=1"), 10, start=mark)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    usec = int(_fields(notify.texts()[reloading])["MONOTONIC_USEC"])
    assert before <= usec <= after
    again = notify.wait_for(_is("READY=1"), 15, start=reloading + 1)
    status = requests.get(server.url + "/server-status?format=json", timeout=5).json()
    assert {w["generation"] for w in status["workers"] if w["state"] == "ready"} == {2}
    assert "STATUS" in _fields(notify.texts()[again])

    # TERM: STOPPING=1, and the server exits cleanly.
    mark = len(notify.texts())
    server.signal(signal.SIGTERM)
    notify.wait_for(_is("STOPPING=1"), 10, start=mark)
    assert server.wait(15) == 0
    sequence = [m for m in notify.texts() if m != "WATCHDOG=1" and not m.startswith("STATUS=")]
    kinds = [next(k for k in ("RELOADING", "READY", "STOPPING") if k + "=1" in m) for m in sequence]
    assert kinds == ["READY", "RELOADING", "READY", "STOPPING"], sequence


def test_watchdog_stops_while_workers_are_stuck(
        start_server: Callable[..., Server], notify: NotifyListener, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_watchdog_pid(monkeypatch)
    server = start_server(app=UPLOAD_APP, workers=1, wait=False, config={"process": "timeout = 1500ms"},
                          env={"NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "600000"})
    notify.wait_for(_is("READY=1"), 20)
    wait_for(lambda: notify.texts().count("WATCHDOG=1") >= 2, 5, what="watchdog pings")
    (victim,) = [p.pid for p in server.workers()]
    os.kill(victim, signal.SIGSTOP)  # no more heartbeats
    try:
        stopped = time.monotonic()
        wait_for(lambda: victim not in [p.pid for p in server.workers()], 10, what="the stuck worker replaced")
        replaced = time.monotonic()
    finally:
        try:
            os.kill(victim, signal.SIGKILL)
        except ProcessLookupError:
            pass
    pings = [t for t, m in notify.messages if m == "WATCHDOG=1"]
    # While the heartbeat was stale (from timeout after the stop until the kill), no ping.
    assert not [t for t in pings if stopped + 1.6 < t < replaced - 0.1], (stopped, replaced, pings)
    # Healthy again: the pings resume.
    count = len(pings)
    wait_for(lambda: notify.texts().count("WATCHDOG=1") >= count + 2, 5, what="pings after recovery")


def test_watchdog_pid_of_another_process_means_no_pings(
        start_server: Callable[..., Server], notify: NotifyListener, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_watchdog_pid(monkeypatch)
    server = start_server(app=UPLOAD_APP, workers=1, wait=False, env={
        "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "200000", "WATCHDOG_PID": "1"})
    ready = notify.wait_for(_is("READY=1"), 20)
    # The master would send its first ping in the loop turn that sent READY=1, and every
    # 0.1 s after. A reload is the fence: RELOADING=1 comes in a later turn, and its
    # READY=1 only once a new generation serves, many watchdog intervals later.
    server.signal(signal.SIGHUP)
    reloading = notify.wait_for(_is("RELOADING=1"), 10, start=ready + 1)
    notify.wait_for(_is("READY=1"), 15, start=reloading + 1)
    assert "WATCHDOG=1" not in notify.texts()
    assert server.proc.poll() is None


def _stop_pid(proc: subprocess.Popen[bytes]) -> None:
    children = []
    try:
        children = psutil.Process(proc.pid).children()
    except psutil.NoSuchProcess:
        pass
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(15)
    for child in children:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass


def test_socket_activation_with_systemd_socket_activate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tool = shutil.which("systemd-socket-activate")
    if tool is None:
        pytest.skip("systemd-socket-activate is not installed (Debian package systemd)")
    _no_watchdog_pid(monkeypatch)
    port, unused = free_port(), free_port()
    config = tmp_path / "server.ini"
    # The configured bind is never used: the inherited socket wins.
    config.write_text(f"[server]\nbind = 127.0.0.1:{unused}\nworkers = 2\n[staging]\ndir = {tmp_path}\n"
                      f"[uploads]\ndir = {tmp_path}\n[logging]\nerror_log = {tmp_path / 'error.log'}\n"
                      f"access_log = {tmp_path / 'access.log'}\n")
    log = open(tmp_path / "activate.log", "wb")
    proc = subprocess.Popen([tool, "-l", f"127.0.0.1:{port}", "-E", f"PYTHONPATH={REPO}",
                             sys.executable, "-m", "prefork.cli", "-c", str(config), UPLOAD_APP],
                            cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    try:
        def serves() -> requests.Response | None:
            if proc.poll() is not None:
                raise AssertionError(f"exited with {proc.returncode}: {(tmp_path / 'activate.log').read_text()}")
            try:
                return requests.get(f"http://127.0.0.1:{port}/environ", timeout=5)
            except requests.ConnectionError:
                return None

        resp = wait_for(serves, 20, interval=0.1, what="the socket-activated server serves")
        assert isinstance(resp, requests.Response) and resp.status_code == 200
        body = os.urandom(3 * 1024 * 1024)
        upload = requests.post(f"http://127.0.0.1:{port}/sha256", data=body, timeout=10)
        assert upload.status_code == 200 and upload.json()["size"] == len(body)
        # exec'd in place: the master is the process systemd-socket-activate started
        master = psutil.Process(proc.pid)
        assert "prefork.cli" in " ".join(master.cmdline())
        assert len(master.children()) == 2
        assert not any(c.laddr and c.laddr.port == unused for c in psutil.net_connections("tcp")
                       if c.status == psutil.CONN_LISTEN)
        error_log = (tmp_path / "error.log").read_text()
        assert f"127.0.0.1:{port}" in error_log
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
    finally:
        _stop_pid(proc)
        log.close()


def test_unit_files_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed (Debian package systemd)")
    binary = shutil.which("prefork-serve")
    if binary is None:
        pytest.skip("prefork-serve is not installed (pip install -e .)")
    service = (REPO / "conf" / "prefork.service").read_text()
    assert re.search(r"^ExecStart=\S*prefork-serve ", service, re.M)
    service = re.sub(r"^ExecStart=\S+", f"ExecStart={os.path.realpath(binary)}", service, flags=re.M)
    (tmp_path / "prefork.service").write_text(service)
    shutil.copy(REPO / "conf" / "prefork.socket", tmp_path / "prefork.socket")

    def verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run([analyze, "verify", "prefork.service", "prefork.socket"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)

    result = verify()
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert not [line for line in output.splitlines() if "prefork" in line], output
    # the check has teeth: a typo in the unit is reported
    (tmp_path / "prefork.service").write_text(service.replace("KillMode=mixed", "KillMode=mixd"))
    broken = verify()
    assert "prefork.service" in broken.stdout + broken.stderr
    # and the unit says what the server does
    for line in ("Type=notify", "ExecReload=/bin/kill -HUP $MAINPID", "KillMode=mixed", "WatchdogSec=",
                 "NotifyAccess=main"):
        assert line in service


def test_user_nobody_runs_the_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    if os.geteuid() != 0:
        pytest.skip("dropping privileges needs the tests to run as root")
    try:
        nobody = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no user 'nobody' on this machine")
    _no_watchdog_pid(monkeypatch)
    # A directory the service user can reach (pytest's tmp dirs are private to root).
    tmp = Path(tempfile.mkdtemp(prefix="prefork-user-"))
    os.chmod(tmp, 0o755)
    server = Server(tmp, app=UPLOAD_APP, workers=2, config={"server": "user = nobody"})
    try:
        server.wait_ready()
        workers = server.workers()
        assert len(workers) == 2
        # The master keeps root (pidfile, log reopening, socket removal), as gunicorn's does;
        # the workers, which run the application, are nobody for good.
        assert psutil.Process(server.pid).uids().effective == 0
        for proc in workers:
            uids, gids = proc.uids(), proc.gids()
            assert (uids.real, uids.effective, uids.saved) == (nobody.pw_uid,) * 3, (proc.pid, uids)
            assert (gids.real, gids.effective, gids.saved) == (nobody.pw_gid,) * 3, (proc.pid, gids)
        for path in (server.staging, server.uploads):
            assert os.stat(path).st_uid == nobody.pw_uid, path
        body = os.urandom(4 * 1024 * 1024)  # over memory_threshold: staged on disk as nobody
        resp = requests.post(server.url + "/sha256", data=body, timeout=10)
        assert resp.status_code == 200 and resp.json()["size"] == len(body)
        assert requests.get(server.url + "/environ", timeout=5).status_code == 200
        status = requests.get(server.url + "/server-status?format=json", timeout=5).json()
        assert status["requests_total"] >= 2
    finally:
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
