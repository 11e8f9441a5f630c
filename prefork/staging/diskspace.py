"""The staging disk: ``[staging] min_free_disk``, what a failed write means, staging file names.

Strategy: a body that would leave less than ``min_free_disk`` free in the
staging directory is refused with 507 before any of it is read, and the answer
and its log line say which directory, how much is free and which setting
decided it, so that a small disk is never a mystery. A body whose length is not
declared (chunked), and every file part of a form, cannot be judged up front:
``FreeSpaceGuard`` checks as it grows on disk (when it first goes there, then
every ``CHECK_STEP`` bytes) and refuses it with the same 507 once it would leave
less than ``min_free_disk``. A write that fails while staging becomes 507 when
the disk is full and 500 otherwise. Named staging files carry the worker's PID,
so that the master can remove what a dead worker left (``remove_stale_files``).
"""

from __future__ import annotations

import errno
import os
import secrets
import tempfile

from prefork.protocol.errors import InsufficientStorage, ProtocolError


def free_bytes(directory: str | None) -> int:
    """Bytes an unprivileged process may still write in ``directory`` (default: the temp dir)."""
    stats = os.statvfs(directory or tempfile.gettempdir())
    return stats.f_bavail * stats.f_frsize


def check_free_disk(directory: str | None, declared: int, min_free_disk: int) -> None:
    """Refuse a body of ``declared`` bytes that would leave less than ``min_free_disk`` free.

    Raises:
        InsufficientStorage: 507, with the directory, the free space and the setting named.
    """
    free = free_bytes(directory)
    if free - declared < min_free_disk:
        raise InsufficientStorage(
            f"not enough disk space to stage a {declared}-byte body in {directory or tempfile.gettempdir()}: "
            f"{free} bytes free, and [staging] min_free_disk = {min_free_disk} bytes must stay free")


#: A body growing on disk has the free space under it checked when it first goes
#: to disk, then each time it has grown by another CHECK_STEP bytes: one statvfs
#: (about 2 microseconds) per MiB is nothing next to receiving the MiB, and a body
#: overshoots ``min_free_disk`` by at most this much.
CHECK_STEP = 1 << 20


class FreeSpaceGuard:
    """Keeps ``min_free_disk`` free under a staged body that grows by unknown amounts.

    Args:
        directory: the staging directory.
        min_free_disk: bytes that must stay free there.
        step: bytes of growth between two checks.
    """

    def __init__(self, directory: str, min_free_disk: int, step: int = CHECK_STEP) -> None:
        self._directory = directory
        self._min_free = min_free_disk
        self._step = step
        self._next = 0

    def check(self, staged: int, n: int) -> None:
        """Called before ``n`` more bytes join the ``staged`` bytes of the body on disk.

        Raises:
            InsufficientStorage: 507, when writing them would leave less than ``min_free_disk`` free.
        """
        if staged + n < self._next:
            return
        self._next = staged + n + self._step
        free = free_bytes(self._directory)
        if free - n < self._min_free:
            raise InsufficientStorage(
                f"not enough disk space to keep staging a body in {self._directory}: {free} bytes free "
                f"with {staged} bytes staged, and [staging] min_free_disk = {self._min_free} bytes must stay free")


def staging_name(pid: int | None = None) -> str:
    """A fresh name for a named staging file of worker ``pid`` (default: this process)."""
    return f"prefork-{os.getpid() if pid is None else pid}-{secrets.token_hex(8)}.part"


def remove_stale_files(dir: str | os.PathLike[str], pid: int) -> int:
    """Remove the named staging files a dead worker left behind.

    Only the fallback (named) files can survive a SIGKILL; O_TMPFILE files
    vanish with the last descriptor. The master calls this before respawning.

    Args:
        dir: the staging directory.
        pid: the PID of the worker that died.

    Returns:
        The number of files removed.
    """
    prefix, removed = f"prefork-{pid}-", 0
    try:
        entries = list(os.scandir(dir))
    except OSError:  # the directory is gone or unreadable: nothing of ours to remove there
        return 0
    for entry in entries:
        if entry.name.startswith(prefix) and entry.name.endswith(".part"):
            try:
                os.unlink(entry.path)
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def storage_error(exc: OSError) -> ProtocolError:
    """The answer to a failure while staging a body: 507 when the disk is full, else 500."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage(f"no space left to stage the request body: {exc.strerror}")
    return ProtocolError(f"the request body could not be staged: {exc.strerror or exc}", 500)
