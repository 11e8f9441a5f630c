"""Listeners marked ``[proxy] proxy_protocol``: the PROXY header names the client, end to end.

The parser is unit-tested in tests/test_proxy_protocol.py; here the real server takes
headers sent by hand (v1 and v2, whole and split, before plain HTTP and before TLS).
haproxy's own send-proxy-v2 is tried in tests/test_behind_proxies.py.
"""

from __future__ import annotations

import json
import socket
import struct
from collections.abc import Callable

import pytest

from tests.server import RawClient, Server, free_port, wait_for
from tests.tls_helpers import client_context, make_pki

Start = Callable[..., Server]
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
REQUEST = b"GET /env HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n"


def v1(source: str, port: int) -> bytes:
    return f"PROXY TCP4 {source} 127.0.0.1 {port} 443\r\n".encode()


def v2(source: str, port: int, *, local: bool = False) -> bytes:
    if local:
        return V2_SIGNATURE + bytes([0x20, 0x00]) + struct.pack("!H", 0)
    block = socket.inet_aton(source) + socket.inet_aton("127.0.0.1") + struct.pack("!HH", port, 443)
    return V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", len(block)) + block


def closed_without_answer(sock: socket.socket) -> bool:
    """The server closed the connection without a byte (a reset counts: our bytes were left unread)."""
    try:
        return sock.recv(65536) == b""
    except ConnectionResetError:
        return True


def env_over(sock: socket.socket) -> dict[str, object]:
    client = RawClient(sock)
    response = client.read_response()
    assert response.status == 200, response
    document: dict[str, object] = json.loads(response.body)
    return document


def start_proxied(start: Start, proxy_bind: str, **config: str) -> Server:
    """A server with a plain listener (its readiness check) and ``proxy_bind`` marked for PROXY."""
    plain = f"127.0.0.1:{free_port()}"
    return start(app="tests.apps.tls_env:app", bind=plain, extra_args=["-b", plain, "-b", proxy_bind],
                 config={**config, "proxy": f"proxy_protocol = {proxy_bind}\n" + config.get("proxy", "")})


def connect(bind: str) -> socket.socket:
    host, _, port = bind.partition("://")[2].rpartition(":") if "://" in bind else bind.rpartition(":")
    return socket.create_connection((host, int(port)), timeout=10)


PROXIED = f"127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def proxied(start_module_server: Start) -> Server:
    return start_proxied(start_module_server, PROXIED, limits="header_timeout = 2s")


@pytest.mark.parametrize("header", [v1("203.0.113.5", 56324), v2("203.0.113.5", 56324)], ids=["v1", "v2"])
@pytest.mark.parametrize("split", ["together", "byte by byte"])
def test_proxy_header_names_the_client(proxied: Server, header: bytes, split: str) -> None:
    with connect(PROXIED) as sock:
        data = header + REQUEST
        if split == "together":
            sock.sendall(data)  # the header and the request arrive in one segment
        else:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for i in range(len(data)):
                sock.sendall(data[i:i + 1])
        seen = env_over(sock)
    assert seen["REMOTE_ADDR"] == "203.0.113.5"
    assert seen["REMOTE_PORT"] == "56324"


def test_local_command_keeps_the_real_peer(proxied: Server) -> None:
    with connect(PROXIED) as sock:
        sock.sendall(v2("0.0.0.0", 0, local=True) + REQUEST)
        assert env_over(sock)["REMOTE_ADDR"] == "127.0.0.1"


def test_a_bad_header_is_closed_and_logged(proxied: Server) -> None:
    with connect(PROXIED) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")  # no PROXY header at all
        assert closed_without_answer(sock)
    wait_for(lambda: "bad PROXY protocol header" in proxied.error_log.read_text(), 10)


def test_no_header_within_header_timeout_is_closed(proxied: Server) -> None:
    with connect(PROXIED) as sock:
        sock.sendall(b"PROXY TCP4 ")  # and nothing more
        assert closed_without_answer(sock)
    wait_for(lambda: "no PROXY protocol header within" in proxied.error_log.read_text(), 10)


def test_untrusted_peer_is_refused(start_server: Start) -> None:
    bind = f"127.0.0.1:{free_port()}"
    server = start_proxied(start_server, bind, proxy="trusted = 10.0.0.0/8")
    with connect(bind) as sock:
        sock.sendall(v1("203.0.113.5", 1000) + REQUEST)
        assert closed_without_answer(sock)
    wait_for(lambda: "not in [proxy] trusted" in server.error_log.read_text(), 10)


def test_proxy_header_before_tls(start_server: Start, tmp_path_factory: pytest.TempPathFactory) -> None:
    pki = make_pki(tmp_path_factory.mktemp("pki-pp"))
    cert, key = pki.server_cert("pp")
    bind = f"https://127.0.0.1:{free_port()}"
    start_proxied(start_server, bind, tls=f"certfile = {cert}\nkeyfile = {key}")
    raw = connect(bind)
    raw.sendall(v2("198.51.100.7", 4242))
    with client_context(pki).wrap_socket(raw, server_hostname="localhost") as sock:
        sock.sendall(REQUEST)
        seen = env_over(sock)  # type: ignore[arg-type]
    assert seen["REMOTE_ADDR"] == "198.51.100.7"
    assert seen["wsgi.url_scheme"] == "https"


def test_proxy_protocol_entry_must_name_a_listener(start_server: Start) -> None:
    server = start_server(wait=False, app="tests.apps.tls_env:app",
                          config={"proxy": "proxy_protocol = 127.0.0.1:1"})
    assert server.wait(timeout=20) == 2
    assert "not one of the listeners" in server.output()


def test_a_v2_header_longer_than_the_bound_is_refused(proxied: Server) -> None:
    with connect(PROXIED) as sock:
        # 16 fixed bytes announcing a 5,000-byte address block: past the 4,096 the gate peeks at.
        sock.sendall(V2_SIGNATURE + bytes([0x21, 0x11]) + struct.pack("!H", 5000) + b"\0" * 5000)
        assert closed_without_answer(sock)
    wait_for(lambda: "bad PROXY protocol header" in proxied.error_log.read_text(), 10)
