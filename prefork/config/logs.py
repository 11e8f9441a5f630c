"""Logging set-up: an error log and an access log, each to a file or stderr.

Strategy: two stdlib loggers, ``prefork.error`` and ``prefork.access``, with
handlers that can reopen their files on SIGUSR1 (logrotate's ``copytruncate``
is not needed). The access line is Apache's combined format plus the request
duration in microseconds, built with one f-string per request.

Access lines do not go through ``logging`` one by one: a LogRecord, a handler
lock and a write(2) per request cost as much as serving a small request (8.8k
req/s with the log on, 16.6k off, in issue 14's measurement). They are kept in
this process's ``_pending`` list and written by ``flush_access_log`` with one
write per handler: the worker calls it after every turn of its loop, and
before a stop, a recycle, a reopen (USR1) or new handlers, so a crash loses
at most the lines of the turn it crashed in. ``MAX_PENDING_ACCESS`` bounds the
list within a turn.
"""

from __future__ import annotations

import errno
import faulthandler
import io
import logging
import os
import stat
import sys
import time
from typing import IO

from prefork.protocol.errors import ConfigError

error_log = logging.getLogger("prefork.error")
access_log = logging.getLogger("prefork.access")

#: Characters of access lines held before they are written even mid-turn.
MAX_PENDING_ACCESS = 64 * 1024

_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
           "error": logging.ERROR, "critical": logging.CRITICAL}


class ReopenableFileHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A file handler whose file can be reopened (after log rotation) on demand.

    Args:
        path: the log file, opened for appending (created when missing).
        owner: (uid, gid) to give a file to, so that a process running as the service
            user can reopen it after root opened it; None leaves ownership alone.

    Raises:
        OSError: the file cannot be opened.
    """

    def __init__(self, path: str, owner: tuple[int, int] | None = None) -> None:
        self.path = path
        self.owner = owner
        super().__init__(self._open())

    def _open(self) -> IO[str]:
        # The master may be root while the log directory belongs to the service user:
        # never follow a symbolic link there (O_NOFOLLOW), never write anything but a
        # regular file, and never give away a file with other names (a hard link).
        # Otherwise whoever runs the app could point a log path at /etc/shadow and
        # have the next rotation hand it over (nginx's CVE-2016-1247).
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(self.path, flags, 0o666)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise OSError(errno.ELOOP, "it is a symbolic link (log files are opened only as "
                                           "regular files)") from None
            raise
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise OSError(errno.EINVAL, "it is not a regular file")
            if self.owner is not None and os.geteuid() == 0 and info.st_nlink == 1:
                os.fchown(fd, *self.owner)
            return open(fd, "a", encoding="utf-8", buffering=1, closefd=True)
        except BaseException:
            os.close(fd)
            raise

    def reopen(self) -> None:
        """Open the file at the same path again and switch to it.

        Raises:
            OSError: the new file cannot be opened; the old one stays in use.
        """
        stream = self._open()
        self.acquire()
        try:
            old, self.stream = self.stream, stream
        finally:
            self.release()
        old.close()


def _handler(target: str, fmt: str, key: str, owner: tuple[int, int] | None) -> logging.Handler:
    handler: logging.Handler
    if target == "-":
        handler = logging.StreamHandler(sys.stderr)
    else:
        try:
            handler = ReopenableFileHandler(target, owner)
        except OSError as exc:
            raise ConfigError(f"[logging] {key} = {target!r}: cannot open the file for appending: "
                              f"{exc.strerror or exc}") from None
    handler.setFormatter(logging.Formatter(fmt, "%Y-%m-%d %H:%M:%S %z"))
    return handler


def setup_logging(error_target: str, access_target: str, level: str,
                  owner: tuple[int, int] | None = None) -> None:
    """Configure both loggers, replacing any handlers set before.

    Every file is opened before anything is replaced, so a failure leaves the
    logging as it was (a reload with a bad log path keeps the running logs).

    Args:
        error_target: a file path, or ``-`` for stderr.
        access_target: a file path, ``-`` for stderr, or empty for no access log.
        level: debug, info, warning, error or critical.
        owner: (uid, gid) that new log files are given to (the service user), or None.

    Raises:
        ConfigError: a log file cannot be opened; the message names the key and the reason.
    """
    error_handler = _handler(error_target, "[%(asctime)s] [%(process)d] [%(levelname)s] %(message)s",
                             "error_log", owner)
    try:
        access_handler = _handler(access_target, "%(message)s", "access_log", owner) if access_target else None
    except ConfigError:
        error_handler.close()
        raise
    flush_access_log()  # lines logged so far go where they were meant to
    for logger in (error_log, access_log):
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
            handler.close()
        logger.propagate = False
    error_log.addHandler(error_handler)
    error_log.setLevel(_LEVELS[level])
    if access_handler is not None:
        access_log.addHandler(access_handler)
        access_log.setLevel(logging.INFO)
    else:
        access_log.setLevel(logging.CRITICAL + 1)


def reopen_logs() -> None:
    """Reopen every log file (SIGUSR1, after rotation).

    A file that cannot be reopened (its directory is gone, or it now belongs to
    someone else) is not fatal: its handler keeps writing to the file it had, and
    the reason goes to the error log.
    """
    flush_access_log()  # into the file being rotated away, where their neighbours are
    for logger in (error_log, access_log):
        for handler in logger.handlers:
            if isinstance(handler, ReopenableFileHandler):
                try:
                    handler.reopen()
                except OSError as exc:
                    error_log.error("cannot reopen log file %s: %s; still writing to the file open before",
                                    handler.path, exc.strerror or exc)
    if faulthandler.is_enabled():
        dump_stacks_to_error_log()


def _error_log_stream() -> IO[str] | None:
    for handler in error_log.handlers:
        if isinstance(handler, logging.StreamHandler):
            stream: IO[str] = handler.stream
            return stream
    return None


def dump_stacks_to_error_log() -> None:
    """Have a fatal signal (SIGABRT from the master) write every thread's stack to the error log.

    faulthandler writes to a file descriptor, so ``reopen_logs`` points it at the
    new file after a rotation (the old descriptor is closed then).
    """
    stream = _error_log_stream()
    if stream is None:
        return
    try:
        faulthandler.enable(file=stream, all_threads=True)
    except (OSError, ValueError, io.UnsupportedOperation) as exc:
        error_log.warning("no stack dumps on fatal signals: %s", exc)


_clf_cache: list[object] = [0, ""]


def _clf_time(now: float) -> str:
    second = int(now)
    if _clf_cache[0] != second:
        _clf_cache[0] = second
        _clf_cache[1] = time.strftime("%d/%b/%Y:%H:%M:%S %z", time.localtime(second))
    return str(_clf_cache[1])


def access_log_enabled() -> bool:
    """Whether access lines are written (lets callers skip building them)."""
    return access_log.isEnabledFor(logging.INFO)


def log_access(peer: str, request_line: str, status: int, size: int, referer: str,
               user_agent: str, duration: float) -> None:
    """Write one access line: Apache combined format plus duration in microseconds.

    Args:
        peer: the client address.
        request_line: method, target and version as received (latin-1 decoded).
        status: the response status.
        size: response body bytes sent.
        referer: the Referer header or "".
        user_agent: the User-Agent header or "".
        duration: seconds from request head to response end.
    """
    if not access_log.isEnabledFor(logging.INFO):
        return
    global _pending_chars
    line = (f'{peer} - - [{_clf_time(time.time())}] "{_escape(request_line)}" {status} {size or "-"} '
            f'"{_escape(referer) or "-"}" "{_escape(user_agent) or "-"}" {int(duration * 1e6)}\n')
    _pending.append(line)
    _pending_chars += len(line)
    if _pending_chars >= MAX_PENDING_ACCESS:
        flush_access_log()


_pending: list[str] = []  # access lines not yet written (see the module's docstring)
_pending_chars = 0
_write_failed = False  # the last flush could not write: said once, until a flush succeeds


def flush_access_log() -> None:
    """Write the pending access lines, one write per access handler.

    A failed write (disk full, a closed stderr) drops those lines and is
    reported to the error log once, not once per turn, until writing works again.
    """
    global _pending_chars, _write_failed
    if not _pending:
        return
    count = len(_pending)  # a line appended while this joins is kept for the next flush
    text = "".join(_pending[:count])
    del _pending[:count]
    _pending_chars = sum(map(len, _pending))
    for handler in access_log.handlers:
        if not isinstance(handler, logging.StreamHandler):
            continue
        handler.acquire()
        try:
            handler.stream.write(text)
            handler.stream.flush()
        except (OSError, ValueError) as exc:  # ValueError: the stream was closed
            if not _write_failed:
                error_log.error("cannot write the access log: %s; its lines are dropped until it can", exc)
            _write_failed = True
        else:
            _write_failed = False
        finally:
            handler.release()


def _escape(text: str) -> str:
    # Quotes and control bytes from the client must not forge log fields.
    if text.isprintable() and '"' not in text and "\\" not in text:
        return text
    return text.encode("unicode_escape").decode("ascii").replace('"', '\\"')
