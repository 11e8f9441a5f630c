"""Resumable uploads across two prefork instances behind the shipped conf/haproxy.cfg and
conf/nginx.conf, for real: Debian's haproxy and nginx on loopback in front of two prefork
masters (``[resumable] instance = app1`` and ``app2``, two workers and a directory each),
every process stopped by PID.

The creating POST is balanced; the upload's URL then names the instance that holds its
files (``/resumable/app1-<token>``) and the proxy sends its follow-ups there. When that
instance is gone, another one answers them 404 (the protocols' "start over"), never an
offset it does not have, and a new upload completes there.
"""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tusclient import client

from tests.server import REPO, RawClient, Response, Server, free_port, process_gone, wait_for
from tests.test_behind_proxies import Proxy, _need, run_nginx
from tests.test_resumable_server import (MiB, PREFIX, TUS, WAIT, _content, _gallery_entry, _head_bytes, _offset,
                                         _partial_dir, _uploads_in_flight)

Start = Callable[..., Server]
GiB = 1024 * MiB
# The example addresses of conf/haproxy.cfg and conf/nginx.conf, by server name.
ADDRESSES = {"app1": "10.0.0.11:8000", "app2": "10.0.0.12:8000"}
APPEND = {**TUS, "Content-Type": "application/offset+octet-stream"}
# A request to an instance that is gone waits for haproxy's retries (1 s apart) before its
# last one goes to another server (option redispatch): well within this.
PROXY_TIMEOUT = 30.0


# --- the instances and the proxies in front of them ----------------------------------------------
def start_instances(start: Start) -> dict[str, Server]:
    """Two demo servers, app1 and app2, each with its own directories."""
    return {name: start(app="", workers=2, config={"resumable": f"instance = {name}"}) for name in ADDRESSES}


def two_server_haproxy(ports: dict[str, int], port: int) -> str:
    """conf/haproxy.cfg with app1 and app2 on loopback, its routing lines as shipped."""
    text = (REPO / "conf" / "haproxy.cfg").read_text()
    for name, address in ADDRESSES.items():
        text, servers = re.subn(rf"(?m)^(\s*server {name}) {re.escape(address)} check$",
                                rf"\1 127.0.0.1:{ports[name]} check", text)
        assert servers == 1, "conf/haproxy.cfg changed: update this test's rewrite"
    assert len(re.findall(r"(?m)^\s*use-server app\d if \{ path_beg /resumable/app\d- \}$", text)) == 2
    text, binds = re.subn(r"bind :80", f"bind 127.0.0.1:{port}", text)
    assert binds == 1
    return re.sub(r"(?m)^(\s*maxconn) \d+", r"\1 1000", text)  # as tests/test_behind_proxies.py says


def two_server_nginx(ports: dict[str, int], port: int) -> str:
    """conf/nginx.conf with app1 and app2 on loopback (in every upstream, backups too)."""
    text = (REPO / "conf" / "nginx.conf").read_text()
    for name, address in ADDRESSES.items():
        assert text.count(f"server {address}") == 3, "conf/nginx.conf changed: update this test's rewrite"
        text = text.replace(f"server {address}", f"server 127.0.0.1:{ports[name]}")
    assert "proxy_pass http://$prefork_upstream;" in text
    text, listens = re.subn(r"listen 80;", f"listen 127.0.0.1:{port};", text)
    assert listens == 1
    return text


def start_haproxy(tmp: Path, instances: dict[str, Server]) -> Proxy:
    port = free_port()
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(two_server_haproxy({name: server.port for name, server in instances.items()}, port))
    return Proxy([_need("haproxy"), "-db", "-f", str(cfg)], port, tmp / "haproxy.out")


def start_nginx(tmp: Path, instances: dict[str, Server]) -> Proxy:
    port = free_port()
    return run_nginx(tmp, two_server_nginx({name: server.port for name, server in instances.items()}, port), port)


@pytest.fixture(scope="module")
def instances(start_module_server: Start) -> dict[str, Server]:
    return start_instances(start_module_server)


