"""The command line and configuration, end to end: error messages, exit codes, flags, binds."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
import requests

from tests.server import REPO, RawClient, Server, free_port, wait_for

UPLOAD_APP = "tests.apps.upload:app"


def _run_cli(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "prefork.cli", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=dict(os.environ, PYTHONPATH=str(REPO)))


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.ini"
    path.write_text(text)
    return path


# --- configuration errors: exit 2 with file:line: [section] key ... ------------------------


def test_unknown_key_names_file_line_and_suggests(tmp_path: Path) -> None:
    path = _config(tmp_path, "[server]\nworkers = 2\nthreds = 4\n")
    result = _run_cli("-c", str(path), UPLOAD_APP)
    assert result.returncode == 2
    assert f"{path}:3: [server] threds: unknown key; did you mean 'threads'?" in result.stderr
    assert "allowed keys:" in result.stderr and result.stdout == ""


def test_unknown_section_names_file_line_and_suggests(tmp_path: Path) -> None:
    path = _config(tmp_path, "[server]\nworkers = 1\n\n[limts]\nmax_body_size = 1MiB\n")
    result = _run_cli("-c", str(path), UPLOAD_APP)
    assert result.returncode == 2
    assert f"{path}:4: [limts]: unknown section; did you mean 'limits'?" in result.stderr
    assert "allowed sections:" in result.stderr


@pytest.mark.parametrize("line, message", [
    ("[limits]\nmax_body_size = 10GB", "[limits] max_body_size = '10GB': expected a size like"),
    ("[server]\nworkers = lots", "[server] workers = 'lots': expected a whole number >= 1 or 'auto'"),
    ("[limits]\nheader_timeout = soon", "[limits] header_timeout = 'soon': "),
    ("[limits]\nmax_parts = many", "[limits] max_parts = 'many': expected a whole number >= 1\n"),
    ("[limits]\nmax_chunk_line = 4KB", "[limits] max_chunk_line = '4KB': expected a size like 512KiB, 10MiB, 2GiB; "
                                       "did you mean '4KiB'?\n"),
])
def test_bad_value_names_file_line_key_and_allowed_form(tmp_path: Path, line: str, message: str) -> None:
    path = _config(tmp_path, "# a comment\n" + line + "\n")
    result = _run_cli("-c", str(path), UPLOAD_APP)
    assert result.returncode == 2
    assert f"{path}:3: {message}" in result.stderr, result.stderr


def test_missing_config_file(tmp_path: Path) -> None:
    result = _run_cli("-c", str(tmp_path / "nope.ini"), UPLOAD_APP)
    assert result.returncode == 2
    assert f"config file not found: {tmp_path / 'nope.ini'}" in result.stderr


def test_check_config_prints_effective_settings(tmp_path: Path) -> None:
    path = _config(tmp_path, "[server]\nbind = 127.0.0.1:1234\nworkers = 5\n\n[limits]\nmax_body_size = 3MiB\n")
    result = _run_cli("-c", str(path), "--check-config", "-w", "2", "--threads", "7",
                      "-b", "127.0.0.1:4321", UPLOAD_APP)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert re.search(r"^\[server\]$", out, re.M) and re.search(r"^\[limits\]$", out, re.M)
    assert re.search(r"^bind = 127\.0\.0\.1:4321$", out, re.M)  # the flag wins over the file
    assert re.search(r"^workers = 2$", out, re.M)
    assert re.search(r"^threads = 7$", out, re.M)
    assert re.search(rf"^app = {re.escape(UPLOAD_APP)}$", out, re.M)
    assert re.search(r"^max_body_size = 3MiB$", out, re.M)  # from the file
    assert re.search(r"^header_timeout = 10s$", out, re.M)  # a default
    # Nothing was started: the printed address is not listening.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", 4321), timeout=1).close()


# --- flags override the file, live ------------------------------------------------------------


def test_flags_override_the_file(start_server: Callable[..., Server]) -> None:
    port = free_port()
    server = start_server(wait=False, app=UPLOAD_APP, workers=1, threads=4,
                          extra_args=["-b", f"127.0.0.1:{port}", "-w", "2", "--threads", "1"])
    file_port = server.port
    server.bind, server.port, server.url = f"127.0.0.1:{port}", port, f"http://127.0.0.1:{port}"
    server.wait_ready()
    wait_for(lambda: len(server.workers()) == 2, 10, what="2 workers from -w 2")
    env = requests.get(server.url + "/environ", timeout=5).json()
    assert env["SERVER_PORT"] == str(port)
    assert env["wsgi.multithread"] is False  # --threads 1 (the file says 4)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", file_port), timeout=1).close()


# --- start-up failures ---------------------------------------------------------------------------


def test_port_in_use_exits_1_with_a_clear_message(start_server: Callable[..., Server]) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        server = start_server(wait=False, app=UPLOAD_APP, bind=f"127.0.0.1:{port}")
        assert server.wait(15) == 1
        assert f"cannot listen on 127.0.0.1:{port}: address already in use" in server.output()


@pytest.mark.parametrize("app, error", [
    ("tests.apps.does_not_exist:app", "No module named 'tests.apps.does_not_exist'"),
    ("tests.apps.upload:no_such_app", "has no attribute 'no_such_app'"),
])
def test_unimportable_app_stops_the_master(start_server: Callable[..., Server], app: str, error: str) -> None:
    started = time.monotonic()
    server = start_server(wait=False, app=app, workers=2)
    assert server.wait(15) == 3
    assert time.monotonic() - started < 10
    log = server.output()
    assert error in log
    assert "failed to load the application" in log
    assert log.count("spawned worker") <= 2, "the master respawned workers that cannot boot"


# --- bind forms -----------------------------------------------------------------------------------


def test_unix_socket_bind(start_server: Callable[..., Server]) -> None:
    with tempfile.TemporaryDirectory(prefix="prefork-", dir="/tmp") as tmp:
        path = os.path.join(tmp, "s.sock")
        server = start_server(app=UPLOAD_APP, bind=f"unix:{path}")
        assert os.path.exists(path)
        with RawClient(server.connect()) as client:
            client.send(b"GET /environ HTTP/1.1\r\nHost: t\r\n\r\n")
            resp = client.read_response()
            assert resp.status == 200
            client.send(b"POST /sha256 HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello")
            resp = client.read_response()
            assert resp.status == 200 and b'"size": 5' in resp.body
        server.signal(signal.SIGTERM)
        assert server.wait(15) == 0
        assert not os.path.exists(path), "the socket file should be removed at exit"


def _ipv6_loopback() -> str | None:
    """None when [::1] can be bound, else the reason it cannot."""
    if not socket.has_ipv6:
        return "Python was built without IPv6"
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
            sock.bind(("::1", 0))
    except OSError as exc:
        return f"cannot bind [::1]: {exc}"
    return None


def test_ipv6_loopback_bind(start_server: Callable[..., Server]) -> None:
    reason = _ipv6_loopback()
    if reason is not None:
        pytest.skip(f"IPv6 loopback unavailable: {reason}")
    port = free_port()
    server = start_server(app=UPLOAD_APP, bind=f"[::1]:{port}")
    with socket.create_connection(("::1", port), timeout=5) as sock:
        client = RawClient(sock)
        client.send(b"GET /environ HTTP/1.1\r\nHost: [::1]\r\nConnection: close\r\n\r\n")
        resp = client.read_response()
    assert resp.status == 200
    assert b'"REMOTE_ADDR": "::1"' in resp.body
    assert resp.status == 200 and requests.get(f"http://[::1]:{port}/environ", timeout=5).status_code == 200
    assert psutil.Process(server.pid).is_running()
