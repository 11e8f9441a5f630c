"""Staging files: opening them unnamed or by PID, linking them into place, copying them there.

Strategy: a staging file must not outlive a SIGKILLed worker (DESIGN §3), so
``open_staging_file`` opens it unnamed with ``O_TMPFILE``; where the kernel or
filesystem does not support that (``_NO_TMPFILE``) it falls back to
``open_named``, a ``prefork-<pid>-<hex>.part`` name that the master removes with
``remove_stale_files(dir, pid)``. Both are created ``O_EXCL``, mode 0600,
close-on-exec. ``link_fd`` publishes an unnamed inode: ``linkat`` through
``/proc/self/fd`` first, then ``linkat(AT_EMPTY_PATH)`` through libc, because
the first fails with EXDEV on some kernels and sandboxes; a destination that
exists is ``FileExistsError`` (never overwritten) and any other failure is
reported as EXDEV, so that the caller copies instead. ``copy_into_place``
is that copy: into an unnamed file in the destination directory, linked into
place, or, when that link fails too, into a named one that is linked and then
unlinked, so the destination never holds a partial file and is never
overwritten; a full disk there is 507. Nothing here knows about spools:
``BodySpool`` passes its seams (open, link, write) in, so tests can inject faults.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
from collections.abc import Callable

from prefork.protocol.errors import InsufficientStorage
from prefork.staging.diskspace import staging_name

__all__ = ["DISK_FULL", "copy_into_place", "link_empty_path", "link_fd", "open_named", "open_staging_file",
           "unlink_if_present", "write_all"]

#: errno values that mean "the disk is full" -> 507 (DESIGN §6).
DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})

#: errno values from open(O_TMPFILE) meaning "not supported here": EISDIR on
#: kernels that predate O_TMPFILE (it includes O_DIRECTORY), EOPNOTSUPP on
#: filesystems without ->tmpfile, EINVAL on some FUSE mounts.
_NO_TMPFILE = frozenset({errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL})
_AT_FDCWD = -100
_AT_EMPTY_PATH = 0x1000


def unlink_if_present(path: str) -> None:
    """Remove ``path``; one that is already gone is not an error."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    """Write all of ``data`` to ``fd``, however short each ``os.write`` is."""
    view = memoryview(data).cast("B")
    while view:
        view = view[os.write(fd, view):]


def open_staging_file(dir: str) -> tuple[int, str | None]:
    """Open a staging file in ``dir``: unnamed (path None) if possible, else by PID."""
    try:
        return os.open(dir, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600), None
    except OSError as exc:
        if exc.errno not in _NO_TMPFILE:
            raise
    return open_named(dir)


def open_named(dir: str) -> tuple[int, str | None]:
    """Create a new staging file in ``dir`` named after this worker's PID."""
    path = os.path.join(dir, staging_name())
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600), path


def link_empty_path(fd: int, dest: str) -> None:
    """linkat(fd, "", AT_FDCWD, dest, AT_EMPTY_PATH) through libc.

    Needed because linkat through /proc/self/fd fails with EXDEV on some
    kernels and sandboxes (observed on our CI VMs).
    """
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    if libc.linkat(fd, b"", _AT_FDCWD, os.fsencode(dest), _AT_EMPTY_PATH) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), dest)


def link_fd(fd: int, dest: str) -> None:
    """Give an unnamed (O_TMPFILE) inode the name ``dest``.

    Raises:
        FileExistsError: ``dest`` exists.
        OSError: EXDEV when the inode cannot be linked there (copy instead).
    """
    try:
        os.link(f"/proc/self/fd/{fd}", dest, follow_symlinks=True)
        return
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise
    try:
        link_empty_path(fd, dest)
    except OSError as exc:
        if exc.errno == errno.EEXIST:
            raise FileExistsError(errno.EEXIST, "File exists", dest) from None
        # ENOENT/EPERM: AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; treat as
        # "cannot link" so the caller copies.
        raise OSError(errno.EXDEV, f"cannot link unnamed file: {exc.strerror}", dest) from exc


OpenFile = Callable[[str], "tuple[int, str | None]"]


def copy_into_place(
    dest: str,
    fill: Callable[[int], None],
    *,
    open_file: OpenFile = open_staging_file,
    open_named: OpenFile = open_named,
    link: Callable[[str, str], None] = os.link,
    link_fd: Callable[[int, str], None] = link_fd,
) -> None:
    """Have ``fill(fd)`` write a file next to ``dest``, then link that file into place.

    Raises:
        FileExistsError: ``dest`` exists (it is never overwritten).
        InsufficientStorage: the destination filesystem is full.
    """
    directory = os.path.dirname(os.path.abspath(dest))
    try:
        if not _copy_and_link(dest, fill, open_file(directory), link, link_fd):
            # The unnamed copy could not be linked: repeat with a named file.
            _copy_and_link(dest, fill, open_named(directory), link, link_fd)
    except OSError as exc:
        if exc.errno in DISK_FULL:
            raise InsufficientStorage(f"disk full while saving to {dest!r}: {exc.strerror}") from exc
        raise


def _copy_and_link(dest: str, fill: Callable[[int], None], opened: tuple[int, str | None],
                   link: Callable[[str, str], None], link_fd: Callable[[int, str], None]) -> bool:
    """Fill the opened file and link it at ``dest``; False when an unnamed one cannot be linked."""
    fd, tmp = opened
    try:
        fill(fd)
        if tmp is not None:
            link(tmp, dest)
            return True
        try:
            link_fd(fd, dest)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                return False
            raise
        return True
    finally:
        os.close(fd)
        if tmp is not None:
            os.unlink(tmp)
