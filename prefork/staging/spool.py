"""BodySpool: a request body in RAM up to a threshold, then in a staging file.

Strategy: bytes arrive with ``write()``; while the body is under ``threshold``
and the worker's global RAM budget grants the memory they occupy, they go to a
``RamBuffer`` (its footprint, not just its length, is what is reserved; large
bodies live in an mmap of their own that is unmapped on close). Past that the
RAM bytes are flushed once to a staging file and later writes go straight to it. ``seal()`` ends the
body; reads use ``os.pread``/``os.preadv`` on the file descriptor, so the read
position is ours and never fights the write offset.

Staging files are unnamed (``O_TMPFILE``) or named by PID for ``remove_stale_files``,
so none outlives a SIGKILLed worker (DESIGN §3). ``move_to()`` publishes a sealed body,
never partial, never overwriting: a link, or a copy across filesystems (``stagingfile``).
``adopt`` makes a spool of a file staged elsewhere (a completed resumable upload).

Disk full (ENOSPC/EDQUOT) raises ``InsufficientStorage`` (507) and removes the
partial file, and so does growing past ``min_free_disk`` (``diskspace.FreeSpaceGuard``,
checked before the bytes are written); exceeding ``max_size`` raises ``BodyTooLarge`` (413).
"""

from __future__ import annotations

import errno
import hashlib
import io
import os
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

from prefork.staging.budget import MemoryBudget
from prefork.staging.diskspace import FreeSpaceGuard, remove_stale_files, staging_name
from prefork.protocol.errors import BodyTooLarge, InsufficientStorage
from prefork.staging.rambuffer import RamBuffer
from prefork.staging.stagingfile import DISK_FULL, copy_into_place, link_fd, open_named, open_staging_file, write_all
from prefork.staging.writebehind import WriteBehind, WriteBehindHelper

__all__ = ["BodySpool", "remove_stale_files"]

#: Copy and readline block size; 1 MiB keeps syscall overhead negligible.
_COPY_CHUNK = 1 << 20


