"""Run the real ``prefork-serve`` as a subprocess on a free loopback port.

Every server started here is stopped by PID (its workers with it), with
bounded waits, whatever the test did.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 20.0
STOP_TIMEOUT = 15.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """A running ``prefork-serve`` subprocess.

    Args:
        tmp: a directory for its config, logs, staging and uploads.
        app: the application spec (``module:callable``) or "" for the demo.
        config: extra INI text, section by section (``{"limits": "header_timeout = 2s"}``).
        workers: worker processes.
        threads: handler threads per worker.
    """

    def __init__(self, tmp: Path, app: str = "tests.apps.echo:app", config: dict[str, str] | None = None,
                 workers: int = 1, threads: int = 4, extra_args: list[str] | None = None) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.staging = tmp / "staging"
        self.uploads = tmp / "uploads"
        self.staging.mkdir(exist_ok=True)
        self.uploads.mkdir(exist_ok=True)
        self.error_log = tmp / "error.log"
        self.access_log = tmp / "access.log"
        sections = {
            "server": f"bind = 127.0.0.1:{self.port}\nworkers = {workers}\nthreads = {threads}",
            "staging": f"dir = {self.staging}",
            "uploads": f"dir = {self.uploads}",
            "logging": f"error_log = {self.error_log}\naccess_log = {self.access_log}\nlevel = debug",
        }
        for name, text in (config or {}).items():
            sections[name] = sections.get(name, "") + "\n" + text
        self.config_path = tmp / "server.ini"
        self.config_path.write_text("".join(f"[{k}]\n{v}\n\n" for k, v in sections.items()))
        args = [sys.executable, "-m", "prefork.cli", "-c", str(self.config_path)]
        args += extra_args or []
        if app:
            args.append(app)
        env = dict(os.environ, PYTHONPATH=str(REPO))
        self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = START_TIMEOUT) -> "Server":
        """Wait until every worker serves (a request gets a response) or fail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                    sock.sendall(b"GET /__ready HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                    if sock.recv(16).startswith(b"HTTP/1.1"):
                        return self
            except OSError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server not ready after {timeout} s:\n{self.output()}")

    def workers(self) -> list[psutil.Process]:
        """The worker processes (children of the master)."""
        try:
            return psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []

    def signal(self, sig: int) -> None:
        """Send a signal to the master."""
        os.kill(self.pid, sig)

    def wait(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the master to exit; returns its exit code."""
        return self.proc.wait(timeout)

    def output(self) -> str:
        """Everything the server wrote to stdout/stderr and its error log (after it stopped)."""
        text = ""
        if self.proc.poll() is not None and self.proc.stdout is not None:
            text += self.proc.stdout.read().decode("utf-8", "replace")
        if self.error_log.exists():
            text += self.error_log.read_text("utf-8", "replace")
        return text

    def stop(self) -> None:
        """Stop the master and its workers: TERM, then KILL after a bounded wait."""
        family = [self.pid] + [p.pid for p in self.workers()]
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        for pid in family[1:]:
            try:
                proc = psutil.Process(pid)
                if proc.ppid() in (self.pid, 1):
                    proc.kill()
                    proc.wait(STOP_TIMEOUT)
            except psutil.NoSuchProcess:
                pass
        if self.proc.stdout is not None:
            self.proc.stdout.close()
