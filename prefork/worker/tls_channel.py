"""A channel whose socket speaks TLS: the handshake, then records both ways.

Strategy: the TLS layer is ``ssl.SSLSocket`` in non-blocking mode, wrapped
with ``do_handshake_on_connect=False`` and driven from the loop, rather than
``SSLObject`` over two ``MemoryBIO``s: OpenSSL then reads and writes the file
descriptor itself, in C, where a BIO pair would add a Python copy and several
Python calls per record for nothing, since the loop wants readiness of the same
socket either way. Everything the protocols above see is the ``Channel``
interface; the differences stay here:

- The first byte decides. A TLS client starts with a handshake record (0x16);
  anything else is a plain-HTTP client on the HTTPS port, which gets a plain
  ``400`` saying so (nginx answers its 497 the same way) through the ordinary
  error path: the channel stays a plain one for it.
- The handshake advances on readiness, inside ``recv_into`` and ``flush``; it
  belongs to the connection's header time (``header_timeout``), so a client that
  opens TLS and stalls costs a socket until then, never a worker. A failed
  handshake is one info line (peer and OpenSSL's reason) and a close.
- OpenSSL may hold decrypted bytes that epoll cannot see; when a read stopped
  because the caller's room ran out while some remain, the owner is called again
  on the loop (``defer``) instead of waiting for a readiness that never comes.
- A write that OpenSSL could not finish must be retried with the same bytes, so
  the channel keeps that chunk (at most ``TLS_WRITE``) until it is accepted;
  ``sendfile`` becomes a bounded ``pread`` + write loop (kernel TLS needs
  ``ssl.OP_ENABLE_KTLS``, which Python 3.12 added).
- ``shutdown_write`` sends close_notify before the FIN, so a client can tell a
  complete response from a cut one.
"""

from __future__ import annotations

import enum
import os
import socket
import ssl
from collections.abc import Callable
from typing import Any

from prefork.apps.handlers import TlsInfo
from prefork.config.logs import error_log
from prefork.process.tls_context import SERVER_NAME_ATTRIBUTE
from prefork.protocol.errors import BadRequest
from prefork.worker.channel import Channel

__all__ = ["PLAIN_HTTP_ON_TLS", "TLS_WRITE", "PlainHttpOnTlsPort", "TlsChannel"]

# Bytes handed to OpenSSL per write: four full records, few Python calls per MiB.
TLS_WRITE = 64 * 1024
# The largest plaintext one TLS record carries (RFC 8446 §5.1); SSLSocket.recv_into returns
# at most one record.
TLS_RECORD = 16 * 1024
# The first byte of a TLS record that carries a handshake (RFC 8446 §5.1, content type 22).
_HANDSHAKE_RECORD = 0x16
PLAIN_HTTP_ON_TLS = ("this port speaks HTTPS and the request came as plain HTTP: "
                     "use an https:// URL for this address")


class PlainHttpOnTlsPort(BadRequest):
    """A client sent plain HTTP to a TLS listener (answered 400 in plain text, then closed)."""


class _State(enum.Enum):
    SNIFFING = 1     # nothing received yet: TLS or a plain-HTTP mistake?
    HANDSHAKING = 2
    OPEN = 3
    PLAIN = 4        # a plain-HTTP client on the TLS port: answered in plain text, then closed


