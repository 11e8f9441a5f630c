"""``--reload``: restart workers when the application's source changes (development only).

Strategy: gunicorn's polling reloader, stdlib only. Each worker runs one daemon
thread that, once a second, stats the file of every module in ``sys.modules``
(the application's and everything it imported, the standard library included:
a few hundred ``stat`` calls, well under a millisecond each round), plus files
registered with ``watch_file`` (the file of a failed import, which is not in
``sys.modules``). The first round only records modification times; a later
difference means an edit. A changed source file makes the worker drain
gracefully (the master starts its replacement, which imports the code afresh);
a changed configuration file asks the master to re-read it (SIGHUP), which
replaces every worker. Polling rather than inotify keeps it dependency-free
and works on every file system, network mounts and bind mounts included.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable

import psutil

from prefork.config.logs import error_log

__all__ = ["INTERVAL", "Reloader", "set_config_file", "source_files", "start_reloader", "watch_file"]

INTERVAL = 1.0  # seconds between polls; an edit shows within about a second, as in gunicorn

_extra_files: set[str] = set()
# The configuration file, registered by the entry point before it forks: the workers
# inherit this module's state, and the file's path never changes across reloads.
_config_file: list[str] = []


def watch_file(path: str) -> None:
    """Watch ``path`` too (e.g. the file whose import failed)."""
    _extra_files.add(os.path.abspath(path))


def set_config_file(path: str | None) -> None:
    """Name the configuration file; a change to it triggers a configuration reload."""
    _config_file[:] = [os.path.abspath(path)] if path else []


def source_files(modules: Iterable[object] | None = None) -> set[str]:
    """The files to watch: every loaded module's source, the extra files and the config.

    Args:
        modules: module objects (default: ``sys.modules``' values).

    Returns:
        Absolute paths; ``.pyc`` files are mapped to their ``.py`` source.
    """
    files = set(_extra_files) | set(_config_file)
    for module in list(sys.modules.values()) if modules is None else modules:
        path = getattr(module, "__file__", None)
        if isinstance(path, str):
            files.add(os.path.abspath(path[:-1] if path.endswith(".pyc") else path))
    return files


class Reloader(threading.Thread):
    """Polls modification times and reports the first source file that changes.

    Args:
        on_change: called (in this thread) after a source file changed; the
            thread then stops, since the worker is on its way out.
        on_config_change: called (in this thread) after the config file changed.
        interval: seconds between polls.
    """

    def __init__(self, on_change: Callable[[str], None], on_config_change: Callable[[str], None],
                 interval: float = INTERVAL) -> None:
        super().__init__(name="reloader", daemon=True)
        self._on_change = on_change
        self._on_config_change = on_config_change
        self._interval = interval
        self._mtimes: dict[str, int] = {}
        self._stopped = threading.Event()

    def poll(self) -> list[str]:
        """One round: the watched files whose modification time changed since the last round.

        A file seen for the first time is only recorded. A file that cannot be
        stat'ed (deleted for a moment by an editor's save) is skipped and
        compared again once it is back.
        """
        changed = []
        for path in sorted(source_files()):
            try:
                mtime = os.stat(path).st_mtime_ns
            except OSError:
                continue
            old = self._mtimes.get(path)
            self._mtimes[path] = mtime
            if old is not None and old != mtime:  # != not >: a restored backup is older
                changed.append(path)
        return changed

    def run(self) -> None:
        """Poll until a source file changes (or ``stop`` is called)."""
        self.poll()
        # From here on an edit is seen (one before this first round is the baseline).
        error_log.debug("worker %d: --reload is watching %d files", os.getpid(), len(self._mtimes))
        while not self._stopped.wait(self._interval):
            for path in self.poll():
                if path in _config_file:
                    self._on_config_change(path)
                else:
                    self._on_change(path)
                    return

    def stop(self) -> None:
        """End the thread at its next poll."""
        self._stopped.set()


def _ask_master_to_reload(path: str) -> None:
    """SIGHUP the master, from one worker only: N signals would start N reloads.

    Every worker sees the change within the same second; the one with the lowest
    process id among the master's children sends the signal.
    """
    master = os.getppid()
    try:
        siblings = [child.pid for child in psutil.Process(master).children()]
    except psutil.Error:
        return
    if os.getpid() == min(siblings, default=os.getpid()):
        error_log.info("worker %d: %s changed; asking master %d to reload it", os.getpid(), path, master)
        os.kill(master, signal.SIGHUP)


def start_reloader(drain: Callable[[], None]) -> Reloader:
    """Start watching in this worker; ``drain`` must be safe to call from another thread.

    Args:
        drain: starts the worker's graceful stop (e.g. deferred to its loop).

    Returns:
        The running thread.
    """
    def changed(path: str) -> None:
        error_log.info("worker %d: %s changed; restarting", os.getpid(), path)
        drain()

    reloader = Reloader(changed, _ask_master_to_reload)
    reloader.start()
    return reloader
