"""scripts/tls_relay.py (plain TCP in, TLS out), the bridge CI runs the shared conformance
suites over TLS with: a request, the half-close, the bounds, and the stop by PID.

The far end is the real prefork TLS server, except where a test has to see what prefork
hides: whether a half-close came as close_notify + FIN (prefork takes a bare FIN the same
way) and a server that stops reading (prefork reads bodies as fast as they come). There a
plain ``ssl`` server thread, which makes the difference visible, stands in.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest

from tests.apps.tls_env import file_bytes
from tests.server import REPO, RawClient, Server, free_port, wait_for
from tests.tls_helpers import Pki, client_context, make_pki

Start = Callable[..., Server]
SCRIPT = REPO / "scripts" / "tls_relay.py"


def _load_relay() -> ModuleType:
    spec = importlib.util.spec_from_file_location("tls_relay", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["tls_relay"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


tls_relay = _load_relay()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def https(start_module_server: Start, pki: Pki) -> Server:
    """prefork over TLS with the TLS test app (/env, /upload, /file)."""
    cert, key = pki.server_cert("relay-far-end")
    return start_module_server(app="tests.apps.tls_env:app", bind=f"https://127.0.0.1:{free_port()}",
                               config={"tls": f"certfile = {cert}\nkeyfile = {key}"})


@contextmanager
def relay_to(port: int, pki: Pki) -> Iterator[object]:
    """A relay in a thread of this process (so that a test can read its levels)."""
    relay = tls_relay.Relay(("127.0.0.1", 0), ("127.0.0.1", port), client_context(pki), "localhost")
    thread = threading.Thread(target=relay.serve_forever, daemon=True)
    thread.start()
    try:
        yield relay
    finally:
        relay.stop()
        thread.join(10)
        assert not thread.is_alive()


def connect(relay: object, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window follows
    sock.settimeout(10)
    sock.connect(relay.address)  # type: ignore[attr-defined]
    return sock


# --- through prefork ----------------------------------------------------------------------
def test_a_request_reaches_prefork_over_tls(https: Server, pki: Pki) -> None:
    with relay_to(https.port, pki) as relay, RawClient(connect(relay)) as client:
        client.send(b"GET /env HTTP/1.1\r\nHost: localhost\r\n\r\n")
        env = json.loads(client.read_response().body)
        assert env["wsgi.url_scheme"] == "https"
        assert env["SSL_PROTOCOL"] == "TLSv1.3"
        assert env["SSL_TLS_SNI"] == "localhost"
        client.send(b"GET /env HTTP/1.1\r\nHost: localhost\r\n\r\n")  # the same connection: keep-alive
        assert client.read_response().status == 200


def test_a_plain_request_on_the_tls_port_fails_without_the_relay(https: Server) -> None:
    # What the relay is for: the corpus runner speaks plain TCP, which this port refuses.
    with RawClient(https.connect()) as client:
        client.send(b"GET /env HTTP/1.1\r\nHost: localhost\r\n\r\n")
        assert client.read_response().status == 400


def test_the_clients_half_close_still_gets_the_answer_then_eof(https: Server, pki: Pki) -> None:
    with relay_to(https.port, pki) as relay, RawClient(connect(relay)) as client:
        client.send(b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 5\r\n\r\nhello")
        client.sock.shutdown(socket.SHUT_WR)
        response = client.read_response()
        assert response.status == 200
        assert json.loads(response.body)["sha256"] == hashlib.sha256(b"hello").hexdigest()
        assert client.at_eof()  # prefork closed after the answer; the relay passed the close on
        wait_for(lambda: not relay.pairs, 5, what="the relay releasing the connection")  # type: ignore[attr-defined]


def test_the_servers_close_reaches_the_client_after_every_byte(https: Server, pki: Pki) -> None:
    size = 3 * 1024 * 1024 + 7
    with relay_to(https.port, pki) as relay, RawClient(connect(relay)) as client:
        client.send(f"GET /file?size={size} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        response = client.read_response()
        assert response.body == file_bytes(size)
        assert client.at_eof()


def test_a_client_that_does_not_read_holds_at_most_the_bound_in_the_relay(https: Server, pki: Pki) -> None:
    size = 4 * 1024 * 1024
    with relay_to(https.port, pki) as relay:
        sock = connect(relay, rcvbuf=16 * 1024)
        with RawClient(sock) as client:
            client.send(f"GET /file?size={size} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
            pairs = wait_for(lambda: list(relay.pairs), 5, what="the relay's connection")  # type: ignore[attr-defined]
            pair = pairs[0]  # type: ignore[index]
            wait_for(lambda: pair.high_water["to_client"] >= tls_relay.BOUND, 10, what="the bound reached")
            time.sleep(0.5)  # the client still reads nothing: the relay must stop reading too
            assert pair.high_water["to_client"] <= tls_relay.BOUND + tls_relay.READ_SIZE
            assert client.read_response().body == file_bytes(size)
        assert pair.high_water["to_client"] <= tls_relay.BOUND + tls_relay.READ_SIZE


# --- against a bare TLS server (what prefork cannot show) ---------------------------------
@contextmanager
def bare_tls_server(pki: Pki, handler: Callable[[ssl.SSLSocket], None],
                    rcvbuf: int | None = None) -> Iterator[tuple[int, list[BaseException]]]:
    """One-connection TLS server in a thread; ragged EOFs raise (``suppress_ragged_eofs=False``)."""
    cert, key = pki.server_cert("bare")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(str(cert), str(key))
    listener = socket.create_server(("127.0.0.1", 0))
    if rcvbuf is not None:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # inherited by the accepted socket
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            raw, _ = listener.accept()
            raw.settimeout(10)
            with context.wrap_socket(raw, server_side=True, suppress_ragged_eofs=False) as conn:
                handler(conn)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], errors
    finally:
        thread.join(10)
        listener.close()
    assert not thread.is_alive()


def test_the_half_close_is_close_notify_then_fin_and_the_server_may_still_answer(pki: Pki) -> None:
    seen: list[bytes] = []

    def handler(conn: ssl.SSLSocket) -> None:
        data = b""
        while chunk := conn.recv(4096):  # b"" only after close_notify; a bare FIN raises SSLEOFError
            data += chunk
        seen.append(data)
        conn.sendall(b"answer after your close_notify")
        conn.unwrap()  # our close_notify; the relay turns it into a FIN

    with bare_tls_server(pki, handler) as (port, errors), relay_to(port, pki) as relay:
        with connect(relay) as sock:
            sock.sendall(b"question")
            sock.shutdown(socket.SHUT_WR)
            got = b""
            while chunk := sock.recv(4096):
                got += chunk
    assert not errors, errors
    assert seen == [b"question"]
    assert got == b"answer after your close_notify"


def test_a_server_that_does_not_read_holds_at_most_the_bound_in_the_relay(pki: Pki) -> None:
    payload = bytes(range(256)) * 4096 * 8  # 8 MiB: more than the kernel buffers on the way hold
    go = threading.Event()
    digest: list[str] = []

    def handler(conn: ssl.SSLSocket) -> None:
        go.wait(10)
        hasher, left = hashlib.sha256(), len(payload)
        while left:
            chunk = conn.recv(min(left, 65536))
            assert chunk, "short"
            hasher.update(chunk)
            left -= len(chunk)
        digest.append(hasher.hexdigest())

    with bare_tls_server(pki, handler, rcvbuf=16 * 1024) as (port, errors), relay_to(port, pki) as relay:
        with connect(relay) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 16 * 1024)
            sender = threading.Thread(target=sock.sendall, args=(payload,), daemon=True)
            sender.start()
            pair = wait_for(lambda: list(relay.pairs), 5, what="the relay's connection")[0]  # type: ignore
            wait_for(lambda: pair.high_water["to_server"] >= tls_relay.BOUND, 10, what="the bound reached")
            time.sleep(0.5)  # the server still reads nothing
            # One read past the bound, as ciphertext: 16 KiB plus one record's 22 bytes (TLS 1.3 AEAD).
            limit = tls_relay.BOUND + tls_relay.READ_SIZE + 256
            assert pair.high_water["to_server"] <= limit
            go.set()
            sender.join(10)
            wait_for(lambda: digest, 10, what="the server reading everything")
    assert not errors, errors
    assert digest == [hashlib.sha256(payload).hexdigest()]
    assert pair.high_water["to_server"] <= limit


# --- the script ---------------------------------------------------------------------------
def test_the_script_relays_until_sigterm_to_its_pid(https: Server, pki: Pki, tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "--connect", f"127.0.0.1:{https.port}",
                             "--cafile", str(pki.ca_file)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("tls_relay: listening on 127.0.0.1:"), line
        port = int(line.split()[3].rpartition(":")[2])
        with RawClient(socket.create_connection(("127.0.0.1", port), timeout=10)) as client:
            client.send(b"GET /env HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            assert json.loads(client.read_response().body)["HTTPS"] == "on"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
        assert proc.stderr is not None
        assert "tls_relay: stopped after 1 connections" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_the_script_refuses_to_run_unchecked_without_saying_so() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--connect", "127.0.0.1:1"], capture_output=True,
                          text=True, timeout=30)
    assert done.returncode == 2
    assert "give --cafile, or --insecure to skip the certificate check" in done.stderr


def test_a_certificate_for_another_name_is_refused(https: Server, pki: Pki) -> None:
    relay = tls_relay.Relay(("127.0.0.1", 0), ("127.0.0.1", https.port), client_context(pki), "other.test")
    thread = threading.Thread(target=relay.serve_forever, daemon=True)
    thread.start()
    try:
        with connect(relay) as sock:
            sock.sendall(b"GET /env HTTP/1.1\r\nHost: localhost\r\n\r\n")
            try:
                answer = sock.recv(4096)
            except ConnectionResetError:  # closed with the request unread: a RST
                answer = b""
            assert answer == b""  # no bytes ever went to an unchecked server
    finally:
        relay.stop()
        thread.join(10)
