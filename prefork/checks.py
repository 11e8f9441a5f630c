"""``--check-config``: find what start-up would refuse, without starting anything.

Strategy: ``load_config`` has already validated every value by itself; this
module checks what needs the system: that ``[server] user`` and ``group``
exist, that the log files and the pidfile can be written, and that the
application imports. Files are checked with ``os.access`` as the user running
the check, which is the user the master runs as (it keeps root's rights and
gives the log files to the service user): the kernel's answer takes ACLs,
read-only mounts and every directory on the way into account, which reading
permission bits from ``os.stat`` would miss. The app is imported by a forked
child that first becomes the service user, exactly as a worker does after it
is forked (``drop_privileges``), from the same working directory and
``sys.path`` (``--chdir``, ``--pythonpath``). Exit codes: 0 fine, 2 bad configuration, 3 the application
cannot be imported. Every problem is reported, not only the first.
"""

from __future__ import annotations

import os
import stat
import sys
import traceback

from prefork.config.config import Config
from prefork.process.exit_codes import EXIT_BOOT, EXIT_CONFIG
from prefork.apps.loader import load_application
from prefork.process.privileges import drop_privileges, resolve
from prefork.process.tls_context import build_server_context, certificate_warnings
from prefork.protocol.errors import ConfigError
from prefork.apps.runtime import Runtime
from prefork.worker.broadcast_wiring import redis_problem

__all__ = ["check_config", "unwritable"]


def _report(message: str) -> None:
    print(f"prefork-serve: {message}", file=sys.stderr)


def check_config(cfg: Config) -> int:
    """Check what start-up needs of the system; print each problem to stderr.

    Args:
        cfg: the loaded (already validated) configuration.

    Returns:
        0, EXIT_CONFIG (a problem with the configuration) or EXIT_BOOT (only the
        application failed to import).
    """
    accounts = account_problems(cfg)
    files = file_problems(cfg) + tls_problems(cfg) + broadcast_problems(cfg)
    for problem in accounts + files:
        _report(problem)
    if accounts:
        return EXIT_CONFIG  # the import cannot be tried as a user that does not exist
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the child becomes the service user; the parent keeps its rights
        code = 1
        try:
            code = _check_as_service_user(cfg)
        except BaseException as exc:
            _report(f"internal error while checking: {exc!r}")
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return EXIT_CONFIG if files else os.waitstatus_to_exitcode(status)


def account_problems(cfg: Config) -> list[str]:
    """Unknown ``[server] user`` / ``group`` names, one message each."""
    problems = []
    for user, group in ((cfg.server.user, ""), ("", cfg.server.group)):
        try:
            resolve(user, group)
        except ValueError as exc:
            problems.append(str(exc))
    return problems


def _check_as_service_user(cfg: Config) -> int:
    user, group = cfg.server.user, cfg.server.group
    try:
        drop_privileges(user, group, [])  # no directories: a check changes nothing
    except OSError as exc:
        key = "user" if user else "group"
        _report(f"[server] {key} = {user or group!r}: cannot switch to it: {exc.strerror} "
                "(start as root, or leave user and group empty)")
        return EXIT_CONFIG
    return 0 if _imports(cfg) else EXIT_BOOT


def tls_problems(cfg: Config) -> list[str]:
    """Certificates and keys the master could not load (read as the user running the check, as the master does)."""
    if not cfg.tls.certfile:
        return []
    try:
        build_server_context(cfg.tls, cfg.source)
    except ConfigError as exc:
        return [str(exc)]
    for message in certificate_warnings(cfg.tls):
        print(f"prefork-serve: warning: {message}", file=sys.stderr)
    return []


def broadcast_problems(cfg: Config) -> list[str]:
    """``broadcast = redis`` without the redis client, or with an unreadable password file."""
    problem = redis_problem(cfg)
    return [f"{cfg.source or 'command line'}: {problem}"] if problem else []


def file_problems(cfg: Config) -> list[str]:
    """Log files and the pidfile that the master could not write, one message each.

    The master opens and reopens them as the user it runs as (it keeps root's
    rights, and gives the log files to the service user), so they are checked
    as the user running this check.
    """
    who = "root" if os.geteuid() == 0 else f"uid {os.geteuid()}"
    problems = []
    for section, key, path in _written_files(cfg):
        reason = unwritable(path)
        if reason is not None:
            problems.append(f"[{section}] {key} = {path!r}: {who} cannot write it: {reason}")
    return problems


def _written_files(cfg: Config) -> list[tuple[str, str, str]]:
    """(section, key, path) of every file the server writes by name."""
    found = []
    for key in ("error_log", "access_log"):
        path = getattr(cfg.logging, key)
        if path not in ("", "-"):
            found.append(("logging", key, path))
    if cfg.server.pidfile:
        found.append(("server", "pidfile", cfg.server.pidfile))
    return found


def unwritable(path: str) -> str | None:
    """Why this process could not open ``path`` for appending (creating it), or None.

    Args:
        path: a file path (relative to the working directory).

    Returns:
        A short reason, e.g. "directory /var/log/app does not exist", or None.
    """
    path = os.path.abspath(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return _uncreatable(path)
    except PermissionError:
        return "cannot be reached: a directory on its path is not searchable"
    except NotADirectoryError:
        return "cannot be reached: a part of its path is a file, not a directory"
    except OSError as exc:
        return f"cannot be checked: {exc.strerror}"
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    if not os.access(path, os.W_OK):
        return "exists but is not writable"
    return None


def _uncreatable(path: str) -> str | None:
    parent = os.path.dirname(path)
    try:
        mode = os.stat(parent).st_mode
    except FileNotFoundError:
        return f"directory {parent} does not exist"
    except PermissionError:
        return f"directory {parent} cannot be reached: a directory above it is not searchable"
    except OSError as exc:
        return f"directory {parent} cannot be checked: {exc.strerror}"
    if not stat.S_ISDIR(mode):
        return f"{parent} is not a directory"
    if not os.access(parent, os.W_OK | os.X_OK):
        return f"cannot be created: directory {parent} is not writable"
    return None


def _imports(cfg: Config) -> bool:
    """Import the application as a worker would; report the error if it fails."""
    facts = Runtime(uploads_dir=cfg.uploads.dir, staging_dir=cfg.staging.dir, workers=cfg.server.workers)
    try:
        load_application(cfg.server.app, threads=cfg.server.threads, runtime=facts)
    except BaseException as exc:  # SystemExit from the module too: a worker would not boot
        _report(f"cannot load the application {cfg.server.app or '(demo)'!r}: {exc}")
        sys.stderr.write(_app_traceback(exc))
        return False
    return True


def _app_traceback(exc: BaseException) -> str:
    """The traceback from the application's own frames (not prefork's or importlib's)."""
    report = traceback.TracebackException.from_exception(exc)
    ours = os.path.dirname(os.path.abspath(__file__)) + os.sep
    frames = [frame for frame in report.stack
              if not frame.filename.startswith((ours, "<frozen")) and "importlib" not in frame.filename]
    lines = traceback.StackSummary.from_list(frames).format() if frames else []
    head = ["Traceback (most recent call last):\n"] if lines else []
    return "".join(head + lines + list(report.format_exception_only()))
