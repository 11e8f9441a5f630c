"""WriteBehind and the spool's write-behind: order, digests, errors, bounds, fork.

Chunks of ``MIN_CHUNK`` bytes or more are queued for the helper thread; smaller
ones are written inline after the queue. Whatever the mix, the file and the
digest must equal what plain ``os.write`` and ``hashlib`` give.
"""

from __future__ import annotations

import errno
import hashlib
import os
import random
import threading
from pathlib import Path

import pytest

from prefork.staging import writebehind
from prefork.protocol.errors import InsufficientStorage
from prefork.staging.forms import FormSink
from prefork.protocol.limits import FormLimits
from prefork.staging.spool import BodySpool
from prefork.staging.writebehind import MIN_CHUNK, WriteBehind, WriteBehindHelper
from tests.server import wait_for


@pytest.fixture
def helper() -> WriteBehindHelper:
    """A helper of this test's own, as a worker has one (no module-global helper)."""
    return WriteBehindHelper()


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        view = view[os.write(fd, view):]


def _chunks(rng: random.Random, data: bytes) -> list[bytes]:
    """Split ``data`` into a mix of inline (small) and queued (large) chunks."""
    out, position = [], 0
    while position < len(data):
        step = rng.choice([1, 7, 4096, MIN_CHUNK - 1, MIN_CHUNK, 300_000, 1 << 20, 3 << 20])
        out.append(data[position:position + step])
        position += step
    return out


@pytest.mark.parametrize("behind", [True, False])
@pytest.mark.parametrize("seed", range(3))
def test_file_and_digest_equal_plain_writes_in_any_mix_of_chunks(tmp_path: Path, seed: int, behind: bool,
                                                                  helper: WriteBehindHelper) -> None:
    rng = random.Random(seed)
    data = rng.randbytes(9 * 1024 * 1024 + 17)
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        digest = hashlib.sha256()
        stream = WriteBehind(fd, _write_all, digest, helper=helper if behind else None)
        for chunk in _chunks(rng, data):
            stream.write(bytearray(chunk))  # a buffer the caller reuses: must be copied
        stream.flush()
        assert stream.pending == 0
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == data
    assert digest.hexdigest() == hashlib.sha256(data).hexdigest()


def test_caller_may_reuse_its_buffer_at_once(tmp_path: Path, helper: WriteBehindHelper) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    buffer = bytearray(MIN_CHUNK * 2)
    expected = bytearray()
    try:
        behind = WriteBehind(fd, _write_all, helper=helper)
        for value in range(20):
            buffer[:] = bytes([value]) * len(buffer)  # overwritten right after write()
            behind.write(buffer)
            expected += buffer
        behind.flush()
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == expected


def test_backlog_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, helper: WriteBehindHelper) -> None:
    """A slow disk makes write() wait instead of queueing without bound."""
    monkeypatch.setattr(writebehind, "MAX_BACKLOG", 2 * MIN_CHUNK)
    gate = threading.Semaphore(0)
    seen: list[int] = []

    def slow_write(fd: int, view: memoryview) -> None:
        gate.acquire()
        seen.append(helper.queued)
        _write_all(fd, view)

    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        behind = WriteBehind(fd, slow_write, helper=helper)
        writer = threading.Thread(target=lambda: [behind.write(b"x" * MIN_CHUNK) for _ in range(10)])
        writer.start()
        for _ in range(10):
            gate.release()
        writer.join(30)
        assert not writer.is_alive()
        behind.flush()
    finally:
        os.close(fd)
    assert max(seen) <= 3 * MIN_CHUNK  # the bound plus the chunk that crossed it
    assert os.path.getsize(tmp_path / "f") == 10 * MIN_CHUNK


def test_a_failed_queued_write_is_raised_later_and_later_bytes_are_dropped(tmp_path: Path,
                                                                           helper: WriteBehindHelper) -> None:
    calls = []

    def failing(fd: int, view: memoryview) -> None:
        calls.append(len(view))
        if len(calls) == 2:
            raise OSError(errno.EIO, "Input/output error")
        _write_all(fd, view)

    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        behind = WriteBehind(fd, failing, helper=helper)
        behind.write(b"a" * MIN_CHUNK)
        behind.write(b"b" * MIN_CHUNK)  # fails on the helper thread
        behind.discard()  # waits, does not raise
        with pytest.raises(OSError, match="Input/output error"):
            behind.write(b"c")
        with pytest.raises(OSError, match="Input/output error"):
            behind.flush()
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == b"a" * MIN_CHUNK
    assert calls == [MIN_CHUNK, MIN_CHUNK]


class QueuedDiskFull(BodySpool):
    """The disk fills during the second queued write (on the helper thread)."""

    writes = 0

    def _write_to_file(self, fd: int, data: bytes | bytearray | memoryview) -> None:
        self.writes += 1
        if self.writes == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        super()._write_to_file(fd, data)


