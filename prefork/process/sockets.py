"""Listening sockets: parse bind addresses, bind them, adopt systemd's.

Strategy: the master binds every address before it forks, so a taken port
fails start-up once, clearly, instead of in every worker. Workers inherit the
sockets and only ever accept on them. Stdlib only.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from prefork.config.config import Config


@dataclass(frozen=True, slots=True)
class BindAddress:
    """One parsed bind address.

    Attributes:
        family: socket.AF_INET, AF_INET6 or AF_UNIX.
        address: the sockaddr to bind: (host, port) or a filesystem path.
        text: the address as the user wrote it, for messages.
        scheme: ``"http"`` or ``"https"`` when the entry started with one, else None.
    """

    family: int
    address: tuple[str, int] | str
    text: str
    scheme: str | None = None


class BindError(OSError):
    """A listening socket could not be created; the message says which and why."""


def parse_bind(text: str) -> BindAddress:
    """Parse ``host:port``, ``[v6]:port`` or ``unix:/path``, optionally after ``http://`` or ``https://``.

    Args:
        text: the address as written in the config or on the command line.

    Returns:
        The parsed address.

    Raises:
        ValueError: the text is not one of the accepted forms.
    """
    scheme, sep, rest = text.partition("://")
    if sep:
        bare = parse_bind(rest)
        return BindAddress(bare.family, bare.address, text, scheme.lower())
    if text.startswith("unix:"):
        path = text[5:]
        if not path:
            raise ValueError(f"bind {text!r}: expected unix:/path")
        return BindAddress(socket.AF_UNIX, path, text)
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"bind {text!r}: expected [ipv6]:port")
        return BindAddress(socket.AF_INET6, (host, _port(text, port)), text)
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"bind {text!r}: expected host:port, [ipv6]:port or unix:/path")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return BindAddress(family, (host, _port(text, port)), text)


def _port(text: str, port: str) -> int:
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"bind {text!r}: port must be 0-65535")
    return int(port)


def bind_listener(addr: BindAddress, backlog: int, *, unix_mode: int = 0o666,
                  unix_owner: tuple[int, int] | None = None) -> socket.socket:
    """Create, bind and listen on one address, non-blocking and inheritable.

    Args:
        addr: the parsed address.
        backlog: the listen() backlog.
        unix_mode: the mode of a unix socket file: connecting needs write permission,
            so the proxy's user must have it (the umask would leave 0755 for root).
        unix_owner: (uid, gid) to give a unix socket file to (-1 = unchanged), or None.

    Returns:
        The listening socket.

    Raises:
        BindError: the address is taken, not allowed, or cannot be resolved.
    """
    try:
        if addr.family == socket.AF_UNIX:
            sock = _bind_unix(str(addr.address))
            try:
                os.chmod(str(addr.address), unix_mode)
                if unix_owner is not None:
                    os.chown(str(addr.address), *unix_owner)
            except OSError:
                sock.close()
                os.unlink(str(addr.address))
                raise
        else:
            sock = _bind_inet(addr)
        sock.listen(backlog)
    except OSError as exc:
        reason = "address already in use" if exc.errno == errno.EADDRINUSE else exc.strerror or str(exc)
        raise BindError(exc.errno or 0, f"cannot listen on {addr.text}: {reason}") from exc
    sock.setblocking(False)
    sock.set_inheritable(True)
    return sock


def _bind_inet(addr: BindAddress) -> socket.socket:
    assert isinstance(addr.address, tuple)
    host, port = addr.address
    infos = socket.getaddrinfo(host, port, addr.family, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
    except OSError:
        sock.close()
        raise
    return sock


def _bind_unix(path: str) -> socket.socket:
    # A stale socket file from a previous run would make bind() fail; remove it only
    # when it really is a socket, never a regular file someone pointed us at.
    try:
        if stat.S_ISSOCK(os.stat(path).st_mode):
            os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
    except OSError:
        sock.close()
        raise
    return sock


def describe_listener(sock: socket.socket) -> str:
    """Return a printable address for a listening socket (``127.0.0.1:8000``, ``unix:/p``)."""
    name = sock.getsockname()
    if sock.family == socket.AF_UNIX:
        return f"unix:{name}"
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    return f"{name[0]}:{name[1]}"


def proxy_protocol_listeners(cfg: Config, listeners: Sequence[socket.socket],
                             binds: Sequence[str] | None) -> frozenset[int]:
    """File descriptors of the listeners whose connections start with a PROXY header.

    Args:
        cfg: the configuration (``[proxy] proxy_protocol``).
        listeners: the listening sockets, in the order of ``binds``.
        binds: the ``bind`` entries they were made from; None for sockets systemd
            passed, which only ``*`` can name.
    """
    marked = cfg.proxy.proxy_protocol
    if "*" in marked:
        return frozenset(sock.fileno() for sock in listeners)
    if binds is None:
        return frozenset()
    return frozenset(sock.fileno() for sock, entry in zip(listeners, binds) if entry in marked)
