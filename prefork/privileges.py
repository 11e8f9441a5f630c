"""Dropping root after binding: ``[server] user`` / ``group``.

Strategy: the master binds privileged ports as root, then makes the staging
and uploads directories its own and switches user and group for good (the
saved ids go too), before any worker is forked. Everything after that —
workers, staging files, uploads — runs and is owned as the service user.
"""

from __future__ import annotations

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


def drop_privileges(user: str, group: str, own_dirs: Iterable[str]) -> None:
    """Give ``own_dirs`` to the service user, then become that user and group.

    Args:
        user: ``[server] user`` (name or id; empty = keep).
        group: ``[server] group`` (name or id; empty = the user's primary group).
        own_dirs: directories the workers must write (created when missing).

    Raises:
        ValueError: unknown user/group. PermissionError: not allowed to switch.
    """
    uid, gid = resolve(user, group)
    if uid is None and gid is None:
        return
    for path in own_dirs:
        if path:
            os.makedirs(path, exist_ok=True)
            os.chown(path, -1 if uid is None else uid, -1 if gid is None else gid)
    if gid is not None:
        os.setgroups([gid] if uid is None else os.getgrouplist(pwd.getpwuid(uid).pw_name, gid))
        os.setresgid(gid, gid, gid)
    if uid is not None:
        os.setresuid(uid, uid, uid)
