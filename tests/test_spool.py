"""Tests for prefork.staging.spool.BodySpool: RAM/disk switch, limits, cleanup, move_to."""

from __future__ import annotations

import errno
import io
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from prefork.protocol.errors import BodyTooLarge, InsufficientStorage
from prefork.staging.rambuffer import RamBuffer
from prefork.staging.spool import BodySpool, remove_stale_files

DATA = b"".join(b"line %d\n" % i for i in range(200)) + b"no newline at end"


class Budget:
    """A MemoryBudget that grants up to ``capacity`` bytes."""

    def __init__(self, capacity: int) -> None:
        self.capacity, self.used = capacity, 0

    def try_reserve(self, nbytes: int) -> bool:
        if self.used + nbytes > self.capacity:
            return False
        self.used += nbytes
        return True

    def release(self, nbytes: int) -> None:
        self.used -= nbytes


class NamedSpool(BodySpool):
    """Force the named-file fallback (filesystems without O_TMPFILE)."""

    def _open_file(self, dir: str) -> tuple[int, str | None]:
        return self._open_named(dir)


class FullDiskSpool(BodySpool):
    """Fault injection: the disk fills after ``room`` bytes."""

    room = 100

    def _write_to_file(self, fd: int, data: bytes | bytearray | memoryview) -> None:
        if os.fstat(fd).st_size + len(data) > self.room:
            raise OSError(errno.ENOSPC, "No space left on device")
        super()._write_to_file(fd, data)


def _fill(spool: BodySpool, data: bytes = DATA, piece: int = 97) -> BodySpool:
    for i in range(0, len(data), piece):
        spool.write(data[i : i + piece])
    spool.seal()
    return spool


def _spools(tmp_path: Path) -> Iterator[BodySpool]:
    yield BodySpool(1 << 20, dir=tmp_path)  # stays in RAM
    yield BodySpool(100, dir=tmp_path)  # O_TMPFILE on disk
    yield NamedSpool(100, dir=tmp_path)  # named file on disk
    yield BodySpool(0, dir=tmp_path)


def test_threshold_crossing_is_invisible_to_readers(tmp_path: Path) -> None:
    kinds = []
    for spool in _spools(tmp_path):
        with _fill(spool) as s:
            kinds.append(s.in_memory)
            assert s.size == len(DATA) and s.tell() == 0
            assert s.read() == DATA
            s.seek(0)
            assert list(s) == io.BytesIO(DATA).readlines()
            s.seek(3)
            assert s.readline() == b"e 0\n" and s.readline(4) == b"line" and s.tell() == 11
            buf = bytearray(10)
            assert s.readinto(buf) == 10 and bytes(buf) == DATA[11:21]
            assert s.seek(-5, os.SEEK_END) == len(DATA) - 5 and s.read(100) == b"t end"
            assert s.read(10) == b"" and s.readinto(buf) == 0
            assert s.seek(2, os.SEEK_CUR) == len(DATA) + 2 and s.read() == b""
            s.seek(0)
            assert s.readlines() == io.BytesIO(DATA).readlines()
    assert kinds == [True, False, False, False]
    assert os.listdir(tmp_path) == []


def test_in_memory_flips_and_files(tmp_path: Path) -> None:
    s = NamedSpool(10, dir=tmp_path)
    s.write(b"0123456789")
    assert s.in_memory and s.path is None
    s.write(b"x")
    assert not s.in_memory and s.path is not None
    assert os.path.basename(s.path).startswith(f"prefork-{os.getpid()}-") and s.path.endswith(".part")
    assert os.fstat(s.fileno()).st_size == 11
    s.close()
    assert os.listdir(tmp_path) == [] and s.closed
    s.close()  # idempotent
    with pytest.raises(io.UnsupportedOperation):
        BodySpool(10).fileno()


