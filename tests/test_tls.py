"""TLS termination in the workers, tried with real clients: requests, curl, openssl s_client,
websocket-client and the websockets library over wss.

The certificates are made here by trustme; the server is the real one, on loopback.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import requests
import websocket
from websockets.sync.client import connect as ws_connect

from tests.apps.tls_env import file_bytes
from tests.server import REPO, Server, free_port, wait_for
from tests.tls_helpers import Pki, client_context, make_pki, peer_serial, tls_connect

Start = Callable[..., Server]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_section(cert: tuple[Path, Path], extra: str = "") -> str:
    return f"certfile = {cert[0]}\nkeyfile = {cert[1]}\n{extra}"


@pytest.fixture(scope="module")
def https(start_module_server: Start, pki: Pki) -> Server:
    """One HTTPS server (2 workers) with HSTS, for the read-only tests."""
    return start_module_server(app="tests.apps.tls_env:app", workers=2, bind=f"https://127.0.0.1:{free()}",
                               config={"tls": tls_section(pki.server_cert("main"), "hsts = 1h")})


def free() -> int:
    return free_port()


def base(server: Server) -> str:
    """The server's https URL by name, so that the client sends SNI (never for an IP address)."""
    return f"https://localhost:{server.port}"


def get_env(server: Server, pki: Pki, **kwargs: object) -> dict[str, object]:
    response = requests.get(f"{base(server)}/env", verify=str(pki.ca_file), timeout=10, **kwargs)  # type: ignore[arg-type]
    assert response.status_code == 200
    document: dict[str, object] = response.json()
    return document


# --- serving ------------------------------------------------------------------------------
def test_requests_over_https_sees_https_in_the_environ(https: Server, pki: Pki) -> None:
    env = get_env(https, pki)
    assert env["wsgi.url_scheme"] == "https"
    assert env["HTTPS"] == "on"
    assert env["SSL_PROTOCOL"] == "TLSv1.3"
    assert env["SSL_CIPHER"]
    assert env["SSL_TLS_SNI"] == "localhost"
    assert env["SSL_CLIENT_VERIFY"] == "NONE"
    assert env["REMOTE_ADDR"] == "127.0.0.1"


def test_hsts_header_on_https_responses(https: Server, pki: Pki) -> None:
    response = requests.get(f"{base(https)}/env", verify=str(pki.ca_file), timeout=10)
    assert response.headers["Strict-Transport-Security"] == "max-age=3600"


def test_keep_alive_over_tls_serves_many_requests_on_one_connection(https: Server, pki: Pki) -> None:
    with requests.Session() as session:
        for _ in range(20):
            assert session.get(f"{base(https)}/env", verify=str(pki.ca_file), timeout=10).status_code == 200
    # One TLS handshake for all of them: pipelined requests in one record are answered in order too.
    with tls_connect(https.port, client_context(pki)) as sock:
        sock.sendall(b"GET /env HTTP/1.1\r\nHost: a\r\n\r\n" * 5)
        data = b""
        while data.count(b"HTTP/1.1 200") < 5:
            chunk = sock.recv(65536)
            assert chunk, data
            data += chunk


def test_curl_with_the_test_ca(https: Server, pki: Pki) -> None:
    if not shutil.which("curl"):
        pytest.fail("curl is not installed (.ci/run installs it)")
    out = subprocess.run(["curl", "-sS", "--cacert", str(pki.ca_file), "-w", "\n%{http_version} %{http_code}",
                          f"https://localhost:{https.port}/env"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    body, _, tail = out.stdout.rpartition("\n")
    assert tail == "1.1 200"
    assert json.loads(body)["wsgi.url_scheme"] == "https"


def s_client(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    if not shutil.which("openssl"):
        pytest.fail("openssl is not installed (.ci/run installs it)")
    return subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost",
                           *args], input="", capture_output=True, text=True, timeout=30)


def test_openssl_s_client_gets_alpn_http11_and_tls13(https: Server) -> None:
    out = s_client(https.port, "-alpn", "h2,http/1.1")
    assert "ALPN protocol: http/1.1" in out.stdout
    assert "TLSv1.3" in out.stdout


def test_tls_1_1_is_refused_and_1_2_accepted(https: Server) -> None:
    assert s_client(https.port, "-tls1_2").returncode == 0
    refused = s_client(https.port, "-tls1_1")
    assert refused.returncode != 0
    assert "Cipher is (NONE)" in refused.stdout or "alert" in refused.stderr.lower()


def test_upload_64_mib_over_tls_arrives_intact(https: Server, pki: Pki) -> None:
    body = os.urandom(1 << 20) * 64
    response = requests.post(f"{base(https)}/upload", data=body, verify=str(pki.ca_file), timeout=60)
    assert response.json() == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}


