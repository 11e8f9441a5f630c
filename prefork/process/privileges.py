"""The service user: ``[server] user`` / ``group``, and who owns what the server creates.

Strategy: gunicorn's and nginx's model. The master keeps the rights it was
started with (root, for a system service): it binds privileged ports, writes
the pidfile and opens the log files, reopens them on USR1 and HUP, and removes
the pidfile and unix socket files at exit — all in directories only root may
write. What the workers must write is given to the service user first (log
files, unix sockets, the staging and uploads directories), and each worker
switches to that user and group for good (the saved ids go too) right after
it is forked, before it loads the application. The master never runs
application code and never parses a request.
"""

from __future__ import annotations

import errno
import grp
import os
import pwd
from collections.abc import Iterable


def resolve(user: str, group: str) -> tuple[int | None, int | None]:
    """Turn names or numeric ids into (uid, gid); an empty string means "unchanged".

    Raises:
        ValueError: an unknown user or group name.
    """
    uid = gid = None
    if user:
        try:
            entry = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        except KeyError:
            raise ValueError(f"[server] user = {user!r}: no such user") from None
        uid, gid = entry.pw_uid, entry.pw_gid
    if group:
        try:
            gid = int(group) if group.isdigit() else grp.getgrnam(group).gr_gid
        except KeyError:
            raise ValueError(f"[server] group = {group!r}: no such group") from None
    return uid, gid


def service_owner(user: str, group: str) -> tuple[int, int] | None:
    """The (uid, gid) that files the server creates as root should belong to.

    None when not running as root or when no service user or group is configured:
    then files are created by the user that will also reopen them. An id of -1
    means "leave unchanged" (``os.fchown`` semantics).

    Raises:
        ValueError: an unknown user or group name.
    """
    uid, gid = resolve(user, group)
    if os.geteuid() != 0 or (uid is None and gid is None):
        return None
    return (-1 if uid is None else uid, -1 if gid is None else gid)


def socket_owner(owner: str, user: str, group: str) -> tuple[int, int] | None:
    """Who unix socket files belong to: ``[server] socket_owner``, else the service user.

    Args:
        owner: ``user`` or ``user:group`` (empty: ``user`` / ``group``).
        user: ``[server] user``.
        group: ``[server] group``.

    Returns:
        (uid, gid) for ``os.chown`` (-1 = unchanged), or None when nothing is to change.

    Raises:
        ValueError: an unknown name (the message names ``socket_owner``).
    """
    if not owner:
        return service_owner(user, group)
    name, _, owner_group = owner.partition(":")
    try:
        uid, gid = resolve(name, owner_group)
    except ValueError as exc:
        raise ValueError(f"[server] socket_owner = {owner!r}: {str(exc).split(': ', 1)[1]}") from None
    return (-1 if uid is None else uid, -1 if gid is None else gid)


def give_directories(user: str, group: str, directories: Iterable[str]) -> None:
    """Create ``directories`` when missing and give them to the service user (as root).

    Raises:
        ValueError: unknown user/group. OSError: a directory cannot be made or given.
    """
    owner = service_owner(user, group)
    for path in directories:
        if path:
            os.makedirs(path, exist_ok=True)
            if owner is not None:
                _give_directory(path, owner)


def _give_directory(path: str, owner: tuple[int, int]) -> None:
    # Opened without following a symbolic link, then changed through the descriptor:
    # a service user who swapped the directory for a link gets nothing (no TOCTOU).
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise OSError(errno.ELOOP, f"{path} is a symbolic link, not a directory") from None
        raise
    try:
        os.fchown(fd, *owner)
    finally:
        os.close(fd)


def drop_privileges(user: str, group: str, own_dirs: Iterable[str] = ()) -> None:
    """Give ``own_dirs`` to the service user, then become that user and group for good.

    Args:
        user: ``[server] user`` (name or id; empty = keep).
        group: ``[server] group`` (name or id; empty = the user's primary group).
        own_dirs: directories to create and give away first.

    Raises:
        ValueError: unknown user/group. PermissionError: not allowed to switch.
    """
    uid, gid = resolve(user, group)
    if uid is None and gid is None:
        return
    give_directories(user, group, own_dirs)
    if gid is not None:
        os.setgroups([gid] if uid is None else os.getgrouplist(pwd.getpwuid(uid).pw_name, gid))
        os.setresgid(gid, gid, gid)
    if uid is not None:
        os.setresuid(uid, uid, uid)