def test_large_body_readline_on_disk(tmp_path: Path) -> None:
    data = b"a" * 3_000_000 + b"\n" + b"b" * 10
    with _fill(BodySpool(10, dir=tmp_path), data, piece=65536) as s:
        assert s.readline() == data[:3_000_001] and s.readline() == b"b" * 10 and s.readline() == b""


def test_write_after_seal_and_closed(tmp_path: Path) -> None:
    s = _fill(BodySpool(10, dir=tmp_path))
    assert not s.writable()
    with pytest.raises(ValueError, match="write to a sealed spool"):
        s.write(b"x")
    s.close()
    with pytest.raises(ValueError, match="closed spool"):
        s.read()


def test_max_size_is_413(tmp_path: Path) -> None:
    with BodySpool(4, max_size=10, dir=tmp_path) as s:
        s.write(b"0123456789")
        with pytest.raises(BodyTooLarge) as info:
            s.write(b"x")
        assert info.value.status == 413
        assert str(info.value) == "body of 11 bytes exceeds limit of 10 bytes"
        assert s.size == 10
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("cls", [FullDiskSpool, type("NamedFull", (FullDiskSpool, NamedSpool), {})])
def test_disk_full_is_507_and_removes_the_file(tmp_path: Path, cls: type[BodySpool]) -> None:
    deltas: list[int] = []
    s = cls(10, dir=tmp_path, on_disk_bytes=deltas.append)
    s.write(b"x" * 60)
    with pytest.raises(InsufficientStorage) as info:
        s.write(b"y" * 60)
    assert info.value.status == 507
    assert str(info.value).startswith(f"disk full while staging body in {str(tmp_path)!r}")
    assert os.listdir(tmp_path) == [] and sum(deltas) == 0
    s.close()


def test_budget_refusal_goes_to_disk_and_is_released(tmp_path: Path) -> None:
    # What is reserved is the memory the RAM copy occupies (RamBuffer.footprint), which
    # covers the bytearray's over-allocation: 40 bytes reserve 53, 60 would need 75.
    budget = Budget(60)
    s = BodySpool(1000, dir=tmp_path, budget=budget)
    s.write(b"a" * 40)
    assert s.in_memory and budget.used == RamBuffer(1000).footprint(40) == 53
    s.write(b"b" * 20)  # budget says no: to disk, not an error
    assert not s.in_memory and budget.used == 0
    s.seal()
    assert s.read() == b"a" * 40 + b"b" * 20
    s.close()
    s2 = BodySpool(1000, budget=budget)
    s2.write(b"c" * 30)
    assert budget.used == RamBuffer(1000).footprint(30)
    s2.close()
    assert budget.used == 0


def test_on_disk_bytes_accounting(tmp_path: Path) -> None:
    deltas: list[int] = []
    s = BodySpool(5, dir=tmp_path, on_disk_bytes=deltas.append)
    s.write(b"abc")
    s.write(b"defg")
    s.write(b"hi")
    assert deltas == [3, 4, 2]
    s.close()
    assert deltas[-1] == -9


_CHILD = """
import os, sys
from prefork.staging.spool import BodySpool
cls = BodySpool
if sys.argv[2] == "named":
    class cls(BodySpool):
        def _open_file(self, dir):
            return self._open_named(dir)
s = cls(10, dir=sys.argv[1])
s.write(b"x" * 100_000)
assert not s.in_memory
print("ready", flush=True)
sys.stdin.read()
"""


@pytest.mark.parametrize("mode", ["tmpfile", "named"])
def test_sigkilled_process_leaves_no_staging_file(tmp_path: Path, mode: str) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _CHILD, str(tmp_path), mode],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=Path(__file__).parent.parent,
    )
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    child.send_signal(signal.SIGKILL)
    child.wait(10)
    if mode == "named":  # the master's job after reaping the worker
        assert len(os.listdir(tmp_path)) == 1
        assert remove_stale_files(tmp_path, os.getpid()) == 0
        assert remove_stale_files(tmp_path, child.pid) == 1
    assert os.listdir(tmp_path) == []


# -- move_to --------------------------------------------------------------------