@pytest.mark.parametrize("size", [0, 100, (1 << 20) * 8 + 17])
def test_file_response_over_tls(https: Server, pki: Pki, size: int) -> None:
    response = requests.get(f"{base(https)}/file?size={size}", verify=str(pki.ca_file), timeout=60)
    assert response.status_code == 200
    assert response.content == file_bytes(size)


# --- bad input on the TLS port -------------------------------------------------------------
def test_plain_http_on_the_tls_port_gets_a_plain_400(https: Server, pki: Pki) -> None:
    with socket.create_connection(("127.0.0.1", https.port), timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 400 ")
    assert b"https://" in data
    assert b"Connection: close" in data
    get_env(https, pki)  # the worker is fine


def test_garbage_handshake_is_closed_and_logged_at_info(https: Server, pki: Pki) -> None:
    with socket.create_connection(("127.0.0.1", https.port), timeout=10) as sock:
        sock.sendall(b"\x16\x03\x01\x00\x05garbage-that-is-no-client-hello")
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass  # closed with the rest of the garbage unread: the kernel answers with a reset
    assert not data or data[0] == 0x15  # nothing, or a TLS alert record; then the close
    wait_for(lambda: "TLS handshake failed" in https.error_log.read_text(), 10)
    log = https.error_log.read_text()
    assert "Traceback" not in log
    get_env(https, pki)


def test_a_truncated_handshake_is_closed_at_header_timeout_without_holding_the_worker(
        start_server: Start, pki: Pki) -> None:
    server = start_server(app="tests.apps.tls_env:app", bind=f"https://127.0.0.1:{free()}",
                          config={"tls": tls_section(pki.server_cert("stall")), "limits": "header_timeout = 1s"})
    stalled = [socket.create_connection(("127.0.0.1", server.port), timeout=10) for _ in range(20)]
    try:
        stalled[0].sendall(b"\x16\x03\x01\x02\x00\x01")  # the start of a ClientHello, never finished
        get_env(server, pki)  # served while 20 handshakes stall (1 worker)
        for sock in stalled:
            sock.settimeout(10)
            assert sock.recv(100) == b""  # closed by the server at header_timeout
    finally:
        for sock in stalled:
            sock.close()


def test_renegotiation_is_refused(https: Server) -> None:
    # TLS 1.2 is the last version with renegotiation; "R" asks s_client to renegotiate.
    proc = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{https.port}", "-tls1_2"],
                          input="R\n", capture_output=True, text=True, timeout=30)
    combined = proc.stdout + proc.stderr
    assert "RENEGOTIATING" in combined
    assert "no renegotiation" in combined.lower()  # the server's alert, as s_client reports it


# --- WebSocket over TLS --------------------------------------------------------------------
@pytest.fixture(scope="module")
def wss(start_module_server: Start, pki: Pki) -> Server:
    return start_module_server(app="tests.apps.ws_echo:app", workers=2, bind=f"https://127.0.0.1:{free()}",
                               config={"tls": tls_section(pki.server_cert("wss"))})


def test_websocket_client_over_wss(wss: Server, pki: Pki) -> None:
    ws = websocket.create_connection(f"wss://localhost:{wss.port}/echo", timeout=10,
                                     sslopt={"ca_certs": str(pki.ca_file)})
    try:
        for message in ("hello", "x" * 70_000):
            ws.send(message)
            assert ws.recv() == message
    finally:
        ws.close()


