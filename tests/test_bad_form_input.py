"""Issue 12 through the real server: form and body input that used to escape as a traceback,
or be read two ways, or slip past ``min_free_disk``.

- A chunked body (or a form's file part) growing past ``min_free_disk``: 507, one log line,
  nothing left in the staging directory (it used to be accepted with 201).
- A ``_charset_`` field or part ``charset`` that ``codecs.lookup`` refuses: ignored, the
  form decodes as UTF-8 (it used to close the connection with a traceback in the log).
- A repeated Content-Disposition, ``name=``/``filename=`` or ``boundary=``: 400.
- ``multipart/form-datax``: a raw body for the server and the demo alike (it used to be
  parsed as a form by one and read as a raw body by the other: an empty file, 201).
- An ``<int:n>`` route given 5,000 digits: 404, not 500.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.server import RawClient, Response, Server, request, wait_for

MiB = 1 << 20
B = b"b0undary"


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _chunked(data: bytes, piece: int = 256 * 1024) -> bytes:
    out = b"".join(b"%x\r\n%s\r\n" % (len(data[i:i + piece]), data[i:i + piece]) for i in range(0, len(data), piece))
    return out + b"0\r\n\r\n"


def _send(server: Server, head: bytes, body: bytes) -> Response:
    """Send a request and read its answer, even when the server stops reading the body early."""
    with RawClient(server.connect()) as client:
        try:
            client.send(head + body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # answered before the body was all sent: the answer is what matters
        return client.read_response()


def _file_part(name: str, filename: str, data: bytes) -> bytes:
    return (b"--" + B + b"\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"%s\"\r\n"
            b"Content-Type: application/octet-stream\r\n\r\n" % (name.encode(), filename.encode()) + data + b"\r\n")


def _form(*parts: bytes) -> bytes:
    return b"".join(parts) + b"--" + B + b"--\r\n"


def _field(name: bytes, value: bytes, extra: bytes = b"") -> bytes:
    return b"--" + B + b"\r\nContent-Disposition: form-data; name=\"" + name + b"\"\r\n" + extra + b"\r\n" + value + b"\r\n"


# --- min_free_disk for bodies of unknown length ------------------------------------------------
@pytest.fixture(scope="module")
def small_disk_demo(start_module_server: Callable[..., Server]) -> Server:
    # No disk has 1000 TiB free: every body that reaches the disk must be refused.
    return start_module_server(app="", workers=1, config={"staging": "min_free_disk = 1000TiB"})


@pytest.mark.parametrize("kind", ["raw", "multipart"])
def test_chunked_body_past_min_free_disk_is_507_and_leaves_nothing(small_disk_demo: Server, kind: str) -> None:
    server = small_disk_demo
    staged_before, uploads_before = _tree(server.staging), _tree(server.uploads)
    data = b"z" * (4 * MiB)  # past memory_threshold (1 MiB): it must go to disk
    if kind == "raw":
        head = b"PUT /upload?filename=big.bin HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
        body = data
    else:
        head = (b"POST /upload HTTP/1.1\r\nHost: t\r\nAccept: application/json\r\nTransfer-Encoding: chunked\r\n"
                b"Content-Type: multipart/form-data; boundary=" + B + b"\r\n\r\n")
        body = _form(_file_part("upload", "big.bin", data))
    log_before = server.error_log.read_text().count("not enough disk space to keep staging")
    resp = _send(server, head, _chunked(body))
    assert resp.status == 507, resp.raw_head
    assert resp.header("connection") == "close"
    assert re.match(rf"not enough disk space to keep staging a body in {server.staging}: \d+ bytes free with "
                    r"\d+ bytes staged, and \[staging\] min_free_disk = 1099511627776000 bytes must stay free",
                    resp.body.decode()), resp.body
    wait_for(lambda: server.error_log.read_text().count("not enough disk space to keep staging") > log_before, 5,
             what="the 507 logged")
    log = server.error_log.read_text()
    assert log.count("not enough disk space to keep staging") == log_before + 1  # one line per refusal
    assert "Traceback" not in log
    assert _tree(server.staging) == staged_before and _tree(server.uploads) == uploads_before


def test_chunked_body_that_stays_in_ram_is_still_accepted(small_disk_demo: Server) -> None:
    head = b"PUT /upload?filename=small.txt HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    resp = request(small_disk_demo, head + _chunked(b"hello"))
    assert resp.status == 201 and json.loads(resp.body)["files"][0]["size"] == 5


# --- what is a form: one decision -------------------------------------------------------------
@pytest.fixture(scope="module")
def demo(start_module_server: Callable[..., Server]) -> Server:
    return start_module_server(app="", workers=1)


def test_form_datax_is_a_raw_body_for_server_and_demo_alike(demo: Server) -> None:
    body = _form(_file_part("upload", "a.txt", b"hello"))
    head = (b"POST /upload?filename=raw.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
            b"Content-Type: multipart/form-datax; boundary=" + B + b"\r\nContent-Length: %d\r\n\r\n" % len(body))
    resp = request(demo, head + body)
    assert resp.status == 201, resp.body
    (stored,) = json.loads(resp.body)["files"]
    assert stored["size"] == len(body)  # the raw body, not an empty file


def test_form_media_type_is_case_insensitive_with_ows_before_parameters(demo: Server) -> None:
    body = _form(_file_part("upload", "a.txt", b"hello"))
    head = (b"POST /upload HTTP/1.1\r\nHost: t\r\nConnection: close\r\nAccept: application/json\r\n"
            b"Content-Type: Multipart/Form-Data ; boundary=" + B + b"\r\nContent-Length: %d\r\n\r\n" % len(body))
    resp = request(demo, head + body)
    assert resp.status == 201, resp.body
    (stored,) = json.loads(resp.body)["files"]
    assert (stored["size"], stored["filename"]) == (5, "a.txt")


# --- charsets, repeated parameters, int routes on a native app ---------------------------------
@pytest.fixture(scope="module")
def native(start_module_server: Callable[..., Server]) -> Server:
    return start_module_server(app="tests.apps.int_routes:app", workers=1)


def _post_form(server: Server, body: bytes, content_type: bytes = b"multipart/form-data; boundary=" + B) -> Response:
    head = (b"POST /form HTTP/1.1\r\nHost: t\r\nConnection: close\r\nContent-Type: " + content_type +
            b"\r\nContent-Length: %d\r\n\r\n" % len(body))
    return request(server, head + body)


@pytest.mark.parametrize("charset", [b"utf\x00-8", b"latin-1\x00", b"x" * 3000, b"no-such-charset"],
                         ids=["nul-inside", "nul-after", "3000-chars", "unknown"])
def test_unusable_charset_is_ignored(native: Server, charset: bytes) -> None:
    body = _form(_field(b"_charset_", charset), _field(b"a", "\u00e9".encode()),
                 _field(b"b", "\u00e8".encode(), b"Content-Type: text/plain; charset=\"" + charset + b"\"\r\n"))
    resp = _post_form(native, body)
    assert resp.status == 200, resp.raw_head
    fields = json.loads(resp.body)
    assert (fields["a"], fields["b"]) == (["\u00e9"], ["\u00e8"])
    assert "Traceback" not in native.error_log.read_text()


@pytest.mark.parametrize(("body", "content_type", "message"), [
    (_form(b"--" + B + b"\r\nContent-Disposition: form-data; name=\"a\"\r\n"
           b"Content-Disposition: form-data; name=\"b\"\r\n\r\nx\r\n"), None,
     "part has 2 content-disposition headers"),
    (_form(b"--" + B + b"\r\nContent-Disposition: form-data; name=\"a\"; name=\"b\"\r\n\r\nx\r\n"), None,
     "repeated parameter 'name' in part Content-Disposition"),
    (_form(_file_part("f", "a.txt\"; filename=\"b.exe", b"x")), None,
     "repeated parameter 'filename' in part Content-Disposition"),
    (_form(_field(b"a", b"x")), b"multipart/form-data; boundary=" + B + b"; boundary=other",
     "repeated parameter 'boundary' in multipart content type"),
], ids=["two-dispositions", "two-names", "two-filenames", "two-boundaries"])
def test_repeated_headers_and_parameters_are_400(native: Server, body: bytes, content_type: bytes | None,
                                                  message: str) -> None:
    resp = _post_form(native, body, content_type or b"multipart/form-data; boundary=" + B)
    assert resp.status == 400, resp.raw_head
    assert message in resp.body.decode()
    wait_for(lambda: f"-> 400: {message}" in native.error_log.read_text(), 5, what="the 400 logged")


def test_int_route_with_5000_digits_is_404(native: Server) -> None:
    huge = b"9" * 5000
    resp = request(native, b"GET /items/" + huge + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert resp.status == 404
    ok = request(native, b"GET /items/42 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert ok.status == 200 and json.loads(ok.body) == {"n": 42}
    assert "Traceback" not in native.error_log.read_text()