@pytest.mark.parametrize("cls", [BodySpool, NamedSpool])
def test_move_to_same_fs_is_a_link(tmp_path: Path, cls: type[BodySpool]) -> None:
    staging, dest = tmp_path / "staging", tmp_path / "uploads" / "f.bin"
    staging.mkdir()
    dest.parent.mkdir()
    s = _fill(cls(10, dir=staging))
    inode = os.fstat(s.fileno()).st_ino
    s.move_to(dest)
    assert os.stat(dest).st_ino == inode and os.stat(dest).st_nlink == 1
    assert dest.read_bytes() == DATA and s.read() == DATA  # still readable
    s.close()
    assert dest.read_bytes() == DATA and os.listdir(staging) == []
    with pytest.raises(ValueError, match="closed spool"):
        s.move_to(tmp_path / "again")


def test_move_to_in_memory_and_rules(tmp_path: Path) -> None:
    s = BodySpool(1 << 20, dir=tmp_path)
    s.write(b"abc")
    with pytest.raises(ValueError, match="sealed spool"):
        s.move_to(tmp_path / "early")
    s.seal()
    s.move_to(tmp_path / "mem.bin")
    with pytest.raises(ValueError, match="not moved yet"):
        s.move_to(tmp_path / "twice")
    s.close()
    assert os.listdir(tmp_path) == ["mem.bin"] and (tmp_path / "mem.bin").read_bytes() == b"abc"


@pytest.mark.parametrize("cls", [BodySpool, NamedSpool])
@pytest.mark.parametrize("threshold", [10, 1 << 20])
def test_move_to_never_overwrites(tmp_path: Path, cls: type[BodySpool], threshold: int) -> None:
    dest = tmp_path / "exists.bin"
    dest.write_bytes(b"precious")
    s = _fill(cls(threshold, dir=tmp_path))
    with pytest.raises(FileExistsError):
        s.move_to(dest)
    assert dest.read_bytes() == b"precious"
    assert s.read() == DATA  # the spool is intact too
    s.seek(0)
    s.move_to(tmp_path / "other.bin")
    s.close()
    assert sorted(os.listdir(tmp_path)) == ["exists.bin", "other.bin"]


class CrossDevice:
    """Seam: linking the staged inode fails with EXDEV, as across filesystems."""

    def _link(self: BodySpool, src: str, dest: str) -> None:  # type: ignore[misc]
        if src == self.path:
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        os.link(src, dest)

    def _link_fd(self: BodySpool, fd: int, dest: str) -> None:  # type: ignore[misc]
        if not self.in_memory and fd == self.fileno():
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        BodySpool._link_fd(self, fd, dest)


class XdevSpool(CrossDevice, BodySpool):
    pass


class XdevNamedSpool(CrossDevice, NamedSpool):
    pass


class XdevFullSpool(CrossDevice, BodySpool):
    """Cross-filesystem, and the destination fills up halfway through the copy."""

    def _write_to_file(self, fd: int, data: bytes | bytearray | memoryview) -> None:
        if not self.in_memory and fd != self.fileno():
            os.write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, "No space left on device")
        super()._write_to_file(fd, data)


@pytest.mark.parametrize("cls", [XdevSpool, XdevNamedSpool])
def test_move_to_cross_fs_copies_then_links(tmp_path: Path, cls: type[BodySpool]) -> None:
    s = _fill(cls(10, dir=tmp_path))
    inode = os.fstat(s.fileno()).st_ino
    s.move_to(tmp_path / "dest.bin")
    assert os.stat(tmp_path / "dest.bin").st_ino != inode  # a copy
    assert (tmp_path / "dest.bin").read_bytes() == DATA
    s.close()
    assert os.listdir(tmp_path) == ["dest.bin"]


def test_move_to_cross_fs_disk_full_leaves_no_partial_dest(tmp_path: Path) -> None:
    s = _fill(XdevFullSpool(10, dir=tmp_path), b"z" * 900)
    with pytest.raises(InsufficientStorage, match="disk full while saving to"):
        s.move_to(tmp_path / "dest.bin")
    assert not (tmp_path / "dest.bin").exists()
    s.close()
    assert os.listdir(tmp_path) == []