def test_websockets_library_over_wss_with_permessage_deflate(wss: Server, pki: Pki) -> None:
    with ws_connect(f"wss://localhost:{wss.port}/echo", ssl=client_context(pki), compression="deflate",
                    open_timeout=10) as ws:
        assert "permessage-deflate" in (ws.response.headers.get("Sec-WebSocket-Extensions") or "")
        payload = b"compressible " * 50_000  # under the client's 1 MiB max_size
        ws.send(payload)
        assert ws.recv(timeout=10) == payload


# --- client certificates and SNI -----------------------------------------------------------
def test_required_client_certificate(start_server: Start, pki: Pki) -> None:
    server = start_server(app="tests.apps.tls_env:app", bind=f"https://127.0.0.1:{free()}",
                          config={"tls": tls_section(pki.server_cert("mtls"),
                                                     f"ca_certs = {pki.ca_file}\nverify_client = required")})
    alice = pki.client_cert("alice", "alice")
    env = get_env(server, pki, cert=str(alice))
    assert env["SSL_CLIENT_VERIFY"] == "SUCCESS"
    assert env["SSL_CLIENT_S_DN"] and "CN=alice" in str(env["SSL_CLIENT_S_DN"])
    assert env["client_cert"]
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{base(server)}/env", verify=str(pki.ca_file), timeout=10)
    assert get_env(server, pki, cert=str(alice))["SSL_CLIENT_VERIFY"] == "SUCCESS"


def test_sni_selects_the_named_certificate(start_server: Start, pki: Pki) -> None:
    default = pki.server_cert("default", "localhost")
    other = pki.server_cert("other", "other.test")
    server = start_server(app="tests.apps.tls_env:app", bind=f"https://127.0.0.1:{free()}",
                          config={"tls": tls_section(default, f"sni = other.test {other[0]} {other[1]}")})
    with tls_connect(server.port, client_context(pki), "other.test") as sock:
        names = [value for kind, value in sock.getpeercert().get("subjectAltName", ())]  # type: ignore[union-attr]
    assert names == ["other.test"]
    with tls_connect(server.port, client_context(pki), "localhost") as sock:
        names = [value for kind, value in sock.getpeercert().get("subjectAltName", ())]  # type: ignore[union-attr]
    assert names == ["localhost"]