@pytest.fixture(scope="module")
def haproxy(instances: dict[str, Server], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    yield from _stopped_after(start_haproxy(tmp_path_factory.mktemp("haproxy"), instances))


@pytest.fixture(scope="module")
def nginx(instances: dict[str, Server], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    yield from _stopped_after(start_nginx(tmp_path_factory.mktemp("nginx"), instances))


def _stopped_after(proxy: Proxy) -> Iterator[Proxy]:
    try:
        yield proxy
    finally:
        proxy.stop()


# --- requests through a proxy ----------------------------------------------------------------------
def _connect(proxy: Proxy) -> socket.socket:
    return socket.create_connection(("127.0.0.1", proxy.port), timeout=PROXY_TIMEOUT)


def _via(proxy: Proxy, method: str, path: str, fields: dict[str, str], body: bytes = b"") -> Response:
    """One request through ``proxy`` on a new connection; a Content-Length is added for any body."""
    if body or method in ("POST", "PATCH"):
        fields = {**fields, "Content-Length": str(len(body))}
    with RawClient(_connect(proxy)) as raw:
        raw.send(_head_bytes(method, path, fields) + body)
        return raw.read_response(head_request=method == "HEAD")


def _create(proxy: Proxy, length: int) -> str:
    """A tus upload of ``length`` bytes created through ``proxy``; its path."""
    resp = _via(proxy, "POST", PREFIX, {**TUS, "Upload-Length": str(length)})
    assert resp.status == 201, (resp.raw_head, resp.body)
    location = resp.header("Location")
    assert location is not None and re.fullmatch(r"/resumable/app[12]-[A-Za-z0-9_-]{24}", location), resp.raw_head
    return location


def _named(location: str) -> str:
    """The instance an upload's path names."""
    return location[len(PREFIX):].partition("-")[0]


def _data_file(server: Server, location: str) -> Path:
    return _partial_dir(server) / f"{location.rsplit('/', 1)[1]}.data"


def _has_files(server: Server, location: str) -> bool:
    upload_id = location.rsplit("/", 1)[1]
    return _partial_dir(server).exists() and any(n.startswith(upload_id) for n in os.listdir(_partial_dir(server)))


def _head(proxy: Proxy, location: str) -> Response:
    return _via(proxy, "HEAD", location, TUS)


def _patch(proxy: Proxy, location: str, offset: int, data: bytes) -> Response:
    return _via(proxy, "PATCH", location, {**APPEND, "Upload-Offset": str(offset)}, data)


def check_routing(proxy: Proxy, instances: dict[str, Server], uploads: int = 6) -> None:
    """Create ``uploads`` uploads through ``proxy``; each lands on the instance its URL names,
    both instances get some, and every follow-up reaches the instance that holds the upload."""
    landed: dict[str, list[str]] = {name: [] for name in instances}
    for _ in range(uploads):
        location = _create(proxy, 2 * 64 * 1024)
        name = _named(location)
        assert _data_file(instances[name], location).exists()
        assert not any(_has_files(s, location) for other, s in instances.items() if other != name)
        landed[name].append(location)
    assert all(landed.values()), f"the proxy sent every creation to one instance: {landed}"
    for name, locations in landed.items():
        server = instances[name]
        for location in locations:
            data = _content(2 * 64 * 1024, location)
            head = _head(proxy, location)
            assert head.status == 200 and _offset(head) == 0, head.raw_head
            patch = _patch(proxy, location, 0, data[:64 * 1024])
            assert patch.status == 204 and _offset(patch) == 64 * 1024, patch.raw_head
            assert _data_file(server, location).read_bytes() == data[:64 * 1024]
            head = _head(proxy, location)
            assert head.status == 200 and _offset(head) == 64 * 1024, head.raw_head
            patch = _patch(proxy, location, 64 * 1024, data[64 * 1024:])
            assert patch.status == 204 and _offset(patch) == len(data), patch.raw_head
            assert _gallery_entry(server, hashlib.sha256(data).hexdigest()) is not None  # completed here
    for name, server in instances.items():
        others = [loc for other, locations in landed.items() if other != name for loc in locations]
        assert not any(_has_files(server, location) for location in others)


def _start_over(resp: Response, attempt: str) -> None:
    """prefork's 404 for an upload it does not have (not the proxy's own error page)."""
    assert resp.status == 404, (attempt, resp.raw_head)
    assert resp.header("Tus-Resumable") == "1.0.0" and resp.header("Upload-Offset") is None, (attempt, resp.raw_head)


def check_instance_gone(proxy: Proxy, instances: dict[str, Server],
                        marked_down: Callable[[], bool] | None = None) -> None:
    """app2 holds an upload and stops: its follow-ups get 404 from app1, both at once and
    (if ``marked_down`` tells when) once the proxy knows app2 is down; and a new upload
    completes on app1."""
    app1, app2 = instances["app1"], instances["app2"]
    data = _content(4 * MiB, "gone")
    location = next((loc for loc in (_create(proxy, len(data)) for _ in range(8)) if _named(loc) == "app2"), None)
    assert location is not None, "the proxy never sent a creation to app2"
    patch = _patch(proxy, location, 0, data[:MiB])
    assert patch.status == 204 and _offset(patch) == MiB, patch.raw_head
    assert _data_file(app2, location).stat().st_size == MiB
    family = [app2.pid, *(worker.pid for worker in app2.workers())]
    app2.stop()
    assert all(process_gone(pid) for pid in family)
    _start_over(_head(proxy, location), "right away")
    _start_over(_patch(proxy, location, MiB, data[MiB:MiB + 64 * 1024]), "right away")
    if marked_down is not None:
        wait_for(marked_down, WAIT, what="the proxy marks app2 down")
        _start_over(_head(proxy, location), "once marked down")
        _start_over(_patch(proxy, location, MiB, data[MiB:MiB + 64 * 1024]), "once marked down")
    assert not _has_files(app1, location)
    again = _create(proxy, len(data))
    assert _named(again) == "app1"
    patch = _patch(proxy, again, 0, data)
    assert patch.status == 204 and _offset(patch) == len(data), patch.raw_head
    entry = _gallery_entry(app1, hashlib.sha256(data).hexdigest())
    assert entry is not None and entry["size"] == len(data)


# --- 1. haproxy: each upload's requests reach the instance that holds it ------------------------------
def test_haproxy_routes_each_upload_to_the_instance_its_url_names(haproxy: Proxy,
                                                                  instances: dict[str, Server]) -> None:
    check_routing(haproxy, instances)


# --- 2. a 1 GiB upload through haproxy, cut and resumed ------------------------------------------------
class GeneratedFile(io.RawIOBase):
    """``size`` deterministic bytes made from memory as they are read: 1 MiB blocks of one
    random block, each with its own index in its first 8 bytes (so no two blocks are alike,
    and an append resumed at a wrong offset cannot produce the right hash)."""

    def __init__(self, size: int, seed: int) -> None:
        super().__init__()
        self.size = size
        self._base = random.Random(seed).randbytes(MiB)
        self._position = 0

    def block(self, index: int) -> bytes:
        return index.to_bytes(8, "big") + self._base[8:]

    def sha256(self) -> str:
        digest = hashlib.sha256()
        for index in range(self.size // MiB):
            digest.update(self.block(index))
        return digest.hexdigest()

    def pieces(self, start: int, stop: int) -> Iterator[bytes]:
        """The bytes from ``start`` to ``stop``, a block (or less) at a time."""
        while start < stop:
            index, within = divmod(start, MiB)
            piece = self.block(index)[within:within + stop - start]
            yield piece
            start += len(piece)

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._position, os.SEEK_END: self.size}[whence]
        self._position = max(0, base + offset)
        return self._position

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        stop = min(self.size, self._position + len(view))
        filled = 0
        for piece in self.pieces(self._position, stop):
            view[filled:filled + len(piece)] = piece
            filled += len(piece)
        self._position = stop
        return filled


def test_a_gigabyte_upload_cut_mid_append_resumes_through_haproxy(haproxy: Proxy,
                                                                  instances: dict[str, Server]) -> None:
    source = GeneratedFile(GiB, seed=1)
    location = _create(haproxy, GiB)
    server = instances[_named(location)]
    cut = 300 * MiB + 12345
    with _connect(haproxy) as sock:  # a PATCH announcing the whole file, cut off after `cut` bytes
        sock.sendall(_head_bytes("PATCH", location, {**APPEND, "Upload-Offset": "0", "Content-Length": str(GiB)}))
        for piece in source.pieces(0, cut):
            sock.sendall(piece)
        wait_for(lambda: cut in _uploads_in_flight(server), WAIT, what=f"{cut} body bytes at {_named(location)}")
    wait_for(lambda: _offset(_head(haproxy, location)) == cut, WAIT, what=f"offset {cut} reported")
    assert _data_file(server, location).stat().st_size == cut

    uploader = client.Uploader(file_stream=source, url=f"http://127.0.0.1:{haproxy.port}{location}",
                               chunk_size=128 * MiB)
    assert uploader.offset == cut  # tuspy's own HEAD, through haproxy
    uploader.upload()
    sha256 = source.sha256()
    entry = _gallery_entry(server, sha256)  # the SHA-256 the server computed across the resumption
    assert entry is not None and entry["size"] == GiB
    with open(server.uploads / entry["name"], "rb") as saved:  # and the bytes on disk agree
        assert hashlib.file_digest(saved, "sha256").hexdigest() == sha256
    assert not _data_file(server, location).exists()


# --- 3. haproxy: the instance holding an upload is gone ----------------------------------------------
def test_haproxy_answers_404_for_an_upload_whose_instance_is_gone(start_module_server: Start,
                                                                 tmp_path: Path) -> None:
    instances = start_instances(start_module_server)
    proxy = start_haproxy(tmp_path, instances)
    try:
        # Right away (before its health check has noticed, as a rule): app2 refuses, haproxy retries
        # and sends the last retry to app1 (option redispatch); once app2 is marked down, use-server
        # skips it.
        check_instance_gone(proxy, instances, lambda: "Server prefork/app2 is DOWN" in proxy.log.read_text())
    finally:
        proxy.stop()


# --- 4. the same through nginx -------------------------------------------------------------------------
def test_nginx_routes_each_upload_to_the_instance_its_url_names(nginx: Proxy, instances: dict[str, Server]) -> None:
    check_routing(nginx, instances)


def test_nginx_answers_404_for_an_upload_whose_instance_is_gone(start_module_server: Start, tmp_path: Path) -> None:
    instances = start_instances(start_module_server)
    proxy = start_nginx(tmp_path, instances)
    try:
        check_instance_gone(proxy, instances)
    finally:
        proxy.stop()
