"""What the logs say when a client gives up on its upload, or the disk is too small.

Issue 11, §8: an aborted upload is the client's doing, not a bad request: it is
logged as a client abort, with nginx's 499 in the access log. A body refused
for ``min_free_disk`` says in its log line where, how much is free and which
setting refused it.
"""

from __future__ import annotations

import re
import socket
import struct
from collections.abc import Callable

from tests.server import RawClient, Server, request, wait_for

UPLOAD_APP = "tests.apps.upload:app"
DECLARED = 10_000_000


def _start_upload(server: Server) -> socket.socket:
    sock = server.connect()
    sock.sendall(b"POST /sha256 HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n" % DECLARED + b"x" * 3000)
    return sock


def _uploads_in_flight(server: Server) -> bool:
    with RawClient(server.connect()) as client:
        client.send(b"GET /server-status?format=json HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        return b'"path": "/sha256"' in client.read_response().body


def test_an_upload_the_client_abandons_is_logged_as_a_client_abort(start_server: Callable[..., Server]) -> None:
    server = start_server(app=UPLOAD_APP)
    sock = _start_upload(server)
    wait_for(lambda: _uploads_in_flight(server), 5, what="the upload in flight")
    sock.close()
    wait_for(lambda: "upload discarded" in server.error_log.read_text(), 5, what="the abort logged")
    log = server.error_log.read_text()
    assert re.search(r"127\.0\.0\.1:\d+ POST /sha256: the client closed the connection after 3000 of "
                     rf"{DECLARED} body bytes; upload discarded", log), log
    assert "-> 400" not in log
    wait_for(lambda: '"POST /sha256 HTTP/1.1" 499 ' in server.access_log.read_text(), 5, what="access line 499")


def test_an_upload_reset_by_the_client_is_logged_as_a_client_abort(start_server: Callable[..., Server]) -> None:
    server = start_server(app=UPLOAD_APP)
    sock = _start_upload(server)
    wait_for(lambda: _uploads_in_flight(server), 5, what="the upload in flight")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # RST instead of FIN
    wait_for(lambda: "upload discarded" in server.error_log.read_text(), 5, what="the abort logged")
    assert "the client reset the connection after 3000 of" in server.error_log.read_text()


def test_min_free_disk_refusal_says_why(start_server: Callable[..., Server]) -> None:
    server = start_server(app=UPLOAD_APP, config={"staging": "min_free_disk = 1000TiB"})
    resp = request(server, b"POST /sha256 HTTP/1.1\r\nHost: t\r\nContent-Length: 2000000\r\n\r\n")
    assert resp.status == 507
    pattern = (rf"-> 507: not enough disk space to stage a 2000000-byte body in {server.staging}: \d+ bytes "
               r"free, and \[staging\] min_free_disk = 1099511627776000 bytes must stay free")
    wait_for(lambda: re.search(pattern, server.error_log.read_text()), 5, what="the 507 logged with its reason")
    assert re.search(pattern[len("-> 507: "):], resp.body.decode())


def test_start_up_warns_when_min_free_disk_is_out_of_reach(start_server: Callable[..., Server]) -> None:
    server = start_server(app=UPLOAD_APP, config={"staging": "min_free_disk = 1000TiB"})
    assert re.search(rf"\[staging\] dir {server.staging} has [0-9]+\.[0-9] GiB free, less than \[staging\] "
                     r"min_free_disk = 1000TiB: every body over memory_threshold \(1MiB\) is refused with 507",
                     server.error_log.read_text()), server.error_log.read_text()
