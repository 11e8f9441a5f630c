"""Run the real ``prefork-serve`` as a subprocess on a free loopback port.

Every server started here is stopped by PID (its workers with it), with
bounded waits, whatever the test did.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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
        log_dir: where error.log and access.log go (default: ``tmp``).
    """

    def __init__(self, tmp: Path, app: str = "tests.apps.echo:app", config: dict[str, str] | None = None,
                 workers: int = 1, threads: int = 4, extra_args: list[str] | None = None,
                 bind: str | None = None, env: dict[str, str] | None = None,
                 log_dir: Path | None = None) -> None:
        self.tmp = tmp
        self.bind = bind or f"127.0.0.1:{free_port()}"
        address = self.bind.partition("://")[2] or self.bind
        # The port of a TCP bind; a unix socket's server keeps a free number for file names.
        self.port = int(address.rpartition(":")[2]) if not address.startswith("unix:") else free_port()
        self.staging = tmp / "staging"
        self.uploads = tmp / "uploads"
        self.staging.mkdir(exist_ok=True)
        self.uploads.mkdir(exist_ok=True)
        self.error_log = (log_dir or tmp) / "error.log"
        self.access_log = (log_dir or tmp) / "access.log"
        sections = {
            "server": f"bind = {self.bind}\nworkers = {workers}\nthreads = {threads}",
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
        env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
        # A file, not a pipe: nobody reads a pipe while the server runs, and a full one would
        # block every process of the server on its next write to stderr.
        self.stdout_path = tmp / f"stdout-{self.port}.log"
        with open(self.stdout_path, "wb") as stdout:
            self.proc = subprocess.Popen(args, cwd=REPO, env=env, stdout=stdout, stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        self.url = f"{'https' if self.bind.startswith('https://') else 'http'}://127.0.0.1:{self.port}"

    def connect(self, timeout: float = 10.0) -> socket.socket:
        """A client socket connected to the server's (first) bind address (TCP only: no TLS)."""
        bind = self.bind.partition("://")[2] or self.bind
        if bind.startswith("unix:"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(timeout)
            try:
                sock.connect(bind[5:])
            except OSError:
                sock.close()
                raise
            return sock
        if bind.startswith("["):
            host, _, port = bind[1:].partition("]:")
            return socket.create_connection((host, int(port)), timeout=timeout)
        host, _, port = bind.rpartition(":")
        return socket.create_connection((host, int(port)), timeout=timeout)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> "Server":
        """Wait until every worker serves (a request gets a response) or fail."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}:\n{self.output()}")
            try:
                with self.connect(timeout=1.0) as sock:
                    sock.sendall(b"GET /__ready HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
                    if sock.recv(16).startswith(b"HTTP/1.1"):
                        return self
            except OSError:
                pass
            time.sleep(0.05)  # the poll interval of this bounded wait
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
        """Everything the server wrote to stdout/stderr and its error log so far."""
        text = ""
        if self.stdout_path.exists():
            text += self.stdout_path.read_text("utf-8", "replace")
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


def process_gone(pid: int) -> bool:
    """Whether ``pid`` has exited (a zombie not yet reaped counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def wait_for(predicate: "Callable[[], object]", timeout: float, interval: float = 0.05,
             what: str = "condition") -> object:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout} s")
        time.sleep(interval)  # the poll interval of this bounded wait


@dataclass
class Response:
    """One HTTP response as read off a raw socket."""

    status: int
    reason: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    raw_head: bytes

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or None."""
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


class RawClient:
    """A blocking raw-socket HTTP/1.x client that keeps unread bytes between responses.

    Args:
        sock: a connected socket (with a timeout set: every read is bounded).
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def send(self, data: bytes) -> None:
        """Send all of ``data``."""
        self.sock.sendall(data)

    def _fill(self) -> bool:
        data = self.sock.recv(65536)
        if not data:
            return False
        self.buf += data
        return True

    def read_until(self, marker: bytes) -> bytes:
        """Bytes up to and including ``marker``; EOFError if the peer closes first."""
        while marker not in self.buf:
            if not self._fill():
                raise EOFError(f"connection closed before {marker!r}; got {self.buf[:200]!r}")
        index = self.buf.index(marker) + len(marker)
        data, self.buf = self.buf[:index], self.buf[index:]
        return data

    def read_exactly(self, size: int) -> bytes:
        """Exactly ``size`` bytes; EOFError if the peer closes first."""
        while len(self.buf) < size:
            if not self._fill():
                raise EOFError(f"connection closed {size - len(self.buf)} bytes short")
        data, self.buf = self.buf[:size], self.buf[size:]
        return data

    def read_to_eof(self) -> bytes:
        """Everything until the peer closes."""
        while self._fill():
            pass
        data, self.buf = self.buf, b""
        return data

    def at_eof(self) -> bool:
        """True when nothing is buffered and the peer has closed (within the socket timeout)."""
        if self.buf:
            return False
        try:
            return not self._fill()
        except ConnectionResetError:
            return True

    def read_response(self, head_request: bool = False) -> Response:
        """Read one response (head and body, framed by its headers)."""
        while True:
            raw_head = self.read_until(b"\r\n\r\n")
            lines = raw_head[:-4].decode("latin-1").split("\r\n")
            version, _, rest = lines[0].partition(" ")
            code, _, reason = rest.partition(" ")
            headers = [tuple(x.strip() for x in line.split(":", 1)) for line in lines[1:]]
            resp = Response(int(code), reason, version, headers, b"", raw_head)  # type: ignore[arg-type]
            if resp.status >= 200:
                break
        if head_request or resp.status in (204, 304):
            return resp
        length = resp.header("content-length")
        if (resp.header("transfer-encoding") or "").lower() == "chunked":
            body = bytearray()
            while True:
                size = int(self.read_until(b"\r\n").split(b";")[0], 16)
                if size == 0:
                    while self.read_until(b"\r\n") != b"\r\n":
                        pass  # trailer fields
                    break
                body += self.read_exactly(size)
                assert self.read_exactly(2) == b"\r\n"
            resp.body = bytes(body)
        elif length is not None:
            resp.body = self.read_exactly(int(length))
        else:
            resp.body = self.read_to_eof()
        return resp

    def close(self) -> None:
        """Close the socket."""
        self.sock.close()

    def __enter__(self) -> "RawClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def request(server: Server, data: bytes, head_request: bool = False, timeout: float = 10.0) -> Response:
    """Send raw ``data`` on a new connection and read one response."""
    with RawClient(server.connect(timeout)) as client:
        client.send(data)
        return client.read_response(head_request)


def staging_fds(pids: set[int], staging: Path) -> list[str]:
    """Open descriptors of ``pids`` that point into the staging directory (unnamed ones too).

    A process that is gone has none.
    """
    found = []
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith(str(staging) + "/"):
                    found.append(f"{pid}: {target}")
        except (FileNotFoundError, ProcessLookupError):
            continue
    return found


def send_until_answered(client: RawClient, pieces: Iterable[bytes]) -> int:
    """Send ``pieces`` one at a time, stopping once the server has answered; bytes sent.

    A server that refuses a body part-way (413, 507) answers at once and reads on for
    a short linger only. Like curl or a browser, this client looks for an answer
    before each piece and stops sending when there is one, so the answer is read
    rather than lost to a reset. Keep the pieces small (64 KiB): one piece is the most
    it sends after the answer has arrived.
    """
    sent = 0
    for piece in pieces:
        if select.select([client.sock], [], [], 0)[0]:
            break
        client.send(piece)
        sent += len(piece)
    return sent


def status(server: Server) -> dict[str, Any]:
    """The status page as JSON (it is answered on the worker's loop, never by a handler thread)."""
    resp = request(server, b"GET /server-status?format=json HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert resp.status == 200, resp.raw_head
    document: dict[str, Any] = json.loads(resp.body)
    return document


def busy_threads(server: Server) -> dict[int, int]:
    """Worker pid -> handler threads running application code right now (from the scoreboard)."""
    return {w["pid"]: w["busy_threads"] for w in status(server)["workers"]}


def accepted_connections(server: Server) -> dict[int, int]:
    """Client port -> pid of the worker holding the server side of that connection."""
    owners: dict[int, int] = {}
    for proc in server.workers():
        try:
            conns = proc.net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        for conn in conns:
            if conn.raddr and conn.laddr and conn.laddr.port == server.port:
                owners[conn.raddr.port] = proc.pid
    return owners


def worker_holding(server: Server, sock: socket.socket) -> int | None:
    """The pid of the worker that holds the server side of client ``sock``, once it has accepted it."""
    return accepted_connections(server).get(sock.getsockname()[1])
    return None


def listening(port: int) -> bool:
    """Whether any socket listens on TCP ``port`` (a connection to it would be accepted or queued)."""
    return any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
               for c in psutil.net_connections(kind="tcp"))


def signal_pending(pid: int, sig: int) -> bool:
    """Whether ``sig`` sent to ``pid`` is still pending, i.e. its handler has not run yet.

    Python's C-level handler writes the signal's number to the master's wakeup pipe
    the moment the signal is delivered, so once it is no longer pending, a signal sent
    after it is queued behind it (unlike two pending signals, which Linux delivers
    lowest number first).
    """
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        fields = dict(line.split(":", 1) for line in handle if ":" in line)
    pending = int(fields["ShdPnd"], 16) | int(fields["SigPnd"], 16)
    return bool(pending & (1 << (sig - 1)))
