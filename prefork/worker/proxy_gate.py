"""An accepted connection on a PROXY-protocol listener, until its PROXY header has arrived.

Strategy: haproxy's ``send-proxy``/``send-proxy-v2`` puts one header in front
of the connection's bytes, naming the real client. The gate reads it with
``MSG_PEEK`` and parses it with the sans-IO ``ProxyHeaderParser``; only once it
is complete does it take exactly the header's bytes off the socket, so what
follows (a request, or a TLS ClientHello that OpenSSL must read from the socket
itself) stays where the next protocol expects it, and nothing is buffered here
beyond what one peek returns. A peer that is not a trusted proxy
(``[proxy] trusted``) is refused before anything is read: the header is a claim
about someone else's address, believed only from a proxy. The header must come
within ``header_timeout``, like a request head; a bad one is one info line and a
close. Then the loop starts the real connection with the client's address.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from prefork.config.logs import error_log
from prefork.config.settings import ConnectionSettings
from prefork.protocol.proxy_protocol import DEFAULT_MAX_V2_SIZE, ProxyHeaderParser, ProxyProtocolError
from prefork.worker.channel import Channel

__all__ = ["MAX_PEEK", "ProxyHeaderGate"]

# The longest header the parser accepts: v2's 16 fixed bytes and its largest address block.
MAX_PEEK = 16 + DEFAULT_MAX_V2_SIZE


class ProxyHeaderGate:
    """Waits for the PROXY header of one accepted connection (a ``LoopTarget``).

    Args:
        channel: the accepted socket's plain channel (the gate becomes its owner).
        peer: the direct peer (the proxy).
        settings: ``header_timeout`` and ``trusted_proxies``.
        forget: the loop's ``forget``: stop watching the socket, keep it open.
        start: starts the real connection on the socket with the client's address.
    """

    def __init__(self, channel: Channel, peer: tuple[str, int], settings: ConnectionSettings,
                 forget: Callable[[ProxyHeaderGate], None],
                 start: Callable[[socket.socket, tuple[str, int]], None]) -> None:
        self.channel = channel
        channel.owner = self
        self.peer = peer
        self._forget = forget
        self._start = start
        self.started = time.monotonic()
        self._deadline = self.started + settings.header_timeout
        self._trusted = settings.trusted_proxies.trusts(peer[0])

    def on_readable(self) -> None:
        """Peek at what has arrived; once the header is whole, hand the socket on."""
        if not self._trusted:
            error_log.info("%s:%s: PROXY protocol header from a peer that is not in [proxy] trusted; closing",
                           self.peer[0], self.peer[1])
            self.close()
            return
        sock = self.channel.sock
        try:
            seen = sock.recv(MAX_PEEK, socket.MSG_PEEK)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not seen:
            self.close()  # gone before it said anything
            return
        try:
            result = ProxyHeaderParser().feed(seen)
        except ProxyProtocolError as exc:
            error_log.info("%s:%s: bad PROXY protocol header: %s; closing", self.peer[0], self.peer[1], exc)
            self.close()
            return
        if result is None:
            return  # the rest of the header is still on its way
        try:
            taken = sock.recv(result.header_size)
        except OSError:
            self.close()
            return
        assert len(taken) == result.header_size  # peeked: it is all in the kernel's buffer
        client = self.peer
        if result.source is not None and not result.local:
            client = (result.source.address, result.source.port or 0)
        self._forget(self)
        self._start(sock, client)

    def on_writable(self) -> None:
        """Nothing is ever written before the header."""

    def check_timeouts(self, now: float) -> None:
        """No header within ``header_timeout``: close."""
        if now >= self._deadline:
            error_log.info("%s:%s: no PROXY protocol header within the header timeout; closing",
                           self.peer[0], self.peer[1])
            self.close()

    def waiting_since(self) -> float | None:
        """An idle connection as far as shedding goes: it has not sent a request yet."""
        return self.started

    def shed(self) -> bool:
        """Close to make room."""
        self.close()
        return True

    def on_drain(self) -> None:
        """The header deadline already bounds how long it stays."""

    def close(self) -> None:
        """Close the socket and forget the connection."""
        self._forget(self)
        self.channel.close()
