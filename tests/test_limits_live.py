"""The parser limits of ``[limits]`` reach the parsers of a real server.

Every limit is set far below its default, so each refusal below could only come
from the configured number (which the message names), and a request just inside
it still gets 200. Each refusal is one line in the error log and no traceback.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.server import RawClient, Response, Server, wait_for

B = b"b0undary"
LIMITS = """max_chunk_line = 32
max_trailer_bytes = 64
max_parts = 3
max_part_header_bytes = 200
max_field_size = 100
max_fields_total = 250"""


@pytest.fixture(scope="module")
def server(start_module_server: Callable[..., Server]) -> Server:
    return start_module_server(app="tests.apps.native:app", workers=1, config={"limits": LIMITS})


def _send(server: Server, data: bytes) -> Response:
    with RawClient(server.connect()) as client:
        try:
            client.send(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered before the body was all sent: the answer is what matters
        return client.read_response()


def _refused(server: Server, data: bytes, status: int, message: str) -> None:
    logged = f"-> {status}: {message}"
    before = server.error_log.read_text().count(logged)
    resp = _send(server, data)
    assert resp.status == status, resp.raw_head
    assert message in resp.body.decode(), resp.body
    wait_for(lambda: server.error_log.read_text().count(logged) > before, 5, what=f"the {status} logged")
    log = server.error_log.read_text()
    assert log.count(logged) == before + 1
    assert "Traceback" not in log


def _chunked_json(size_line: bytes, trailer: bytes = b"") -> bytes:
    return (b"POST /echo-json HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + size_line + b"\r\n{\"a\": 1}\r\n0\r\n" + trailer + b"\r\n")


def _field(name: bytes, value: bytes, extra: bytes = b"") -> bytes:
    return b"--" + B + b"\r\nContent-Disposition: form-data; name=\"" + name + b"\"\r\n" + extra + b"\r\n" + value + b"\r\n"


def _form_post(*parts: bytes) -> bytes:
    body = b"".join(parts) + b"--" + B + b"--\r\n"
    return (b"POST /form HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: multipart/form-data; boundary=" + B +
            b"\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


def test_max_chunk_line(server: Server) -> None:
    ok = _send(server, _chunked_json(b"8;e=" + b"v" * 20))
    assert ok.status == 200 and json.loads(ok.body) == {"a": 1}
    _refused(server, _chunked_json(b"8;e=" + b"v" * 40), 400, "chunk size line too long (limit 32 bytes)")


def test_max_trailer_bytes(server: Server) -> None:
    ok = _send(server, _chunked_json(b"8", b"X-T: " + b"v" * 10 + b"\r\n"))
    assert ok.status == 200 and json.loads(ok.body) == {"a": 1}
    _refused(server, _chunked_json(b"8", b"X-T: " + b"v" * 100 + b"\r\n"), 431,
             "trailer block too large (limit 64 bytes)")


def test_max_parts(server: Server) -> None:
    ok = _send(server, _form_post(*(_field(name, b"x") for name in (b"a", b"b", b"c"))))
    assert ok.status == 200 and json.loads(ok.body) == {"a": ["x"], "b": ["x"], "c": ["x"]}
    _refused(server, _form_post(*(_field(name, b"x") for name in (b"a", b"b", b"c", b"d"))), 413,
             "multipart body has more than 3 parts")


def test_max_part_header_bytes(server: Server) -> None:
    ok = _send(server, _form_post(_field(b"a", b"x", b"X-Pad: " + b"p" * 100 + b"\r\n")))
    assert ok.status == 200 and json.loads(ok.body) == {"a": ["x"]}
    _refused(server, _form_post(_field(b"a", b"x", b"X-Pad: " + b"p" * 300 + b"\r\n")), 431,
             "part header block of 349 bytes exceeds limit of 200 bytes")


def test_max_field_size(server: Server) -> None:
    ok = _send(server, _form_post(_field(b"a", b"x" * 100)))
    assert ok.status == 200 and json.loads(ok.body) == {"a": ["x" * 100]}
    _refused(server, _form_post(_field(b"a", b"x" * 101)), 413, "form field 'a' exceeds limit of 100 bytes")


def test_max_fields_total(server: Server) -> None:
    ok = _send(server, _form_post(_field(b"a", b"x" * 90), _field(b"b", b"x" * 90)))
    assert ok.status == 200 and json.loads(ok.body) == {"a": ["x" * 90], "b": ["x" * 90]}
    _refused(server, _form_post(*(_field(name, b"x" * 90) for name in (b"a", b"b", b"c"))), 413,
             "form text fields exceed the limit of 250 bytes in total")
