"""systemd integration: sd_notify messages and socket activation. Stdlib only.

Strategy: both protocols are tiny and stable (sd_notify(3), sd_listen_fds(3)),
so they are spoken directly rather than through libsystemd.
"""

from __future__ import annotations

import os
import socket

SD_LISTEN_FDS_START = 3


def notify(message: str, *, environ: dict[str, str] | None = None) -> bool:
    """Send one sd_notify datagram (``READY=1``, ``STATUS=...``) if NOTIFY_SOCKET is set.

    Args:
        message: newline-separated assignments.
        environ: the environment to read NOTIFY_SOCKET from (default os.environ).

    Returns:
        True when a message was sent, False when not running under systemd.
    """
    env = os.environ if environ is None else environ
    address = env.get("NOTIFY_SOCKET", "")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace socket
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        try:
            sock.sendto(message.encode(), address)
        except OSError:
            return False
    return True


def listen_fds(*, unset: bool = True) -> list[socket.socket]:
    """Adopt sockets passed by systemd socket activation (LISTEN_FDS/LISTEN_PID).

    Args:
        unset: remove the variables so that children do not adopt them again.

    Returns:
        The inherited listening sockets, non-blocking; empty when not socket-activated.
    """
    try:
        pid = int(os.environ.get("LISTEN_PID", ""))
        count = int(os.environ.get("LISTEN_FDS", ""))
    except ValueError:
        return []
    if pid != os.getpid() or count <= 0:
        return []
    if unset:
        for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):
            os.environ.pop(name, None)
    sockets = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + count):
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        sock.set_inheritable(True)
        sockets.append(sock)
    return sockets


def watchdog_interval(environ: dict[str, str] | None = None) -> float:
    """Seconds between WATCHDOG=1 pings: half of WATCHDOG_USEC, or 0 when not asked for.

    Args:
        environ: the environment (default os.environ).
    """
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return 0.0
    pid = env.get("WATCHDOG_PID", "")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return 0.0
    return usec / 2e6
