"""Disk space for staged bodies: ``[staging] min_free_disk``, and what a failed write means.

Strategy: a body that would leave less than ``min_free_disk`` free in the
staging directory is refused with 507 before any of it is read, and the answer
and its log line say which directory, how much is free and which setting
decided it, so that a small disk is never a mystery. A write that fails while
staging becomes 507 when the disk is full and 500 otherwise.
"""

from __future__ import annotations

import errno
import os
import tempfile

from prefork.errors import InsufficientStorage, ProtocolError


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


def storage_error(exc: OSError) -> ProtocolError:
    """The answer to a failure while staging a body: 507 when the disk is full, else 500."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return InsufficientStorage(f"no space left to stage the request body: {exc.strerror}")
    return ProtocolError(f"the request body could not be staged: {exc.strerror or exc}", 500)
