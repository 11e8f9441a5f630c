"""Static files through the real server: types, nosniff, validators/304, ranges, traversal."""

from __future__ import annotations

import email.utils
import os
from pathlib import Path
from typing import Any

import pytest
import requests

from prefork.apps.static import content_disposition, guess_type, safe_join
from tests.server import request

DATA = bytes((i * 7 + 3) % 256 for i in range(10_000))


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("site")
    (root / "index.html").write_text("<h1>hi</h1>")
    (root / "style.css").write_text("body{}")
    (root / "app.js").write_text("let x = 1;")
    (root / "data.bin").write_bytes(DATA)
    (root / "photo.PNG").write_bytes(b"\x89PNG\r\n\x1a\n" + b"0" * 10)
    (root / "noext").write_bytes(b"?")
    (root / "empty.txt").write_bytes(b"")
    (root / "sub").mkdir()
    (root / "sub" / "deep.txt").write_text("deep")
    (root / ".secret").write_text("hidden")
    outside = tmp_path_factory.mktemp("outside") / "outside.txt"
    outside.write_text("outside")
    os.symlink(outside, root / "link.txt")
    os.utime(root / "data.bin", (1_600_000_000, 1_600_000_000))
    return root


@pytest.fixture(scope="module")
def server(start_module_server: Any, site: Path) -> Any:
    return start_module_server(app="tests.apps.native:app", env={"PREFORK_TEST_STATIC": str(site)})


def get(server: Any, path: str, **headers: str) -> requests.Response:
    return requests.get(f"{server.url}{path}", headers=headers, timeout=10)


@pytest.mark.parametrize(("path", "content_type"), [
    ("/static/index.html", "text/html; charset=utf-8"),
    ("/static/style.css", "text/css; charset=utf-8"),
    ("/static/app.js", "text/javascript; charset=utf-8"),
    ("/static/photo.PNG", "image/png"),
    ("/static/data.bin", "application/octet-stream"),
    ("/static/noext", "application/octet-stream"),
    ("/static/sub/deep.txt", "text/plain; charset=utf-8"),
])
def test_content_types_and_nosniff(server: Any, path: str, content_type: str) -> None:
    resp = get(server, path)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"] == content_type
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Accept-Ranges"] == "bytes"


def test_whole_file_bytes_and_length(server: Any) -> None:
    resp = get(server, "/static/data.bin")
    assert resp.content == DATA
    assert resp.headers["Content-Length"] == str(len(DATA))
    assert get(server, "/static/empty.txt").content == b""