# --- HUP reloads certificates ---------------------------------------------------------------
def test_hup_serves_a_renewed_certificate_and_keeps_the_old_one_after_a_bad_one(
        start_server: Start, pki: Pki, tmp_path: Path) -> None:
    cert, key = tmp_path / "live.pem", tmp_path / "live.key"
    first = pki.server_cert("first")
    shutil.copy(first[0], cert)
    shutil.copy(first[1], key)
    server = start_server(app="tests.apps.tls_env:app", workers=2, bind=f"https://127.0.0.1:{free()}",
                          config={"tls": f"certfile = {cert}\nkeyfile = {key}"})
    old_serial = peer_serial(server.port, pki)
    old_workers = {proc.pid for proc in server.workers()}
    kept = tls_connect(server.port, client_context(pki))  # an open connection across the reload
    try:
        renewed = pki.server_cert("renewed")
        shutil.copy(renewed[0], cert)
        shutil.copy(renewed[1], key)
        server.signal(signal.SIGHUP)
        kept.sendall(b"GET /env HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        assert kept.recv(100).startswith(b"HTTP/1.1 200")  # the old connection is served to its end
        wait_for(lambda: "reload complete (generation 2)" in server.error_log.read_text(), 20)
        wait_for(lambda: not old_workers & {proc.pid for proc in server.workers()}, 20)
        new_serial = peer_serial(server.port, pki)
        assert new_serial != old_serial

        key.write_bytes(pki.server_cert("unrelated")[1].read_bytes())  # a key that does not match
        server.signal(signal.SIGHUP)
        wait_for(lambda: "reload failed" in server.error_log.read_text(), 20)
        assert "does not belong to this certificate" in server.error_log.read_text()
        assert peer_serial(server.port, pki) == new_serial
        assert server.proc.poll() is None
    finally:
        kept.close()


# --- start-up errors ------------------------------------------------------------------------
def start_failing(start_server: Start, tls: str, bind: str = "") -> str:
    server = start_server(wait=False, app="tests.apps.tls_env:app", bind=bind or f"https://127.0.0.1:{free()}",
                          config={"tls": tls})
    assert server.wait(timeout=20) == 2
    return server.output()


def test_missing_certificate_file_exits_2_naming_the_key(start_server: Start, tmp_path: Path) -> None:
    out = start_failing(start_server, f"certfile = {tmp_path}/nope.pem")
    assert "[tls] certfile" in out and "nope.pem" in out and "cannot read it" in out


def test_mismatched_key_exits_2(start_server: Start, pki: Pki) -> None:
    cert, _ = pki.server_cert("mismatch-a")
    _, other_key = pki.server_cert("mismatch-b")
    out = start_failing(start_server, f"certfile = {cert}\nkeyfile = {other_key}")
    assert "does not belong to this certificate" in out


def test_encrypted_key_with_password_file_and_wrong_password(start_server: Start, pki: Pki,
                                                             tmp_path: Path) -> None:
    cert, key = pki.server_cert("encrypted")
    locked = pki.encrypted_key(key, b"s3cret")
    good, bad = tmp_path / "good.txt", tmp_path / "bad.txt"
    good.write_text("s3cret\n")
    bad.write_text("wrong\n")
    out = start_failing(start_server, f"certfile = {cert}\nkeyfile = {locked}\npassword_file = {bad}")
    assert "wrong password" in out
    out = start_failing(start_server, f"certfile = {cert}\nkeyfile = {locked}")
    assert "password_file" in out
    server = start_server(app="tests.apps.tls_env:app", bind=f"https://127.0.0.1:{free()}",
                          config={"tls": f"certfile = {cert}\nkeyfile = {locked}\npassword_file = {good}"})
    assert get_env(server, pki)["HTTPS"] == "on"


def test_expired_certificate_warns_and_serves(start_server: Start, pki: Pki) -> None:
    now = datetime.datetime.now(datetime.timezone.utc)
    expired = pki.server_cert("expired", not_before=now - datetime.timedelta(days=30),
                              not_after=now - datetime.timedelta(days=1))
    server = start_server(app="tests.apps.tls_env:app", bind=f"https://127.0.0.1:{free()}",
                          config={"tls": tls_section(expired)})
    assert "the certificate expired on" in server.error_log.read_text()
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{base(server)}/env", verify=str(pki.ca_file), timeout=10)


def test_https_bind_without_a_certificate_exits_2(start_server: Start) -> None:
    out = start_failing(start_server, "")
    assert "an https:// listener needs [tls] certfile" in out


# --- plain and TLS side by side, redirect -------------------------------------------------
def test_plain_listener_redirects_to_https_with_308(start_server: Start, pki: Pki) -> None:
    tls_port, plain_port = free(), free()
    server = start_server(app="tests.apps.tls_env:app", bind=f"https://127.0.0.1:{tls_port}",
                          config={"tls": tls_section(pki.server_cert("redirect"), "redirect_http = on")},
                          extra_args=["-b", f"https://127.0.0.1:{tls_port}", "-b", f"http://127.0.0.1:{plain_port}"])
    response = requests.post(f"http://localhost:{plain_port}/env?x=1", data=b"abc", allow_redirects=False,
                             timeout=10)
    assert response.status_code == 308
    assert response.headers["Location"] == f"https://localhost:{tls_port}/env?x=1"
    followed = requests.get(f"http://localhost:{plain_port}/env", verify=str(pki.ca_file), timeout=10)
    assert followed.json()["wsgi.url_scheme"] == "https"
    assert server.proc.poll() is None


def test_plain_and_tls_listeners_side_by_side(start_server: Start, pki: Pki) -> None:
    tls_port, plain_port = free(), free()
    start_server(app="tests.apps.tls_env:app", bind=f"https://127.0.0.1:{tls_port}",
                 config={"tls": tls_section(pki.server_cert("both"))},
                 extra_args=["-b", f"https://127.0.0.1:{tls_port}", "-b", f"http://127.0.0.1:{plain_port}"])
    plain = requests.get(f"http://127.0.0.1:{plain_port}/env", timeout=10).json()
    assert plain["wsgi.url_scheme"] == "http" and plain["HTTPS"] is None
    secure = requests.get(f"https://localhost:{tls_port}/env", verify=str(pki.ca_file), timeout=10).json()
    assert secure["wsgi.url_scheme"] == "https"


def test_gunicorn_style_flags_make_a_bare_bind_https(start_server: Start, pki: Pki) -> None:
    cert, key = pki.server_cert("flags")
    port = free()
    server = start_server(app="tests.apps.tls_env:app", bind=f"https://127.0.0.1:{port}",
                          extra_args=["-b", f"127.0.0.1:{port}", "--certfile", str(cert), "--keyfile", str(key)])
    assert get_env(server, pki)["HTTPS"] == "on"


def test_status_command_reads_the_status_over_https(https: Server) -> None:
    # The server's config: its first bind is https://, so `prefork-serve status` speaks TLS.
    out = subprocess.run([sys.executable, "-m", "prefork.cli", "status", "-c", str(https.config_path), "--json"],
                         capture_output=True, text=True, timeout=30, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)["workers"]) == 2


