"""The master's signals: a self-pipe, and the dispatch of each signal to its ``handle_<name>``.

Strategy: the handlers installed do nothing; ``signal.set_wakeup_fd`` writes
each signal's number into a non-blocking pipe, which the master's loop
selects on with its other descriptors. When the pipe is readable,
``dispatch`` reads the numbers and calls the target's ``handle_<name>()``
(``handle_hup`` for SIGHUP, ...) for each, in order; a handler that raises is
logged and the master keeps running. A forked worker calls ``close_in_child``
first: the pipe closed and the default dispositions back.
"""

from __future__ import annotations

import os
import signal

from prefork.config.logs import error_log

#: The signals the master handles, without their ``SIG`` prefix.
HANDLED = ("HUP", "TERM", "INT", "QUIT", "TTIN", "TTOU", "USR1", "CHLD")


class SignalPipe:
    """Installs the master's signal handlers and turns received signals into calls.

    Attributes:
        fd: the pipe's read end, to select on.
    """

    def __init__(self) -> None:
        self.fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for name in HANDLED:
            signal.signal(getattr(signal, "SIG" + name), lambda *_: None)

    def dispatch(self, target: object) -> None:
        """Call ``target.handle_<name>()`` for each signal received since the last call."""
        try:
            data = os.read(self.fd, 256)
        except BlockingIOError:
            return
        for signum in data:
            name = signal.Signals(signum).name[3:]
            handler = getattr(target, "handle_" + name.lower(), None)
            if handler is None:
                continue
            try:
                handler()
            except Exception as exc:  # a signal must never take the master (and the port) down
                error_log.error("handling SIG%s failed, the master keeps running: %s", name, exc, exc_info=exc)

    def close_in_child(self) -> None:
        """In a forked worker: stop the wakeup writes, close the pipe, restore the default handlers."""
        signal.set_wakeup_fd(-1)
        os.close(self.fd)
        os.close(self._write_fd)
        for name in HANDLED:
            signal.signal(getattr(signal, "SIG" + name), signal.SIG_DFL)