def test_spool_disk_full_on_the_helper_thread_is_507_by_seal_and_removes_the_file(
        tmp_path: Path, helper: WriteBehindHelper) -> None:
    deltas: list[int] = []
    spool = QueuedDiskFull(0, dir=tmp_path, on_disk_bytes=deltas.append, checksum=True, write_behind=helper)
    with pytest.raises(InsufficientStorage) as info:
        for _ in range(4):
            spool.write(b"z" * MIN_CHUNK)
        spool.seal()
    assert info.value.status == 507
    assert os.listdir(tmp_path) == [] and sum(deltas) == 0
    spool.close()


@pytest.mark.parametrize("write_behind", [True, False])
@pytest.mark.parametrize("threshold", [0, 100, 1 << 30])
def test_spool_sha256_with_and_without_checksum(tmp_path: Path, threshold: int, write_behind: bool,
                                                helper: WriteBehindHelper) -> None:
    rng = random.Random(threshold)
    data = rng.randbytes(3 * 1024 * 1024 + 5)
    expected = hashlib.sha256(data).hexdigest()
    for checksum in (True, False):
        with BodySpool(threshold, dir=tmp_path, checksum=checksum,
                       write_behind=helper if write_behind else None) as spool:
            for chunk in _chunks(rng, data):
                spool.write(memoryview(chunk))
            with pytest.raises(ValueError, match="not sealed"):
                _ = spool.sha256
            spool.seal()
            assert spool.sha256 == expected  # computed on the way in, or read back
            assert spool.read() == data
    assert os.listdir(tmp_path) == []


def test_checksum_none_needs_the_spool_open(tmp_path: Path) -> None:
    spool = BodySpool(0, dir=tmp_path)
    spool.write(b"abc")
    spool.seal()
    spool.close()
    with pytest.raises(ValueError, match="closed"):
        _ = spool.sha256
    with BodySpool(0, dir=tmp_path, checksum=True) as hashed:
        hashed.write(b"abc")
        hashed.seal()
    assert hashed.sha256 == hashlib.sha256(b"abc").hexdigest()  # kept after close


def test_write_behind_in_a_forked_child(tmp_path: Path, helper: WriteBehindHelper) -> None:
    """The helper thread does not survive fork: a child starts its own."""
    with BodySpool(0, dir=tmp_path, checksum=True, write_behind=helper) as parent:
        parent.write(b"p" * (2 * MIN_CHUNK))
        parent.seal()
        assert parent.sha256 == hashlib.sha256(b"p" * (2 * MIN_CHUNK)).hexdigest()
    pid = os.fork()
    if pid == 0:
        try:
            with BodySpool(0, dir=tmp_path, checksum=True, write_behind=helper) as child:
                child.write(b"c" * (3 * MIN_CHUNK))
                child.seal()
                ok = child.sha256 == hashlib.sha256(b"c" * (3 * MIN_CHUNK)).hexdigest()
                ok = ok and child.read() == b"c" * (3 * MIN_CHUNK)
        except BaseException:
            ok = False
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0


def test_a_plain_spool_writes_inline_and_a_form_spool_queues(tmp_path: Path, helper: WriteBehindHelper) -> None:
    """Raw bodies are written on the caller's thread; with write_behind large chunks go
    to the helper thread (seen here through the thread that runs the write)."""
    threads: dict[bool, set[str]] = {}

    class Recording(BodySpool):
        def _write_to_file(self, fd: int, data: bytes | bytearray | memoryview) -> None:
            threads.setdefault(self._write_behind is not None, set()).add(threading.current_thread().name)
            super()._write_to_file(fd, data)

    for write_behind in (False, True):
        with Recording(0, dir=tmp_path, write_behind=helper if write_behind else None) as spool:
            spool.write(b"r" * (2 * MIN_CHUNK))
            spool.seal()
            assert spool.read() == b"r" * (2 * MIN_CHUNK)
    assert threads == {False: {threading.current_thread().name}, True: {"write-behind"}}


class _Stalled:
    """A disk that writes only when the test lets it: the ring fills while it waits."""

    def __init__(self, helper: WriteBehindHelper) -> None:
        self.helper = helper
        self.gate = threading.Semaphore(0)
        self.queued_seen: list[int] = []

    def write(self, fd: int, view: memoryview) -> None:
        self.gate.acquire()
        self.queued_seen.append(self.helper.queued)
        _write_all(fd, view)


def _write_in_thread(behind: WriteBehind, chunks: list[bytes]) -> threading.Thread:
    writer = threading.Thread(target=lambda: [behind.write(chunk) for chunk in chunks])
    writer.start()
    return writer


