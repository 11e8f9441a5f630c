"""The shipped conf/nginx.conf and conf/haproxy.cfg, for real: Debian's nginx and haproxy on
loopback in front of prefork (installed by .ci/run), each started and stopped by PID here.

The client connects from 127.0.0.2, so the address the app sees can only have come
through the proxy's headers (or its PROXY protocol header), never from the socket.
Each proxy carries a 1 GiB upload and a WebSocket chat.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import websocket

from tests.server import REPO, Server, free_port, wait_for
from tests.tls_helpers import client_context, make_pki

Start = Callable[..., Server]
CLIENT_IP = "127.0.0.2"  # any 127/8 address is loopback on Linux
STOP_TIMEOUT = 10.0


class Proxy:
    """A proxy process on a loopback port (stopped by PID at teardown)."""

    def __init__(self, args: list[str], port: int, log: Path) -> None:
        self.port = port
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        wait_for(lambda: self.proc.poll() is not None or _listening(port), 20)
        if self.proc.poll() is not None:
            raise RuntimeError(f"{args[0]} exited with {self.proc.returncode}:\n{log.read_text()}")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=STOP_TIMEOUT)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _need(tool: str) -> str:
    path = shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin")
    if path is None:
        pytest.fail(f"{tool} is not installed (.ci/run installs Debian's {tool})")
    return path


def shipped_nginx(upstream: int, port: int) -> str:
    """conf/nginx.conf with its example upstreams replaced by one prefork on loopback."""
    text = (REPO / "conf" / "nginx.conf").read_text()
    text, servers = re.subn(r"(?m)^\s*server 10\.0\.0\.1[12]:8000[^;]*;\n", "", text)
    assert servers == 6, "conf/nginx.conf changed: update this test's rewrite"
    # the balanced upstream and each machine's own (resumable uploads): all this one prefork
    text, upstreams = re.subn(r"(?m)^(upstream \w+ \{\n)", rf"\1    server 127.0.0.1:{upstream};\n", text)
    assert upstreams == 3, "conf/nginx.conf changed: update this test's rewrite"
    text, listens = re.subn(r"listen 80;", f"listen 127.0.0.1:{port};", text)
    assert listens == 1
    return text


def shipped_haproxy(upstream: int, port: int, server_options: str = "") -> str:
    """conf/haproxy.cfg with its example servers replaced by one prefork on loopback."""
    text = (REPO / "conf" / "haproxy.cfg").read_text()
    text, servers = re.subn(r"(?m)^\s*server app\d 10\.0\.0\.1[12]:8000 check\n?", "", text)
    assert servers == 2, "conf/haproxy.cfg changed: update this test's rewrite"
    # app2 is gone, and so must its routing rule be (haproxy refuses a rule naming no server)
    text, rules = re.subn(r"(?m)^\s*use-server app2 .*\n", "", text)
    assert rules == 1, "conf/haproxy.cfg changed: update this test's rewrite"
    text = text.rstrip("\n") + f"\n    server app1 127.0.0.1:{upstream} check {server_options}\n"
    text, binds = re.subn(r"bind :80", f"bind 127.0.0.1:{port}", text)
    assert binds == 1
    # maxconn 20000 makes haproxy raise its descriptor limit to 40,018, past what a test
    # machine may allow (20,000 here); a test needs a handful.
    return re.sub(r"(?m)^(\s*maxconn) \d+", r"\1 1000", text)


def start_nginx(tmp: Path, upstream: int, tls: tuple[Path, Path] | None = None) -> Proxy:
    port = free_port()
    site = shipped_nginx(upstream, port)
    if tls is not None:  # nginx terminating TLS in front, as many deployments do
        site = site.replace(f"listen 127.0.0.1:{port};", f"listen 127.0.0.1:{port} ssl;\n"
                            f"    ssl_certificate {tls[0]};\n    ssl_certificate_key {tls[1]};")
    return run_nginx(tmp, site, port)


def run_nginx(tmp: Path, site: str, port: int) -> Proxy:
    """nginx in the foreground serving ``site`` (which listens on ``port``), everything under ``tmp``."""
    (tmp / "site.conf").write_text(site)
    temp = "".join(f"    {kind}_temp_path {tmp}/{kind};\n" for kind in ("client_body", "proxy", "fastcgi",
                                                                        "uwsgi", "scgi"))
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers keep our rights to the temp dirs
    (tmp / "nginx.conf").write_text(
        f"{user}daemon off;\nworker_processes 1;\npid {tmp}/nginx.pid;\nerror_log {tmp}/nginx-error.log info;\n"
        f"events {{ worker_connections 1024; }}\nhttp {{\n    access_log {tmp}/nginx-access.log;\n{temp}"
        f"    include {tmp}/site.conf;\n}}\n")
    return Proxy([_need("nginx"), "-p", str(tmp), "-c", str(tmp / "nginx.conf")], port, tmp / "nginx.out")


def start_haproxy(tmp: Path, upstream: int, server_options: str = "") -> Proxy:
    port = free_port()
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(shipped_haproxy(upstream, port, server_options))
    return Proxy([_need("haproxy"), "-db", "-f", str(cfg)], port, tmp / "haproxy.out")


@pytest.fixture(scope="module")
def backend(start_module_server: Start) -> Server:
    return start_module_server(app="tests.apps.behind_proxy:app", workers=2)


@pytest.fixture(scope="module", params=["nginx", "haproxy"])
def proxy(request: pytest.FixtureRequest, backend: Server,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    tmp = tmp_path_factory.mktemp(request.param)
    started = (start_nginx if request.param == "nginx" else start_haproxy)(tmp, backend.port)
    try:
        # haproxy marks the server up after its first health check
        wait_for(lambda: _get_env(started.port)[0] == 200, 20)
        yield started
    finally:
        started.stop()


def _connection(port: int, timeout: float = 60.0) -> http.client.HTTPConnection:
    return http.client.HTTPConnection("127.0.0.1", port, timeout=timeout, source_address=(CLIENT_IP, 0))


def _get_env(port: int) -> tuple[int, dict[str, object]]:
    conn = _connection(port, timeout=5)
    try:
        conn.request("GET", "/env")
        response = conn.getresponse()
        body = response.read()
        return response.status, (json.loads(body) if response.status == 200 else {})
    except OSError:
        return 0, {}
    finally:
        conn.close()


def test_the_app_sees_the_client_address_through_the_proxy(proxy: Proxy) -> None:
    status, env = _get_env(proxy.port)
    assert status == 200
    assert env == {"remote_addr": CLIENT_IP, "scheme": "http"}


def test_a_1_gib_upload_through_the_proxy(proxy: Proxy) -> None:
    block = os.urandom(1 << 20)
    blocks = 1024
    expected = hashlib.sha256()
    for _ in range(blocks):
        expected.update(block)
    conn = _connection(proxy.port, timeout=120)
    try:
        conn.request("POST", "/upload", body=(block for _ in range(blocks)),
                     headers={"Content-Length": str(len(block) * blocks)})
        response = conn.getresponse()
        assert response.status == 200
        assert json.loads(response.read()) == {"size": len(block) * blocks, "sha256": expected.hexdigest()}
    finally:
        conn.close()


def _ws(port: int) -> websocket.WebSocket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(CLIENT_IP, 0))
    return websocket.create_connection(f"ws://127.0.0.1:{port}/chat", socket=sock, timeout=10)


def test_a_websocket_chat_through_the_proxy(proxy: Proxy) -> None:
    alice, bob = _ws(proxy.port), _ws(proxy.port)
    try:
        assert alice.recv() == f"hello {CLIENT_IP}"
        assert bob.recv() == f"hello {CLIENT_IP}"
        alice.send("hi from alice")
        assert alice.recv() == "hi from alice"
        assert bob.recv() == "hi from alice"
    finally:
        alice.close()
        bob.close()


def test_haproxy_send_proxy_v2_to_a_proxy_protocol_listener(start_server: Start, tmp_path: Path) -> None:
    plain, marked = f"127.0.0.1:{free_port()}", free_port()
    start_server(app="tests.apps.behind_proxy:app", bind=plain,
                 extra_args=["-b", plain, "-b", f"127.0.0.1:{marked}"],
                 config={"proxy": f"proxy_protocol = 127.0.0.1:{marked}\nheaders = forwarded"})
    # headers = forwarded: haproxy's X-Forwarded-For (option forwardfor) is not read, so
    # only the PROXY header can name the client.
    haproxy = start_haproxy(tmp_path, marked, "send-proxy-v2 check-send-proxy")
    try:
        wait_for(lambda: _get_env(haproxy.port)[0] == 200, 20)
        assert _get_env(haproxy.port)[1] == {"remote_addr": CLIENT_IP, "scheme": "http"}
    finally:
        haproxy.stop()


def test_behind_nginx_terminating_tls_the_app_sees_https(backend: Server, tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    nginx = start_nginx(tmp_path, backend.port, tls=pki.server_cert("nginx"))
    try:
        with socket.create_connection(("127.0.0.1", nginx.port), timeout=10, source_address=(CLIENT_IP, 0)) as raw:
            with client_context(pki).wrap_socket(raw, server_hostname="localhost") as sock:
                sock.sendall(b"GET /env HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := sock.recv(65536):
                    data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200"), head
        assert json.loads(body) == {"remote_addr": CLIENT_IP, "scheme": "https"}
    finally:
        nginx.stop()
