"""Behind a proxy: Forwarded / X-Forwarded-* believed from trusted peers only, end to end.

The parsing itself is unit-tested in tests/test_forwarded.py; here the real server
shows what the app, the access log and the status page make of it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import requests

from tests.server import RawClient, Server, wait_for

Start = Callable[..., Server]


@pytest.fixture(scope="module")
def behind_proxy(start_module_server: Start) -> Server:
    """The default [proxy] trusted (127.0.0.1, ::1): the test client is the 'proxy'."""
    return start_module_server(app="tests.apps.tls_env:app", config={"status": "allow = 127.0.0.1"})


@pytest.fixture(scope="module")
def untrusting(start_module_server: Start) -> Server:
    return start_module_server(app="tests.apps.tls_env:app", extra_args=["--forwarded-allow-ips", "10.0.0.0/8"])


def env(server: Server, headers: dict[str, str]) -> dict[str, object]:
    response = requests.get(f"{server.url}/env", headers=headers, timeout=10)
    assert response.status_code == 200
    document: dict[str, object] = response.json()
    return document


def test_x_forwarded_from_a_trusted_peer_sets_client_and_scheme(behind_proxy: Server) -> None:
    seen = env(behind_proxy, {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https"})
    assert seen["REMOTE_ADDR"] == "203.0.113.7"
    assert seen["wsgi.url_scheme"] == "https"
    assert seen["SERVER_PORT"] == "443"
    assert seen["HTTP_X_FORWARDED_FOR"] == "203.0.113.7"  # the app still sees the header


def test_right_most_untrusted_address_wins_over_a_forged_left_part(behind_proxy: Server) -> None:
    # The client forged "6.6.6.6"; nginx appended the address it saw (198.51.100.2).
    seen = env(behind_proxy, {"X-Forwarded-For": "6.6.6.6, 198.51.100.2"})
    assert seen["REMOTE_ADDR"] == "198.51.100.2"
    # A chain through a second trusted proxy (127.0.0.1) still ends at the client.
    seen = env(behind_proxy, {"X-Forwarded-For": "6.6.6.6, 198.51.100.2, 127.0.0.1"})
    assert seen["REMOTE_ADDR"] == "198.51.100.2"


def test_forwarded_header_rfc7239(behind_proxy: Server) -> None:
    seen = env(behind_proxy, {"Forwarded": 'for="[2001:db8::1]:4711";proto=https;host=example.com'})
    assert seen["REMOTE_ADDR"] == "2001:db8::1"
    assert seen["REMOTE_PORT"] == "4711"
    assert seen["wsgi.url_scheme"] == "https"
    assert seen["SERVER_NAME"] == "example.com"
    assert seen["SERVER_PORT"] == "443"


def test_no_headers_leave_the_connection_as_it_is(behind_proxy: Server) -> None:
    seen = env(behind_proxy, {})
    assert seen["REMOTE_ADDR"] == "127.0.0.1"
    assert seen["wsgi.url_scheme"] == "http"
    assert seen["SERVER_PORT"] == str(behind_proxy.port)


def test_access_log_names_the_forwarded_client(behind_proxy: Server) -> None:
    env(behind_proxy, {"X-Forwarded-For": "192.0.2.99", "User-Agent": "proxied-agent"})
    wait_for(lambda: "proxied-agent" in behind_proxy.access_log.read_text(), 10)
    line = [row for row in behind_proxy.access_log.read_text().splitlines() if "proxied-agent" in row][-1]
    assert line.startswith("192.0.2.99 ")


def test_status_page_allow_list_sees_the_forwarded_client(behind_proxy: Server) -> None:
    assert requests.get(f"{behind_proxy.url}/server-status", timeout=10).status_code == 200
    forwarded = requests.get(f"{behind_proxy.url}/server-status", headers={"X-Forwarded-For": "192.0.2.1"},
                             timeout=10)
    assert forwarded.status_code == 403


def test_headers_from_an_untrusted_peer_change_nothing(untrusting: Server) -> None:
    seen = env(untrusting, {"X-Forwarded-For": "203.0.113.7", "X-Forwarded-Proto": "https",
                            "Forwarded": "for=203.0.113.8;proto=https"})
    assert seen["REMOTE_ADDR"] == "127.0.0.1"
    assert seen["wsgi.url_scheme"] == "http"
    assert seen["HTTP_X_FORWARDED_FOR"] == "203.0.113.7"
    assert seen["HTTP_FORWARDED"] == "for=203.0.113.8;proto=https"


def test_bad_trusted_entry_is_a_clear_start_up_error(start_server: Start) -> None:
    server = start_server(wait=False, app="tests.apps.tls_env:app", config={"proxy": "trusted = 10.0.0.1/8"})
    assert server.wait(timeout=20) == 2
    out = server.output()
    assert "[proxy] trusted" in out and "10.0.0.1/8" in out and "no host bits" in out


def ws_handshake_status(server: Server, headers: str) -> int:
    with server.connect() as sock:
        sock.sendall(("GET /chat HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n%s\r\n"
                      % (server.port, headers)).encode())
        head = RawClient(sock).read_until(b"\r\n\r\n")  # a 101 has no body framing: read the head only
        return int(head.split(b" ", 2)[1])


@pytest.mark.parametrize("trusted, expected", [("127.0.0.1", 101), ("10.0.0.0/8", 403)])
def test_websocket_origin_check_uses_the_host_a_trusted_proxy_names(start_server: Start, trusted: str,
                                                                    expected: int) -> None:
    # A proxy that rewrote Host to the upstream address says the browser's host in X-Forwarded-Host.
    server = start_server(app="tests.apps.behind_proxy:app", config={"proxy": f"trusted = {trusted}"})
    forwarded = "Origin: https://chat.example.org\r\nX-Forwarded-Host: chat.example.org\r\nX-Forwarded-Proto: https\r\n"
    assert ws_handshake_status(server, forwarded) == expected
    assert ws_handshake_status(server, "Origin: https://chat.example.org\r\n") == 403  # no proxy said so