def test_the_ring_fills_to_max_backlog_and_no_further(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      helper: WriteBehindHelper) -> None:
    """Queued bytes live in one ring of MAX_BACKLOG bytes: with the disk stalled it fills
    exactly, the writer waits, and the ring is all the memory the queue holds."""
    monkeypatch.setattr(writebehind, "MAX_BACKLOG", 1 << 20)
    disk = _Stalled(helper)
    chunks = [bytes([n]) * (256 * 1024) for n in range(12)]
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        behind = WriteBehind(fd, disk.write, helper=helper)
        writer = _write_in_thread(behind, chunks)
        wait_for(lambda: helper.queued == 1 << 20, 10, what="the ring full")
        assert writer.is_alive()  # waiting for room, not queueing more
        assert helper._ring is not None and len(helper._ring) == 1 << 20
        helper.release_idle()  # not idle: the ring stays
        assert helper._ring is not None
        for _ in chunks:
            disk.gate.release()
        writer.join(30)
        behind.flush()
    finally:
        os.close(fd)
    assert max(disk.queued_seen) == 1 << 20
    assert (tmp_path / "f").read_bytes() == b"".join(chunks)
    helper.release_idle()  # idle now: unmapped, and mapped again on next use
    assert helper._ring is None


def test_pieces_that_do_not_divide_the_ring_wrap_around_in_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, helper: WriteBehindHelper) -> None:
    monkeypatch.setattr(writebehind, "MAX_BACKLOG", 1 << 20)
    disk = _Stalled(helper)
    rng = random.Random(7)
    chunks = [rng.randbytes(rng.choice([MIN_CHUNK, 300_000, 700_000, 1 << 20, 1_500_000])) for _ in range(40)]
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT)
    try:
        digest = hashlib.sha256()
        behind = WriteBehind(fd, disk.write, digest, helper=helper)
        writer = _write_in_thread(behind, chunks)
        for _ in range(200):  # more permits than pieces (1.5 MB chunks are two pieces)
            disk.gate.release()
        writer.join(30)
        behind.flush()
    finally:
        os.close(fd)
    assert max(disk.queued_seen) <= 1 << 20  # the skipped ends are counted, and still fit
    assert (tmp_path / "f").read_bytes() == b"".join(chunks)
    assert digest.hexdigest() == hashlib.sha256(b"".join(chunks)).hexdigest()


def test_each_helper_has_its_own_queue_and_ring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No helper is shared through a module global: one worker's stalled disk fills its
    own ring and leaves another helper's queue empty."""
    monkeypatch.setattr(writebehind, "MAX_BACKLOG", 1 << 20)
    stalled, free = WriteBehindHelper(), WriteBehindHelper()
    disk = _Stalled(stalled)
    fds = [os.open(tmp_path / name, os.O_RDWR | os.O_CREAT) for name in ("a", "b")]
    try:
        slow = WriteBehind(fds[0], disk.write, helper=stalled)
        writer = _write_in_thread(slow, [b"a" * MIN_CHUNK] * 4)
        wait_for(lambda: stalled.queued == 4 * MIN_CHUNK, 10, what="the stalled helper's queue")
        fast = WriteBehind(fds[1], _write_all, helper=free)
        fast.write(b"b" * (2 * MIN_CHUNK))
        fast.flush()  # not held up by the other helper's stalled disk
        assert free.queued == 0 and stalled.queued == 4 * MIN_CHUNK
        for _ in range(4):
            disk.gate.release()
        writer.join(30)
        slow.flush()
    finally:
        for fd in fds:
            os.close(fd)
    assert (tmp_path / "a").read_bytes() == b"a" * (4 * MIN_CHUNK)
    assert (tmp_path / "b").read_bytes() == b"b" * (2 * MIN_CHUNK)


def _form(size: int) -> tuple[bytes, bytes]:
    body = (b"--x\r\nContent-Disposition: form-data; name=\"f\"; filename=\"f.bin\"\r\n\r\n"
            + b"f" * size + b"\r\n--x--\r\n")
    return b"multipart/form-data; boundary=x", body


@pytest.mark.parametrize("given", [True, False])
def test_a_form_sink_writes_its_files_through_the_helper_it_is_given(tmp_path: Path, given: bool) -> None:
    helper = WriteBehindHelper()
    content_type, body = _form(4 * MIN_CHUNK)
    sink = FormSink(content_type, limits=FormLimits(), spool_threshold=0, spool_dir=str(tmp_path),
                    write_behind=helper if given else None)
    try:
        sink.write(body)
        form = sink.seal()
        upload = form.files["f"]
        with upload.open() as handle:
            assert handle.read() == b"f" * (4 * MIN_CHUNK)
        assert upload.sha256 == hashlib.sha256(b"f" * (4 * MIN_CHUNK)).hexdigest()
    finally:
        sink.close()
    assert (helper._ring is not None) is given  # the ring is mapped by the first queued chunk