@pytest.fixture
def tiny_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A real 256 KiB tmpfs; needs CAP_SYS_ADMIN, else the seam tests cover it."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount tmpfs (covered by the ENOSPC seam tests): {res.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_real_full_filesystem_and_real_cross_fs_move(tiny_tmpfs: Path, tmp_path: Path) -> None:
    s = BodySpool(1000, dir=tiny_tmpfs)
    with pytest.raises(InsufficientStorage):
        for _ in range(100):
            s.write(b"q" * 65536)
    s.close()
    assert os.listdir(tiny_tmpfs) == []
    src = _fill(BodySpool(10, dir=tmp_path))  # ext4 (or whatever /tmp is) -> tmpfs
    src.move_to(tiny_tmpfs / "moved.bin")
    src.close()
    assert (tiny_tmpfs / "moved.bin").read_bytes() == DATA
    assert os.listdir(tiny_tmpfs) == ["moved.bin"] and not [p for p in os.listdir(tmp_path) if p != "tiny"]


class _ShrinkingDisk:
    """Stands in for statvfs: ``free`` bytes less what the spools under test wrote."""

    def __init__(self, free: int) -> None:
        self.free, self.written, self.calls = free, 0, 0

    def __call__(self, directory: str | None) -> int:
        self.calls += 1
        return self.free - self.written


@pytest.mark.parametrize("cls", [BodySpool, NamedSpool])
def test_min_free_disk_is_kept_as_a_body_grows(tmp_path: Path, cls: type[BodySpool],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A body of unknown length: free space is checked when it goes to disk, then every
    CHECK_STEP bytes (not per write); once the next bytes would leave less than
    min_free_disk, 507 and the staging file is gone (issue 12)."""
    from prefork.staging import diskspace

    MiB = 1 << 20
    disk = _ShrinkingDisk(free=100 * MiB)
    monkeypatch.setattr(diskspace, "free_bytes", disk)
    deltas: list[int] = []
    s = cls(64 * 1024, dir=tmp_path, min_free_disk=90 * MiB, on_disk_bytes=deltas.append)
    chunk = b"z" * (16 * 1024)
    s.write(chunk)
    assert disk.calls == 0  # in RAM: nothing to check
    with pytest.raises(InsufficientStorage) as info:
        while True:
            s.write(chunk)
            disk.written += len(chunk)
    assert info.value.status == 507
    staged = s.size
    assert 10 * MiB - diskspace.CHECK_STEP < staged <= 10 * MiB + diskspace.CHECK_STEP  # overshoot < one step
    assert disk.calls <= staged // diskspace.CHECK_STEP + 2  # about one statvfs per MiB, not per write
    assert str(info.value) == (
        f"not enough disk space to keep staging a body in {tmp_path}: {disk.free - disk.written} bytes free "
        f"with {staged} bytes staged, and [staging] min_free_disk = {90 * MiB} bytes must stay free")
    assert os.listdir(tmp_path) == [] and sum(deltas) == 0
    s.close()


def test_min_free_disk_refuses_the_spill_itself(tmp_path: Path) -> None:
    """No disk has 1000 TiB free: the first byte that would go to disk is refused."""
    s = NamedSpool(100, dir=tmp_path, min_free_disk=1000 << 40)
    s.write(b"a" * 100)  # RAM: fine
    with pytest.raises(InsufficientStorage, match=r"^not enough disk space to keep staging a body in .* "
                                                  r"with 0 bytes staged, and \[staging\] min_free_disk = "):
        s.write(b"b")
    assert os.listdir(tmp_path) == []
    s.close()
    with BodySpool(100, dir=tmp_path, min_free_disk=1) as ok:  # any real disk has a byte free
        ok.write(b"c" * 5000)
        assert not ok.in_memory