def test_optional_client_certificate(start_server: Start, pki: Pki) -> None:
    server = start_server(app="tests.apps.tls_env:app", bind=f"https://127.0.0.1:{free()}",
                          config={"tls": tls_section(pki.server_cert("optional"),
                                                     f"ca_certs = {pki.ca_file}\nverify_client = optional")})
    assert get_env(server, pki)["SSL_CLIENT_VERIFY"] == "NONE"
    with_cert = get_env(server, pki, cert=str(pki.client_cert("bob", "bob")))
    assert with_cert["SSL_CLIENT_VERIFY"] == "SUCCESS" and "CN=bob" in str(with_cert["SSL_CLIENT_S_DN"])


def test_min_version_and_ciphers(start_server: Start, pki: Pki) -> None:
    strict = start_server(app="tests.apps.tls_env:app", bind=f"https://127.0.0.1:{free()}",
                          config={"tls": tls_section(pki.server_cert("tls13"), "min_version = 1.3")})
    assert s_client(strict.port, "-tls1_2").returncode != 0
    assert s_client(strict.port, "-tls1_3").returncode == 0
    narrow = start_server(app="tests.apps.tls_env:app", bind=f"https://127.0.0.1:{free()}",
                          config={"tls": tls_section(pki.server_cert("ciphers"), "ciphers = ECDHE+AESGCM")})
    assert s_client(narrow.port, "-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"
                    ).returncode == 0
    assert s_client(narrow.port, "-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
                    ).returncode != 0


def test_ciphers_that_select_nothing_exit_2(start_server: Start, pki: Pki) -> None:
    cert, key = pki.server_cert("nocipher")
    out = start_failing(start_server, f"certfile = {cert}\nkeyfile = {key}\nciphers = NOSUCHCIPHER")
    assert "[tls] ciphers" in out and "selects no cipher" in out


def test_failed_handshakes_leave_no_descriptor_behind(https: Server, pki: Pki) -> None:
    get_env(https, pki)
    workers = https.workers()
    before = sum(proc.num_fds() for proc in workers)
    for _ in range(30):
        with socket.create_connection(("127.0.0.1", https.port), timeout=10) as sock:
            sock.sendall(b"\x16\x03\x01\x00\x05garbage")
            try:
                while sock.recv(65536):
                    pass
            except ConnectionResetError:
                pass
    wait_for(lambda: sum(proc.num_fds() for proc in workers) <= before, 10)
    get_env(https, pki)
