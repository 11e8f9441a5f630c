"""UploadStore: hostile filenames, atomic commit, nothing left by cut-off uploads, one write per byte."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from prefork.protocol.errors import InsufficientStorage
from prefork.staging.forms import FormParser, UploadedFile
from prefork.protocol.limits import FormLimits
from prefork.apps.uploads import MAX_DISPLAY_NAME, UploadStore, choose_extension, display_name
from tests.server import RawClient, Server, send_until_answered, staging_fds, wait_for

MiB = 1 << 20
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
NAME = re.compile(r"[0-9]{8}T[0-9]{6}Z-[0-9a-f]{16}\.[a-z0-9]{1,8}")

HOSTILE = [
    "../../etc/passwd",
    "/etc/passwd",
    "/absolute/path/x.png",
    "C:\\x\\y.png",
    "..\\..\\windows\\win.ini",
    "a\x00b.png",
    "nul\x00/../../x",
    "\x1b[31mred\x07\r\n.txt",
    "x" * 1000 + ".png",
    "y" * 1000,
    "",
    ".",
    "..",
    "...",
    " ",
    ".bashrc",
    "ｆｕｌｌ／ｗｉｄｔｈ.png",
    "évènement 📷.jpg",
    "evil\u202egnp.exe",
    "line\u2028sep.txt",
    "index.html",
    "image.svg",
    "CON",
    "%2e%2e%2fetc%2fpasswd",
    "a\ud800b.txt",  # a lone surrogate, as surrogateescape decoding can produce
]


def multipart(field: str, filename: str | None, data: bytes, boundary: str = "b0undary") -> bytes:
    disposition = f'form-data; name="{field}"'
    if filename is not None:
        disposition += f'; filename="{filename}"'
    return (f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
            f"Content-Type: application/octet-stream\r\n\r\n").encode("utf-8", "surrogatepass") + data + \
        f"\r\n--{boundary}--\r\n".encode()


def make_upload(staging: Path, filename: str, data: bytes, threshold: int = 1024) -> UploadedFile:
    """A real UploadedFile, parsed and staged the way the connection does it."""
    parser = FormParser(b"b0undary", limits=FormLimits(), spool_threshold=threshold, spool_dir=str(staging))
    parser.feed(multipart("upload", "placeholder", data))
    parser.feed(b"")
    form = parser.finish()
    upload = form.files["upload"]
    upload.filename = filename  # exactly what the client sent, however hostile
    return upload


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


@pytest.fixture
def dirs(tmp_path: Path) -> tuple[Path, Path]:
    staging, uploads = tmp_path / "staging", tmp_path / "uploads"
    staging.mkdir()
    uploads.mkdir()
    return staging, uploads


# --- hostile filenames ---------------------------------------------------------------------------
@pytest.mark.parametrize("filename", HOSTILE, ids=lambda n: repr(n[:24]))
def test_hostile_filename_is_stored_safely(tmp_path: Path, dirs: tuple[Path, Path], filename: str) -> None:
    staging, uploads = dirs
    victim = uploads / "existing.txt"
    victim.write_bytes(b"keep me")
    before = tree(tmp_path)
    data = PNG if filename.lower().endswith((".png", ".jpg")) else b"payload"
    store = UploadStore(uploads)
    stored = store.save(make_upload(staging, filename, data))

    assert NAME.fullmatch(stored.name)
    assert (uploads / stored.name).read_bytes() == data
    assert (uploads / stored.name).parent == uploads
    assert victim.read_bytes() == b"keep me"
    new = tree(tmp_path) - before
    assert new == {f"uploads/{stored.name}", "uploads/.meta", f"uploads/.meta/{stored.name}.json"}
    shown = stored.filename
    assert shown and len(shown) <= MAX_DISPLAY_NAME
    assert not any(c in shown for c in "/\\\x00\r\n\u202e\u2028")
    assert all(ord(c) >= 32 and not 0xD800 <= ord(c) <= 0xDFFF for c in shown)
    assert not shown.startswith(".")
    shown.encode("utf-8")  # displayable: no lone surrogates
    assert [s.name for s in store.list()] == [stored.name]
    assert store.get(stored.name) == stored


@pytest.mark.parametrize(("raw", "shown"), [
    ("../../etc/passwd", "passwd"),
    ("C:\\x\\y.png", "y.png"),
    ("a\x00b.png", "ab.png"),
    ("", "unnamed"),
    ("..", "unnamed"),
    (".bashrc", "bashrc"),
    ("evil\u202egnp.exe", "evilgnp.exe"),
    ("tab\tand  spaces .txt", "tab and spaces .txt"),
    ("évènement 📷.jpg", "évènement 📷.jpg"),
])
def test_display_name(raw: str, shown: str) -> None:
    assert display_name(raw) == shown


def test_display_name_keeps_extension_when_cut() -> None:
    shown = display_name("x" * 1000 + ".png")
    assert len(shown) == MAX_DISPLAY_NAME and shown.endswith(".png")


@pytest.mark.parametrize(("display", "head", "ext"), [
    ("a.png", PNG, "png"),
    ("a.PNG", PNG, "png"),
    ("a.png", b"not an image", "bin"),  # claims an image, is not: never shown inline
    ("a.jpg", PNG, "png"),  # the bytes decide the image type
    ("noext", PNG, "png"),
    ("a.txt", b"text", "txt"),
    ("a.html", b"<script>", "bin"),
    ("a.svg", b"<svg onload=alert(1)>", "bin"),
    ("a.exe", b"MZ", "bin"),
    ("a.tar.gz", b"\x1f\x8b", "gz"),
])
def test_extension_allow_list(display: str, head: bytes, ext: str) -> None:
    assert choose_extension(display, head) == ext


def test_same_filename_twice_never_overwrites(dirs: tuple[Path, Path]) -> None:
    staging, uploads = dirs
    store = UploadStore(uploads)
    first = store.save(make_upload(staging, "same.txt", b"one"))
    second = store.save(make_upload(staging, "same.txt", b"two"))
    assert first.name != second.name
    assert (uploads / first.name).read_bytes() == b"one"
    assert (uploads / second.name).read_bytes() == b"two"
    assert [s.name for s in store.list()] == [second.name, first.name]  # newest first


def test_gallery_escapes_display_names(dirs: tuple[Path, Path]) -> None:
    from prefork.apps.demo import _gallery_item

    staging, uploads = dirs
    store = UploadStore(uploads)
    stored = store.save(make_upload(staging, '"><img src=x onerror=alert(1)>.png', PNG))
    item = _gallery_item(stored)
    assert "<img src=x" not in item and "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;.png" in item


def test_get_and_path_refuse_anything_but_committed_names(dirs: tuple[Path, Path]) -> None:
    staging, uploads = dirs
    store = UploadStore(uploads)
    stored = store.save(make_upload(staging, "a.txt", b"a"))
    assert store.path(stored.name) == str(uploads / stored.name)
    for bad in ["../" + stored.name, stored.name + "/", "/etc/passwd", ".meta", stored.name + ".json",
                stored.name.upper(), "", "x" * 300, stored.name + "\x00"]:
        assert store.get(bad) is None and store.path(bad) is None, bad


# --- atomic commit ---------------------------------------------------------------------------------
def test_failed_commit_leaves_nothing(dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    staging, uploads = dirs
    store = UploadStore(uploads)
    kept = store.save(make_upload(staging, "kept.txt", b"kept"))
    before = tree(uploads)

    def disk_full(self: UploadStore, stored: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(UploadStore, "_write_sidecar", disk_full)
    with pytest.raises(OSError, match="No space"):
        store.save(make_upload(staging, "lost.txt", b"x" * 5000))
    assert tree(uploads) == before
    assert [s.name for s in store.list()] == [kept.name]


def test_failed_move_leaves_nothing(dirs: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    staging, uploads = dirs
    store = UploadStore(uploads)
    upload = make_upload(staging, "a.txt", b"x" * 5000)

    def full(dest: str) -> None:
        raise InsufficientStorage(f"disk full while saving to {dest!r}")

    monkeypatch.setattr(upload, "save", full)
    with pytest.raises(InsufficientStorage):
        store.save(upload)
    assert tree(uploads) <= {".meta"}
    assert store.list() == []


def test_uncommitted_entries_are_invisible_and_pruned(dirs: tuple[Path, Path]) -> None:
    staging, uploads = dirs
    store = UploadStore(uploads)
    good = store.save(make_upload(staging, "good.txt", b"good"))
    orphan = "20240101T000000Z-0123456789abcdef.txt"  # data, no sidecar: a crash between the steps
    (uploads / orphan).write_bytes(b"orphan")
    ghost = "20240101T000000Z-fedcba9876543210.txt"  # sidecar, no data
    (uploads / ".meta" / f"{ghost}.json").write_text(json.dumps({**good.to_dict(), "name": ghost}))
    (uploads / ".meta" / "junk.json").write_text("{not json")
    assert [s.name for s in store.list()] == [good.name]
    assert store.get(orphan) is None and store.get(ghost) is None
    assert store.remove_orphans(min_age=3600) == 0  # young: maybe a commit in progress
    assert store.remove_orphans(min_age=0) == 1
    assert not (uploads / orphan).exists() and (uploads / good.name).exists()


def test_list_only_ever_sees_complete_entries(dirs: tuple[Path, Path]) -> None:
    staging, uploads = dirs
    store = UploadStore(uploads)
    payloads = [bytes([i]) * (50_000 + i) for i in range(30)]
    uploads_ = [make_upload(staging, f"f{i}.bin", p) for i, p in enumerate(payloads)]
    problems: list[str] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            for entry in store.list():
                data = (uploads / entry.name).read_bytes()
                if len(data) != entry.size or hashlib.sha256(data).hexdigest() != entry.sha256:
                    problems.append(entry.name)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        for upload in uploads_:
            store.save(upload)
    finally:
        done.set()
        watcher.join(10)
    assert problems == []
    assert len(store.list()) == 30


def test_raw_stream_save(dirs: tuple[Path, Path]) -> None:
    import io

    _, uploads = dirs
    store = UploadStore(uploads)
    stored = store.save_stream(io.BytesIO(PNG), "../x.png", "image/png; charset=evil\r\n")
    assert stored.image and stored.client_type == "image/png"
    assert (uploads / stored.name).read_bytes() == PNG
    assert stored.sha256 == hashlib.sha256(PNG).hexdigest()
    assert not [n for n in os.listdir(uploads) if n.startswith(".incoming")]


# --- end to end: hostile names through the demo, and cut-off uploads -----------------------------
@pytest.fixture(scope="module")
def demo_server(start_module_server: Any) -> Server:
    return start_module_server(app="", workers=1)  # type: ignore[no-any-return]


@pytest.mark.parametrize("filename", ["../../etc/passwd", "C:\\x\\y.png", "x" * 1000 + ".txt", "",
                                      "évènement 📷.png", "/abs/evil.png"])
def test_hostile_names_through_the_demo(demo_server: Server, filename: str) -> None:
    server = demo_server
    before = tree(server.uploads)
    data = PNG if filename.endswith(".png") else b"data"
    resp = requests.post(f"{server.url}/upload", files={"upload": (filename, data)},
                         headers={"Accept": "application/json"}, timeout=10)
    assert resp.status_code == 201, resp.text
    stored = resp.json()["files"][0]
    assert NAME.fullmatch(stored["name"])
    assert tree(server.uploads) - before - {".meta"} == {stored["name"], f".meta/{stored['name']}.json"}
    assert requests.get(f"{server.url}/files/{stored['name']}", timeout=10).content == data
    assert requests.get(f"{server.url}/", timeout=10).status_code == 200  # the gallery still renders


def _send_partial(server: Server, declared_file: int, sent_file: int) -> RawClient:
    head_part = (b"--b0undary\r\nContent-Disposition: form-data; name=\"upload\"; filename=\"big.bin\"\r\n"
                 b"Content-Type: application/octet-stream\r\n\r\n")
    tail = b"\r\n--b0undary--\r\n"
    client = RawClient(server.connect())
    client.send(b"POST /upload HTTP/1.1\r\nHost: t\r\nAccept: application/json\r\n"
                b"Content-Type: multipart/form-data; boundary=b0undary\r\n"
                b"Content-Length: %d\r\n\r\n" % (len(head_part) + declared_file + len(tail)))
    client.send(head_part)
    block = b"z" * MiB
    for _ in range(sent_file // MiB):
        client.send(block)
    return client


def test_client_disconnect_mid_upload_leaves_nothing(start_server: Any) -> None:
    server = start_server(app="", workers=1)
    worker = server.workers()[0].pid
    staged_before, uploads_before = tree(server.staging), tree(server.uploads)
    client = _send_partial(server, declared_file=16 * MiB, sent_file=8 * MiB)
    wait_for(lambda: staging_fds({worker}, server.staging), 10, what="the upload is staged on disk")
    client.close()
    wait_for(lambda: not staging_fds({worker}, server.staging), 10, what="the staging file is released")
    assert tree(server.staging) == staged_before
    assert tree(server.uploads) == uploads_before
    assert requests.get(f"{server.url}/api/files", timeout=10).json() == {"files": []}


def test_413_mid_upload_leaves_nothing(start_server: Any) -> None:
    server = start_server(app="", workers=1, config={"uploads": "max_file_size = 2MiB"})
    worker = server.workers()[0].pid
    staged_before, uploads_before = tree(server.staging), tree(server.uploads)
    client = _send_partial(server, declared_file=6 * MiB, sent_file=0)
    # The declared length fits; the file grows past max_file_size while it streams. The
    # client stops sending once answered, so the 413 is read, never lost to a reset.
    sent = send_until_answered(client, (b"z" * (64 * 1024) for _ in range(6 * 16)))
    assert sent > 2 * MiB, f"answered after {sent} bytes of the file, before it reached the limit"
    resp = client.read_response()
    assert resp.status == 413, resp.raw_head
    assert resp.header("connection") == "close"
    assert resp.body.endswith(b"exceeds limit of %d bytes\n" % (2 * MiB)), resp.body
    assert client.at_eof()
    client.close()
    wait_for(lambda: not staging_fds({worker}, server.staging), 10, what="the staging file is released")
    assert tree(server.staging) == staged_before
    assert tree(server.uploads) == uploads_before


def test_507_when_disk_too_small_leaves_nothing(start_server: Any) -> None:
    server = start_server(app="", workers=1, config={"staging": "min_free_disk = 1000TiB"})
    staged_before, uploads_before = tree(server.staging), tree(server.uploads)
    client = _send_partial(server, declared_file=16 * MiB, sent_file=0)
    resp = client.read_response()
    client.close()
    assert resp.status == 507
    assert tree(server.staging) == staged_before
    assert tree(server.uploads) == uploads_before


# --- 512 MiB: written to disk once -----------------------------------------------------------------
BIG = 512 * MiB


class _MultipartBody:
    """A multipart body of ``size`` bytes of a repeating 1 MiB block, streamed (requests sends its length)."""

    def __init__(self, size: int, boundary: str) -> None:
        self.head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"upload\"; filename=\"big.bin\"\r\n"
                     f"Content-Type: application/octet-stream\r\n\r\n").encode()
        self.tail = f"\r\n--{boundary}--\r\n".encode()
        self.size = size
        self.block = hashlib.shake_256(b"prefork 512 MiB").digest(MiB)

    def __len__(self) -> int:
        return len(self.head) + self.size + len(self.tail)

    def __iter__(self) -> Iterator[bytes]:
        yield self.head
        for _ in range(self.size // MiB):
            yield self.block
        yield self.tail

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for _ in range(self.size // MiB):
            digest.update(self.block)
        return digest.hexdigest()


def test_512_mib_upload_is_written_to_disk_once(start_server: Any) -> None:
    # Staging and uploads are both under tmp_path (one file system), so save() is a link.
    server = start_server(app="", workers=1)
    assert os.stat(server.staging).st_dev == os.stat(server.uploads).st_dev
    worker = psutil.Process(server.workers()[0].pid)
    body = _MultipartBody(BIG, "bigb0undary")
    before = worker.io_counters().write_bytes
    started = time.monotonic()
    resp = requests.post(f"{server.url}/upload", data=body, timeout=120,
                         headers={"Content-Type": "multipart/form-data; boundary=bigb0undary",
                                  "Accept": "application/json"})
    elapsed = time.monotonic() - started
    written = worker.io_counters().write_bytes - before
    assert resp.status_code == 201, resp.text
    stored = resp.json()["files"][0]
    print(f"\n512 MiB upload: {elapsed:.2f} s, worker wrote {written / MiB:.1f} MiB "
          f"({written / BIG:.3f}x the file size)")
    assert stored["size"] == BIG
    assert stored["sha256"] == body.sha256()
    saved = server.uploads / stored["name"]
    assert saved.stat().st_size == BIG and saved.stat().st_nlink == 1
    assert written < 1.25 * BIG, f"worker wrote {written} bytes for a {BIG}-byte upload"
    assert written > 0.9 * BIG, "the upload must have been staged on disk (is the measurement working?)"
    assert tree(server.staging) == set()