class TlsChannel(Channel):
    """A ``Channel`` over TLS, for a socket accepted on an HTTPS listener.

    Args:
        sock: the accepted, non-blocking TCP socket (wrapped once its first byte says TLS).
        watch: the loop's ``watch(channel, read, write)``.
        context: the server context (certificates, versions, ALPN).
        defer: runs a callable on the loop thread soon (for bytes OpenSSL holds).
        peer: the client address, for log lines.
    """

    __slots__ = ("_context", "_defer", "_peer", "_state", "_in_flight", "_file_chunk",
                 "_read_wants_write", "_poke_queued", "_info")

    secure = True

    def __init__(self, sock: socket.socket, watch: Callable[[Channel, bool, bool], None],
                 context: ssl.SSLContext, defer: Callable[..., None], peer: tuple[str, int]) -> None:
        super().__init__(sock, watch)
        self._context = context
        self._defer = defer
        self._peer = peer
        self._state = _State.SNIFFING
        self._in_flight: bytes | memoryview | None = None
        self._file_chunk: tuple[int, bytes] | None = None
        self._read_wants_write = False
        self._poke_queued = False
        self._info: TlsInfo | None = None

    def tls_info(self) -> TlsInfo | None:
        """What the handshake negotiated (None until it is done, or for a plain-HTTP client)."""
        if self._info is None and self._state is _State.OPEN:
            sock: Any = self.sock
            cipher = sock.cipher()
            self._info = TlsInfo(sock.version() or "", cipher[0] if cipher else "",
                                 getattr(sock, SERVER_NAME_ATTRIBUTE, None), sock.getpeercert() or None)
        return self._info

    # --- the handshake ---------------------------------------------------------------
    def _advance(self) -> bool | None:
        """Move the handshake on. True: open; False: waiting for the peer; None: EOF before it ended.

        Raises:
            PlainHttpOnTlsPort: the first byte is no TLS record.
            OSError: the handshake failed (logged here).
        """
        if self._state is _State.SNIFFING:
            try:
                first = self.sock.recv(1, socket.MSG_PEEK)
            except (BlockingIOError, InterruptedError):
                return False
            if not first:
                return None
            if first[0] != _HANDSHAKE_RECORD:
                self._state = _State.PLAIN
                raise PlainHttpOnTlsPort(PLAIN_HTTP_ON_TLS)
            self.sock = self._context.wrap_socket(self.sock, server_side=True, do_handshake_on_connect=False,
                                                  suppress_ragged_eofs=True)
            self._state = _State.HANDSHAKING
        sock: Any = self.sock
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._want(read=True, write=False)
            return False
        except ssl.SSLWantWriteError:
            self._want(read=False, write=True)
            return False
        except ssl.SSLEOFError:
            return None
        except (ssl.SSLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc.strerror or exc
            error_log.info("%s:%s TLS handshake failed: %s", self._peer[0], self._peer[1], reason)
            raise
        self._state = _State.OPEN
        self._want(read=True, write=bool(self._out))
        return True

    def _want(self, *, read: bool, write: bool) -> None:
        if not self.closed and (read, write) != (self.reading, self.writing):
            self.reading, self.writing = read, write
            self._watch(self, read, write)

    # --- input -----------------------------------------------------------------------
    def recv_into(self, buffer: memoryview, size: int) -> int | None:
        """Receive up to ``size`` decrypted bytes (see ``Channel.recv_into``).

        Raises:
            PlainHttpOnTlsPort: a plain-HTTP client (its bytes can then be read plain).
            OSError: the connection or the handshake failed.
        """
        if self._state is _State.PLAIN:
            return super().recv_into(buffer, size)
        if self._state is not _State.OPEN:
            advanced = self._advance()
            if advanced is None:
                return 0
            if not advanced:
                return None
        sock = self.sock
        got = 0
        while got < size:
            try:
                n = sock.recv_into(buffer[got:], size - got)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLWantWriteError:  # a key update needs to write first
                self._read_wants_write = True
                self._want(read=self.reading, write=True)
                break
            if n == 0:
                if got:
                    break  # the EOF is reported by the next call
                return 0
            got += n
            if n < TLS_RECORD and not sock.pending():  # type: ignore[attr-defined]
                # Less than a full record and nothing decrypted waiting: the peer has paused,
                # and asking again would mostly cost a raised SSLWantReadError. A full record
                # (a body streaming in) is read on: a loop turn per 16 KiB record held a 1 GiB
                # upload to 0.60x of a threaded ssl receiver (bench.py tls; 0.77x reading on).
                break
        if got >= size and not self._poke_queued and sock.pending():  # type: ignore[attr-defined]
            self._poke_queued = True
            self._defer(self._poke)
        return got or None

    def _poke(self) -> None:
        """Bytes OpenSSL decrypted beyond the last read: the owner reads them now."""
        self._poke_queued = False
        if self.reading and not self.closed and self.owner is not None:
            self.owner.on_readable()

    def set_reading(self, on: bool) -> None:
        """See ``Channel.set_reading``; turning reading on also reads what OpenSSL holds."""
        if self._state in (_State.SNIFFING, _State.HANDSHAKING):
            return  # the handshake decides what it waits for
        super().set_reading(on)
        if (on and self._state is _State.OPEN and not self._poke_queued
                and self.sock.pending()):  # type: ignore[attr-defined]
            self._poke_queued = True
            self._defer(self._poke)

    # --- output ----------------------------------------------------------------------
    def discard_output(self) -> None:
        """Drop everything queued, the chunk OpenSSL is half-way through included."""
        super().discard_output()
        self._in_flight = None

    def flush(self) -> bool:
        """Write queued output through TLS as far as the socket takes it (see ``Channel.flush``)."""
        if self._state is _State.PLAIN:
            return super().flush()
        if self._state is not _State.OPEN:
            if self._out and not self.closed:
                # A reply before the handshake ended is a timeout's: it cannot go out in plain
                # text inside a TLS handshake, and the close that follows says enough.
                self.discard_output()
            return self._advance() is not False if self._state is _State.HANDSHAKING else True
        if self._read_wants_write:
            self._read_wants_write = False
            if not self._poke_queued:
                self._poke_queued = True
                self._defer(self._poke)
        out = self._out
        sock = self.sock
        while out:
            chunk = self._in_flight if self._in_flight is not None else self._next_chunk()
            try:
                sent = sock.send(chunk)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                self._in_flight = chunk  # OpenSSL wants these same bytes again
                break
            self._in_flight = None
            self._consume(sent)
        drained = not out
        self._want(read=self.reading, write=not drained)
        return drained

    def _next_chunk(self) -> bytes | memoryview:
        out = self._out
        first = out[0]
        if len(first) >= TLS_WRITE or len(out) == 1:
            return memoryview(first)[:TLS_WRITE] if len(first) > TLS_WRITE else first
        parts, size = [], 0
        for item in out:
            if size + len(item) > TLS_WRITE:
                break
            parts.append(item)
            size += len(item)
        return b"".join(parts)

    def sendfile(self, fd: int, offset: int, count: int) -> int | None:
        """Send up to ``count`` bytes of file ``fd`` from ``offset``, one ``TLS_WRITE`` at a time."""
        if self._state is not _State.OPEN:
            return super().sendfile(fd, offset, count)
        chunk = self._file_chunk
        if chunk is None or chunk[0] != offset:
            data = os.pread(fd, min(count, TLS_WRITE), offset)
            if not data:
                return 0
            chunk = self._file_chunk = (offset, data)
        try:
            sent: int = self.sock.send(chunk[1])
        except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
            self.set_writing(True)
            return None
        self._file_chunk = None
        return sent

    # --- teardown --------------------------------------------------------------------
    def shutdown_write(self) -> None:
        """Send close_notify, then FIN (see ``Channel.shutdown_write``)."""
        if self._state is _State.OPEN:
            try:
                self.sock.unwrap()  # type: ignore[attr-defined]
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass  # close_notify is out (or in the kernel's buffer); the peer's reply is not awaited
            except (ssl.SSLError, ValueError) as exc:
                raise OSError(f"TLS shutdown failed: {exc}") from None
            socket.socket.shutdown(self.sock, socket.SHUT_WR)  # not SSLSocket.shutdown: it drops the TLS state
            return
        super().shutdown_write()