class BodySpool(io.RawIOBase):
    """A write-once, then read-only, seekable body: RAM first, then a file.

    Args:
        threshold: bytes kept in RAM before switching to a file.
        max_size: largest body accepted; None means unlimited.
        dir: directory for staging files (default: the system temp dir).
        budget: global RAM budget; a refusal sends the body to disk, never errors.
        on_disk_bytes: called with the change in bytes staged on disk: positive
            on each file write, negative once when the file is released.
        checksum: compute the body's SHA-256 while it is written (see ``sha256``).
        min_free_disk: bytes that must stay free under ``dir`` as the file grows (507).
        write_behind: once on disk, write (and hash) large chunks on this
            helper's thread (``prefork.staging.writebehind``); worth it when the caller
            parses the bytes or ``checksum`` is on. None writes them inline.
    """

    def __init__(
        self,
        threshold: int,
        *,
        max_size: int | None = None,
        dir: str | os.PathLike[str] | None = None,
        budget: MemoryBudget | None = None,
        on_disk_bytes: Callable[[int], None] | None = None,
        checksum: bool = False,
        min_free_disk: int = 0,
        write_behind: WriteBehindHelper | None = None,
    ) -> None:
        super().__init__()
        self._threshold = threshold
        self._max_size = max_size
        self._dir = os.fspath(dir) if dir is not None else tempfile.gettempdir()
        self._budget = budget
        self._on_disk = on_disk_bytes
        self._guard = FreeSpaceGuard(self._dir, min_free_disk) if min_free_disk else None
        self._ram: RamBuffer | None = RamBuffer(threshold)
        self._reserved = 0
        self._fd: int | None = None
        self._behind: WriteBehind | None = None  # the staging file's writes, once on disk
        self._write_behind = write_behind
        self._digest = hashlib.sha256() if checksum else None
        self._sha256: str | None = None
        self._path: str | None = None  # None while on disk means O_TMPFILE
        self._disk_bytes = 0
        self._size = 0
        self._pos = 0
        self._sealed = False
        self._moved_to: str | None = None

    @classmethod
    def adopt(cls, fd: int, path: str, size: int, sha256: str | None) -> BodySpool:
        """A sealed spool of a complete file staged elsewhere (a resumable upload's data):
        it owns ``fd`` and ``path`` from now on, as if it had written them."""
        spool = cls(0, dir=os.path.dirname(path))
        spool._ram, spool._fd, spool._path, spool._size, spool._sha256 = None, fd, path, size, sha256
        spool._sealed = True
        return spool

    # -- properties -------------------------------------------------------
    @property
    def size(self) -> int:
        """Bytes written so far (the whole body once sealed)."""
        return self._size

    @property
    def in_memory(self) -> bool:
        """True while the body lives in RAM."""
        return self._fd is None

    @property
    def sealed(self) -> bool:
        """True once ``seal()`` was called."""
        return self._sealed

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the sealed body.

        Computed while the body was written when ``checksum`` was on; otherwise
        read back from RAM or the staging file on first use (then remembered).

        Raises:
            ValueError: not sealed, or closed and the digest never computed.
        """
        if self._sha256 is None:
            if not self._sealed:
                raise ValueError("sha256 of a spool that is not sealed")
            if self._digest is None:
                self._check_open()
                self._digest = self._hash_contents()
            self._sha256 = self._digest.hexdigest()
        return self._sha256

    def _hash_contents(self) -> Any:
        digest = hashlib.sha256()
        for chunk in self._chunks():
            digest.update(chunk)
        return digest

    def _chunks(self) -> Iterator[memoryview]:
        """The body in order, as views of one reused block (each valid until the next)."""
        if self._ram is not None:
            with self._ram.view() as whole:
                yield whole
            return
        assert self._fd is not None
        block = memoryview(bytearray(_COPY_CHUNK))
        for offset in range(0, self._size, _COPY_CHUNK):
            got = os.preadv(self._fd, [block[: min(_COPY_CHUNK, self._size - offset)]], offset)
            yield block[:got]

    @property
    def path(self) -> str | None:
        """Name of the staging file; None in RAM or for an unnamed O_TMPFILE."""
        return self._path

    def fileno(self) -> int:
        """Return the staging file's descriptor.

        Raises:
            OSError: the body is in RAM (like ``io.BytesIO``).
        """
        if self._fd is None:
            raise io.UnsupportedOperation("spool is in memory; no fileno")
        return self._fd

    def readable(self) -> bool:
        return True

    seekable = readable

    def writable(self) -> bool:
        return not self._sealed

    # -- writing ----------------------------------------------------------
    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        """Append ``data`` to the body.

        Returns:
            ``len(data)`` in bytes.

        Raises:
            ValueError: the spool is sealed or closed.
            BodyTooLarge: the body would exceed ``max_size`` (nothing is written).
            InsufficientStorage: the disk is full; the staging file is removed.
        """
        self._check_open()
        if self._sealed:
            raise ValueError("write to a sealed spool")
        n = memoryview(data).nbytes
        if self._max_size is not None and self._size + n > self._max_size:
            raise BodyTooLarge(f"body of {self._size + n} bytes exceeds limit of {self._max_size} bytes")
        if n == 0:
            return 0
        to_disk = self._ram is None or not self._keep_in_ram(n)
        if to_disk and self._guard is not None:
            self._check_free_disk(n)
        if self._ram is not None and to_disk:
            self._spill()
        if self._ram is not None:
            self._ram.append(data)
            if self._digest is not None:
                self._digest.update(data)
        else:
            self._file_write(data, n)
        self._size += n
        return n

    def _check_free_disk(self, n: int) -> None:
        """Before ``n`` more bytes (and the RAM bytes, when spilling) go to disk: 507
        if they would leave less than ``min_free_disk`` free; the file goes."""
        assert self._guard is not None
        try:
            self._guard.check(self._disk_bytes, n if self._ram is None else self._size + n)
        except InsufficientStorage:
            self._drop_file()
            raise

    def _keep_in_ram(self, n: int) -> bool:
        """Whether ``n`` more bytes may stay in RAM; reserves the memory they need."""
        assert self._ram is not None
        if self._size + n > self._threshold:
            return False
        if self._budget is not None:
            needed = self._ram.footprint(self._size + n) - self._reserved
            if needed > 0:
                if not self._budget.try_reserve(needed):
                    return False
                self._reserved += needed
        return True

    def _spill(self) -> None:
        """Move the RAM bytes to a new staging file (once per spool).

        They were hashed on the way into RAM, so they are written inline; later
        writes go through the write-behind, which hashes what it writes.
        """
        self._fd, self._path = self._open_file(self._dir)
        ram, self._ram = self._ram, None
        assert ram is not None
        try:
            if ram.size:
                with ram.view() as data:
                    self._write_to_file(self._fd, data)
                self._count_disk_bytes(ram.size)
        except OSError as exc:
            self._storage_failed(exc)
        finally:
            ram.close()
            self._release_budget()
        self._behind = WriteBehind(self._fd, self._write_to_file, self._digest, helper=self._write_behind)

    def _file_write(self, data: bytes | bytearray | memoryview, n: int) -> None:
        assert self._behind is not None
        try:
            self._behind.write(data)
        except OSError as exc:
            self._storage_failed(exc)
        self._count_disk_bytes(n)

    def _flush(self) -> None:
        """Wait for the queued writes; raise their error as a write would."""
        if self._behind is not None:
            try:
                self._behind.flush()
            except OSError as exc:
                self._storage_failed(exc)

    def _storage_failed(self, exc: OSError) -> None:
        """A staging write failed: disk full is 507 (the file goes), the rest is raised as is."""
        if exc.errno not in DISK_FULL:
            raise exc
        self._drop_file()
        raise InsufficientStorage(f"disk full while staging body in {self._dir!r}: {exc.strerror}") from exc

    def _count_disk_bytes(self, n: int) -> None:
        self._disk_bytes += n
        if self._on_disk is not None:
            self._on_disk(n)

    # Seams for tests (fault injection); production code uses them as-is.
    def _write_to_file(self, fd: int, data: bytes | bytearray | memoryview) -> None:
        write_all(fd, data)

    def _open_file(self, dir: str) -> tuple[int, str | None]:
        """Open a staging file in ``dir``: unnamed if possible, else by PID."""
        return open_staging_file(dir)

    _open_named = staticmethod(open_named)

    def _link(self, src: str, dest: str) -> None:
        os.link(src, dest)

    def _link_fd(self, fd: int, dest: str) -> None:
        """Give an unnamed (O_TMPFILE) inode the name ``dest`` (``stagingfile.link_fd``)."""
        link_fd(fd, dest)

    # -- lifecycle ----------------------------------------------------------
    def seal(self) -> None:
        """End of body: finish the queued writes, rewind to 0 and refuse further writes.

        Raises:
            InsufficientStorage: a queued write found the disk full (the file is removed).
        """
        self._check_open()
        self._flush()
        self._sealed = True
        self._pos = 0

    def _release_budget(self) -> None:
        if self._reserved and self._budget is not None:
            self._budget.release(self._reserved)
        self._reserved = 0

    def _drop_file(self) -> None:
        """Close the staging file and remove it unless it was published."""
        if self._behind is not None:
            self._behind.discard()  # the helper thread must be done with the descriptor
            self._behind = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._path is not None:  # None after move_to linked it into place
            try:
                os.unlink(self._path)
            except FileNotFoundError:
                pass
        self._path = None
        if self._disk_bytes and self._on_disk is not None:
            self._on_disk(-self._disk_bytes)
        self._disk_bytes = 0

    def close(self) -> None:
        """Release RAM, budget and the staging file; idempotent."""
        if not self.closed:
            if self._ram is not None:
                self._ram.close()
                self._ram = None
            self._release_budget()
            self._drop_file()
        super().close()

    def _check_open(self) -> None:
        if self.closed:
            raise ValueError("I/O operation on closed spool")

    # -- reading ------------------------------------------------------------
    def tell(self) -> int:
        self._check_open()
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self._check_open()
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self._pos, os.SEEK_END: self._size}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence: {whence!r}")
        if base + offset < 0:
            raise ValueError(f"negative seek position {base + offset}")
        self._pos = base + offset
        return self._pos

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        self._check_open()
        view = memoryview(b).cast("B")
        n = max(0, min(len(view), self._size - self._pos))
        if n == 0:
            return 0
        if self._ram is not None:
            self._ram.readinto(self._pos, view[:n])
        else:
            assert self._fd is not None
            if not self._sealed:  # reading a body still being written: see its bytes so far
                self._flush()
            n = os.preadv(self._fd, [view[:n]], self._pos)
        self._pos += n
        return n

    def read(self, size: int | None = -1) -> bytes:
        self._check_open()
        end = self._size if size is None or size < 0 else min(self._size, self._pos + size)
        start, n = self._pos, max(0, end - self._pos)
        if self._ram is not None:
            self._pos += n
            return self._ram.read(start, n)
        assert self._fd is not None
        if not self._sealed:  # reading a body still being written: see its bytes so far
            self._flush()
        # pread allocates the result once; a bytearray filled by readinto and then
        # copied to bytes would cost two blocks of n bytes and a copy per read.
        data = os.pread(self._fd, n, start) if n else b""
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)

    def readline(self, size: int | None = -1) -> bytes:
        """Read up to and including the next b"\\n" (or ``size`` bytes)."""
        self._check_open()
        limit = self._size if size is None or size < 0 else min(self._size, self._pos + size)
        if self._ram is not None:
            nl = self._ram.find(b"\n", self._pos, limit)
            return self.read((limit if nl < 0 else nl + 1) - self._pos)
        parts: list[bytes] = []
        while self._pos < limit:
            chunk = self.read(min(_COPY_CHUNK, limit - self._pos, 8192 << len(parts)))
            nl = chunk.find(b"\n")
            if nl >= 0:
                self._pos -= len(chunk) - nl - 1
                parts.append(chunk[: nl + 1])
                break
            parts.append(chunk)
        return b"".join(parts)

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    # -- publishing -----------------------------------------------------------
    def move_to(self, dest: str | os.PathLike[str]) -> None:
        """Publish the sealed body at ``dest`` without copying when possible.

        Same filesystem: a hard link (the staged inode becomes ``dest``). Other
        filesystems or an in-memory body: written into an unnamed or temporary
        file in ``dest``'s directory, then linked into place, so ``dest`` never
        holds a partial body. The spool stays readable afterwards.

        Args:
            dest: the destination path; must not exist.

        Raises:
            ValueError: the spool is not sealed, or was already moved.
            FileExistsError: ``dest`` exists (it is never overwritten).
            InsufficientStorage: the destination filesystem is full.
        """
        self._check_open()
        if not self._sealed or self._moved_to is not None:
            raise ValueError("move_to needs a sealed spool that was not moved yet")
        target = os.fspath(dest)
        if self._fd is None or not self._try_link(target):  # copy next to target, link the copy
            copy_into_place(target, self._copy_into, open_file=self._open_file, open_named=self._open_named,
                            link=self._link, link_fd=self._link_fd)
        self._moved_to = target

    def staged_path(self) -> str | None:
        """A name for the sealed staging file, for code that moves uploads by path.

        Django's ``FileSystemStorage`` renames ``temporary_file_path()`` into place, and
        an unnamed (``O_TMPFILE``) file has none: it is linked here under a PID name in
        the staging directory first, which goes on ``close()`` unless renamed away (and
        after a SIGKILL, with the master's ``remove_stale_files``). Once renamed away,
        ``move_to`` is no longer possible.

        Returns:
            The path; None when the body is in RAM, was moved with ``move_to``, or
            cannot be named (the link failed with EXDEV: read the body instead).
        """
        self._check_open()
        if not self._sealed or self._fd is None or self._moved_to is not None:
            return None
        if self._path is None:
            name = os.path.join(self._dir, staging_name())
            try:
                self._link_fd(self._fd, name)
            except OSError as exc:
                if exc.errno == errno.EXDEV:
                    return None
                raise
            self._path = name
        return self._path

    def _try_link(self, dest: str) -> bool:
        """Link the staging file at ``dest``; False when it is on another filesystem."""
        assert self._fd is not None
        try:
            if self._path is None:
                self._link_fd(self._fd, dest)
            else:
                self._link(self._path, dest)
                os.unlink(self._path)
                self._path = None  # the inode now belongs to dest
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                return False
            raise
        return True

    def _copy_into(self, fd: int) -> None:
        for chunk in self._chunks():
            self._write_to_file(fd, chunk)