def test_head_sends_length_without_body(server: Any) -> None:
    resp = request(server, b"HEAD /static/data.bin HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                   head_request=True)
    assert resp.status == 200
    assert resp.header("content-length") == str(len(DATA))
    assert resp.header("etag")


def test_etag_if_none_match_gives_304(server: Any) -> None:
    etag = get(server, "/static/data.bin").headers["ETag"]
    resp = get(server, "/static/data.bin", **{"If-None-Match": etag})
    assert resp.status_code == 304
    assert resp.content == b""
    assert resp.headers["ETag"] == etag
    assert "Content-Length" not in resp.headers
    assert get(server, "/static/data.bin", **{"If-None-Match": f'"x", W/{etag}'}).status_code == 304
    assert get(server, "/static/data.bin", **{"If-None-Match": "*"}).status_code == 304
    assert get(server, "/static/data.bin", **{"If-None-Match": '"other"'}).status_code == 200


def test_last_modified_if_modified_since(server: Any) -> None:
    resp = get(server, "/static/data.bin")
    assert resp.headers["Last-Modified"] == email.utils.formatdate(1_600_000_000, usegmt=True)
    assert get(server, "/static/data.bin", **{"If-Modified-Since": resp.headers["Last-Modified"]}).status_code == 304
    later = email.utils.formatdate(1_700_000_000, usegmt=True)
    assert get(server, "/static/data.bin", **{"If-Modified-Since": later}).status_code == 304
    earlier = email.utils.formatdate(1_500_000_000, usegmt=True)
    assert get(server, "/static/data.bin", **{"If-Modified-Since": earlier}).status_code == 200
    assert get(server, "/static/data.bin", **{"If-Modified-Since": "garbage"}).status_code == 200


def test_if_none_match_wins_over_if_modified_since(server: Any) -> None:
    last_modified = get(server, "/static/data.bin").headers["Last-Modified"]
    resp = get(server, "/static/data.bin", **{"If-None-Match": '"stale"', "If-Modified-Since": last_modified})
    assert resp.status_code == 200


@pytest.mark.parametrize(("spec", "first", "last"), [
    ("bytes=0-0", 0, 0),
    ("bytes=100-199", 100, 199),
    ("bytes=9990-", 9990, 9999),
    ("bytes=-10", 9990, 9999),
    ("bytes=5000-999999", 5000, 9999),
    ("bytes=-20000", 0, 9999),
])
def test_single_range_is_206(server: Any, spec: str, first: int, last: int) -> None:
    resp = get(server, "/static/data.bin", Range=spec)
    assert resp.status_code == 206
    assert resp.headers["Content-Range"] == f"bytes {first}-{last}/{len(DATA)}"
    assert resp.headers["Content-Length"] == str(last - first + 1)
    assert resp.content == DATA[first:last + 1]


@pytest.mark.parametrize("spec", ["bytes=10000-", "bytes=20000-30000", "bytes=-0"])
def test_unsatisfiable_range_is_416(server: Any, spec: str) -> None:
    resp = get(server, "/static/data.bin", Range=spec)
    assert resp.status_code == 416
    assert resp.headers["Content-Range"] == f"bytes */{len(DATA)}"


def test_range_on_empty_file_is_416(server: Any) -> None:
    resp = get(server, "/static/empty.txt", Range="bytes=0-")
    assert resp.status_code == 416
    assert resp.headers["Content-Range"] == "bytes */0"


@pytest.mark.parametrize("spec", ["bytes=0-1,5-6", "items=0-1", "bytes=5-1", "bytes=x-y", "bytes=-"])
def test_ignored_ranges_give_whole_file(server: Any, spec: str) -> None:
    resp = get(server, "/static/data.bin", Range=spec)
    assert resp.status_code == 200
    assert resp.content == DATA


HUGE = "9" * 5000  # past Python's 4,300-digit limit for int()


@pytest.mark.parametrize(("spec", "status", "first", "last"), [
    (f"bytes={HUGE}-", 416, None, None),  # starts past the end: unsatisfiable
    (f"bytes={HUGE}-{HUGE}", 416, None, None),
    (f"bytes=10-{HUGE}", 206, 10, 9999),  # a last-pos past the end means "to the end"
    (f"bytes=-{HUGE}", 206, 0, 9999),  # a suffix longer than the file is the whole file
    ("bytes=" + "0" * 5000 + "5-" + "0" * 5000 + "9", 206, 5, 9),  # leading zeros are still small numbers
    (f"bytes={HUGE}-1", 200, None, None),  # last-pos < first-pos: invalid, the header is ignored
    (f"bytes=2{'0' * 30}-1{'0' * 30}", 200, None, None),
], ids=["huge-first", "huge-both", "huge-last", "huge-suffix", "leading-zeros", "huge-first-small-last",
        "31-digit-last-before-first"])
def test_range_with_more_digits_than_int_accepts(server: Any, spec: str, status: int, first: int | None,
                                                 last: int | None) -> None:
    resp = get(server, "/static/data.bin", Range=spec)
    assert resp.status_code == status
    if status == 416:
        assert resp.headers["Content-Range"] == f"bytes */{len(DATA)}"
    elif status == 206:
        assert first is not None and last is not None
        assert resp.headers["Content-Range"] == f"bytes {first}-{last}/{len(DATA)}"
        assert resp.content == DATA[first:last + 1]
    else:
        assert resp.content == DATA
    assert "Traceback" not in server.error_log.read_text()


def test_if_range(server: Any) -> None:
    etag = get(server, "/static/data.bin").headers["ETag"]
    assert get(server, "/static/data.bin", Range="bytes=0-9", **{"If-Range": etag}).status_code == 206
    resp = get(server, "/static/data.bin", Range="bytes=0-9", **{"If-Range": '"old"'})
    assert resp.status_code == 200 and resp.content == DATA


def test_ranges_on_one_keepalive_connection(server: Any) -> None:
    with requests.Session() as session:
        for first in range(0, 10_000, 2500):
            resp = session.get(f"{server.url}/static/data.bin", headers={"Range": f"bytes={first}-{first + 99}"},
                               timeout=10)
            assert resp.status_code == 206 and resp.content == DATA[first:first + 100]


@pytest.mark.parametrize("target", [
    b"/static/../tests/apps/native.py",
    b"/static/%2e%2e/%2e%2e/etc/passwd",
    b"/static/sub/../../server.ini",
    b"/static/..%2f..%2fetc%2fpasswd",
    b"/static/%2fetc%2fpasswd",
    b"/static//etc/passwd",
    b"/static/sub%5c..%5c..%5cserver.ini",
    b"/static/data.bin%00.txt",
    b"/static/.secret",
    b"/static/link.txt",
    b"/static/sub/",
    b"/static/",
])
def test_traversal_and_hidden_files_refused(server: Any, target: bytes) -> None:
    resp = request(server, b"GET " + target + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
    assert resp.status in (400, 404), resp
    assert b"root:" not in resp.body and b"outside" not in resp.body and b"hidden" not in resp.body


def test_safe_join_unit(site: Path) -> None:
    root = str(site)
    assert safe_join(root, "sub/deep.txt") == os.path.join(os.path.realpath(root), "sub", "deep.txt")
    for bad in ["../x", "/etc/passwd", "sub/../../x", ".secret", "a\x00b", "sub\\..\\x", "", "link.txt"]:
        assert safe_join(root, bad) is None, bad


def test_guess_type_and_content_disposition() -> None:
    assert guess_type("a.tar.gz") == "application/octet-stream"
    assert guess_type("x.unknown-ext") == "application/octet-stream"
    assert content_disposition("report.pdf") == 'attachment; filename="report.pdf"'
    assert content_disposition('naïve "q".txt') == (
        "attachment; filename=\"na_ve _q_.txt\"; filename*=UTF-8''na%C3%AFve%20%22q%22.txt")
    assert content_disposition("a\r\nb", inline=True).startswith('inline; filename="a__b"')
