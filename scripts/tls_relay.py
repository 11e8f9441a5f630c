"""A loopback TLS client-side relay: plain TCP in, TLS out to one server.

Strategy: the shared conformance runners (``run_httpconf.py``, and
``run_autobahn.py``, which refuses any URL but ``ws://``) speak plain TCP only
and may not be edited, so CI runs them against this relay, which opens one TLS
connection to prefork for every TCP connection it accepts and copies bytes
both ways. One ``selectors`` loop, no threads. The TLS side is an
``ssl.SSLObject`` over two ``MemoryBIO``s on a plain non-blocking socket
rather than a non-blocking ``SSLSocket``: a half-close has to put close_notify
on the wire and *then* a FIN while still reading the server's answer, and
``SSLSocket.shutdown`` drops the TLS state (no more reads) while ``unwrap``
wants the peer's close_notify first. With BIOs the relay decides when each
ciphertext byte reaches the socket.

What the relay propagates, and how:

- the client's FIN becomes close_notify + FIN to the server; the server's
  answer keeps flowing back;
- the server's close (close_notify, FIN or reset) becomes a FIN to the client
  once everything decrypted before it was delivered; the client's bytes keep
  flowing (to let a lingering server read them) until the server's socket
  fails, and then the client connection is closed;
- the client's reset (an abortive close) becomes an abortive close
  (RST, no close_notify) to the server;
- a failed connect or handshake closes the client connection (one line on stderr).

Bounds: a direction stops reading from its source while ``BOUND`` bytes wait
for its destination; one read adds at most ``READ_SIZE`` (plus TLS record
overhead towards the server, plus the rest of one partly read record OpenSSL
holds towards the client). Nothing else is buffered; the rest waits in the
kernel's socket buffers, so a slow reader slows its sender as it would without
the relay.

What is NOT preserved: the byte boundaries. Each ``recv`` from the client
becomes one ``SSLObject.write`` (one TLS record, or several above 16 KiB), but
TCP coalesces and splits the client's writes before the relay reads them, and
the server decrypts records in whatever grouping its reads find. A test that
sends a request in 1-7 byte pieces with pauses still reaches the server in
small pieces most of the time, never guaranteed: the split is re-recorded, not
reproduced.

Usage:
    python scripts/tls_relay.py --connect 127.0.0.1:8443 --cafile ca.pem \\
        [--listen 0] [--server-name localhost]
It prints ``tls_relay: listening on 127.0.0.1:PORT`` when it accepts, and runs
until SIGTERM or SIGINT (exit 0).
"""

from __future__ import annotations

import argparse
import errno
import os
import selectors
import signal
import socket
import ssl
import struct
import sys
from dataclasses import dataclass, field
from types import FrameType

__all__ = ["BOUND", "READ_SIZE", "Relay", "main"]

# Bytes a direction may hold for its destination before it stops reading its source:
# four full TLS records, enough that a relay never throttles a loopback test, small
# enough that a stalled reader costs the relay next to nothing (socat's default is 8 KiB).
BOUND = 64 * 1024
# Bytes per recv: one full TLS record's plaintext (RFC 8446 §5.1: 2^14).
READ_SIZE = 16 * 1024
_RESET_ERRORS = (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED)


def _send_buffered(sock: socket.socket, buffer: bytearray) -> bool | None:
    """Send what ``buffer`` holds until the socket would block; True when it is empty,
    False when bytes wait, None when the peer reset the connection."""
    try:
        while buffer:
            sent = sock.send(buffer)
            del buffer[:sent]
    except (BlockingIOError, InterruptedError):
        return False
    except OSError as exc:
        if exc.errno not in _RESET_ERRORS:
            raise
        return None
    return True


def _half_close(sock: socket.socket) -> None:
    """Send a FIN; a socket the peer already closed needs none."""
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _abort(sock: socket.socket) -> None:
    """Close ``sock`` with a RST (SO_LINGER 0): a reset is passed on as a reset."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    sock.close()


@dataclass(eq=False)  # identity hashing: pairs live in a set
class Pair:
    """One client connection and the TLS connection made for it.

    Attributes:
        client: the accepted plain socket.
        server: the TCP socket to the server (non-blocking; TLS runs over ``tls``).
        tls: the TLS state, fed from ``incoming`` and drained from ``outgoing``.
        to_server: ciphertext waiting for the server's socket.
        to_client: plaintext waiting for the client's socket.
        high_water: the most bytes each direction held (``"to_server"``/``"to_client"``).
    """

    client: socket.socket
    server: socket.socket
    tls: ssl.SSLObject
    incoming: ssl.MemoryBIO
    outgoing: ssl.MemoryBIO
    connected: bool = False
    handshaken: bool = False
    client_eof: bool = False       # the client sent FIN; close_notify is queued for the server
    server_eof: bool = False       # the server closed its side (close_notify, FIN or reset)
    client_shut: bool = False      # the FIN to the client is sent
    server_shut: bool = False      # close_notify + FIN to the server are sent
    tls_usable: bool = True        # False after a FIN without close_notify: OpenSSL's state is dead
    to_server: bytearray = field(default_factory=bytearray)
    to_client: bytearray = field(default_factory=bytearray)
    high_water: dict[str, int] = field(default_factory=lambda: {"to_server": 0, "to_client": 0})

    def note_levels(self) -> None:
        """Record the high-water mark of each direction (what the tests bound)."""
        server_side = len(self.to_server) + self.outgoing.pending
        client_side = len(self.to_client)
        self.high_water["to_server"] = max(self.high_water["to_server"], server_side)
        self.high_water["to_client"] = max(self.high_water["to_client"], client_side)


class Relay:
    """The relay's loop: accept, connect, handshake, copy, close.

    Args:
        listen: the plain TCP address to accept on (port 0: any free port).
        target: the TLS server's address.
        context: a client context (certificate checks, versions).
        server_name: SNI and the name the server's certificate is checked against.
    """

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], context: ssl.SSLContext,
                 server_name: str | None) -> None:
        self.target = target
        self.context = context
        self.server_name = server_name
        self.listener = socket.create_server(listen, backlog=128)
        self.listener.setblocking(False)
        self.address: tuple[str, int] = self.listener.getsockname()[:2]
        self.sel = selectors.DefaultSelector()
        self.sel.register(self.listener, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self.sel.register(self._wake_r, selectors.EVENT_READ, None)
        self.pairs: set[Pair] = set()
        self.closed_high_water: list[dict[str, int]] = []
        self.accepted = 0
        self.ragged_eofs = 0  # TLS connections the server ended with a FIN and no close_notify
        self._stopping = False

    # --- the loop -----------------------------------------------------------------------
    def serve_forever(self) -> None:
        """Run until ``stop()``; then close every connection and the listener."""
        try:
            while not self._stopping:
                for key, events in self.sel.select(timeout=1.0):
                    if key.fileobj is self.listener:
                        self._accept()
                    elif key.fileobj is self._wake_r:
                        self._drain_wakeup()
                    else:
                        pair, side = key.data
                        self._on_ready(pair, side, events)
        finally:
            for pair in list(self.pairs):
                self._close(pair, abort=False)
            self.sel.close()
            self.listener.close()
            self._wake_r.close()
            self._wake_w.close()

    def stop(self) -> None:
        """Ask the loop to stop (safe from a signal handler or another thread)."""
        self._stopping = True
        try:
            self._wake_w.send(b"\0")
        except OSError:
            pass  # the loop is gone or its wakeup is full: either way it is waking

    def _drain_wakeup(self) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except (BlockingIOError, InterruptedError):
            pass

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            server = socket.socket(socket.AF_INET6 if ":" in self.target[0] else socket.AF_INET)
            server.setblocking(False)
            server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
            tls = self.context.wrap_bio(incoming, outgoing, server_hostname=self.server_name)
            pair = Pair(client, server, tls, incoming, outgoing)
            self.accepted += 1
            self.pairs.add(pair)
            err = server.connect_ex(self.target)
            if err not in (0, errno.EINPROGRESS):
                self._fail(pair, f"connect to {self.target[0]}:{self.target[1]} failed: {os.strerror(err)}")
                continue
            self._update(pair)

    # --- one connection -----------------------------------------------------------------
    def _on_ready(self, pair: Pair, side: str, events: int) -> None:
        if pair not in self.pairs or side == "server" and pair.server.fileno() == -1:
            return  # closed earlier in this round of events
        try:
            if side == "server":
                if events & selectors.EVENT_WRITE:
                    self._server_writable(pair)
                if events & selectors.EVENT_READ and pair in self.pairs and pair.server.fileno() != -1:
                    self._server_readable(pair)
            else:
                if events & selectors.EVENT_READ:
                    self._client_readable(pair)
                if events & selectors.EVENT_WRITE and pair in self.pairs:
                    self._client_writable(pair)
        except ssl.SSLError as exc:
            self._fail(pair, f"TLS error: {exc.reason or exc}")
            return
        if pair in self.pairs:
            self._finish_if_done(pair)
        if pair in self.pairs:
            self._update(pair)

    def _server_writable(self, pair: Pair) -> None:
        if not pair.connected:
            err = pair.server.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                self._fail(pair, f"connect to {self.target[0]}:{self.target[1]} failed: {os.strerror(err)}")
                return
            pair.connected = True
            self._handshake(pair)
        self._send_to_server(pair)

    def _handshake(self, pair: Pair) -> None:
        try:
            pair.tls.do_handshake()
            pair.handshaken = True
        except ssl.SSLWantReadError:
            pass
        self._collect_ciphertext(pair)

    def _server_readable(self, pair: Pair) -> None:
        try:
            data = pair.server.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno not in _RESET_ERRORS:
                raise
            self._server_closed(pair, broken=True)
            return
        if not data:
            pair.incoming.write_eof()
        else:
            pair.incoming.write(data)
        if not pair.handshaken:
            if not data:
                self._fail(pair, "the server closed during the TLS handshake")
                return
            self._handshake(pair)
            if not pair.handshaken:
                return
        self._decrypt(pair)

    def _decrypt(self, pair: Pair) -> None:
        """Plaintext out of the TLS state into ``to_client``, while there is room."""
        while len(pair.to_client) < BOUND and not pair.server_eof:
            try:
                plain = pair.tls.read(READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                plain = b""  # close_notify
            except ssl.SSLEOFError:
                # A FIN without close_notify (RFC 8446 §6.1 asks for one): the client still
                # gets a FIN, but OpenSSL's state is dead, so nothing more goes out in TLS.
                plain = b""
                pair.tls_usable = False
                self.ragged_eofs += 1
            if not plain:
                self._server_closed(pair, broken=False)
                break
            pair.to_client += plain
        self._collect_ciphertext(pair)  # a read may answer a key update
        pair.note_levels()
        self._send_to_client(pair)

    def _server_closed(self, pair: Pair, *, broken: bool) -> None:
        """The server will send nothing more; with ``broken`` it will not take bytes either."""
        pair.server_eof = True
        if broken:
            pair.to_server.clear()
            pair.client_eof = pair.server_shut = True  # nothing more can reach the server
            self._watch(pair.server, 0, (pair, "server"))
            pair.server.close()
        self._send_to_client(pair)  # the FIN goes now, or after the bytes still waiting

    def _client_readable(self, pair: Pair) -> None:
        try:
            data = pair.client.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno not in _RESET_ERRORS:
                raise
            self._close(pair, abort=True)  # a reset from the client: reset the server too
            return
        if not data:
            pair.client_eof = True
            if not pair.server_shut and pair.tls_usable:
                try:
                    pair.tls.unwrap()  # queues close_notify in ``outgoing``
                except ssl.SSLWantReadError:
                    pass  # the server's close_notify is not awaited (a half-close)
        elif pair.tls_usable:
            pair.tls.write(data)
        # else: the server's TLS ended without close_notify; its bytes are dropped, as a
        # server that closed (and lingers reading) would drop them.

        self._collect_ciphertext(pair)
        self._send_to_server(pair)

    def _collect_ciphertext(self, pair: Pair) -> None:
        if pair.outgoing.pending:
            pair.to_server += pair.outgoing.read()
        pair.note_levels()

    def _send_to_server(self, pair: Pair) -> None:
        if pair not in self.pairs:
            return  # closed (a reset) earlier in this event
        if not pair.connected or pair.server_shut and not pair.to_server:
            return
        drained = _send_buffered(pair.server, pair.to_server)
        if drained is None:
            self._server_closed(pair, broken=True)
        elif drained and pair.client_eof and not pair.server_shut:
            pair.server_shut = True
            _half_close(pair.server)  # the FIN after close_notify

    def _client_writable(self, pair: Pair) -> None:
        self._send_to_client(pair)
        if pair.handshaken and not pair.server_eof:
            self._decrypt(pair)  # room again: OpenSSL may hold bytes the selector cannot see

    def _send_to_client(self, pair: Pair) -> None:
        if pair not in self.pairs:
            return  # closed (a reset) earlier in this event
        drained = _send_buffered(pair.client, pair.to_client)
        if drained is None:
            self._close(pair, abort=True)
        elif drained and pair.server_eof and not pair.client_shut:
            pair.client_shut = True
            _half_close(pair.client)

    def _finish_if_done(self, pair: Pair) -> None:
        """Both ways closed and flushed: release the pair."""
        if pair.client_shut and pair.server_shut and not pair.to_server and not pair.to_client:
            self._close(pair, abort=False)

    def _update(self, pair: Pair) -> None:
        """Register what each socket waits for, from the buffers' levels (the bounds live here)."""
        want_client = 0
        if pair.handshaken and not pair.client_eof and len(pair.to_server) < BOUND:
            want_client |= selectors.EVENT_READ
        if pair.to_client:
            want_client |= selectors.EVENT_WRITE
        self._watch(pair.client, want_client, (pair, "client"))
        if pair.server.fileno() == -1:
            return
        want_server = 0
        if not pair.connected or pair.to_server:
            want_server |= selectors.EVENT_WRITE
        if pair.connected and not pair.server_eof and len(pair.to_client) + pair.incoming.pending < BOUND:
            want_server |= selectors.EVENT_READ
        self._watch(pair.server, want_server, (pair, "server"))

    def _watch(self, sock: socket.socket, events: int, data: tuple[Pair, str]) -> None:
        try:
            key = self.sel.get_key(sock)
        except KeyError:
            if events:
                self.sel.register(sock, events, data)
            return
        if not events:
            self.sel.unregister(sock)
        elif key.events != events:
            self.sel.modify(sock, events, data)

    def _fail(self, pair: Pair, reason: str) -> None:
        try:
            peer = "%s:%s" % pair.client.getpeername()[:2]
        except OSError:
            peer = "a client that has gone"
        print(f"tls_relay: {peer}: {reason}", file=sys.stderr, flush=True)
        self._close(pair, abort=False)

    def _close(self, pair: Pair, *, abort: bool) -> None:
        self.pairs.discard(pair)
        self.closed_high_water.append(dict(pair.high_water))
        for sock in (pair.client, pair.server):
            if sock.fileno() == -1:
                continue
            try:
                self.sel.unregister(sock)
            except KeyError:
                pass
            if abort:
                _abort(sock)
            else:
                sock.close()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return (host.strip("[]") or "127.0.0.1", int(port))


def main(argv: list[str] | None = None) -> int:
    """Parse the flags, run the relay until SIGTERM/SIGINT; the exit code."""
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--connect", required=True, metavar="HOST:PORT", help="the TLS server")
    parser.add_argument("--listen", default="127.0.0.1:0", metavar="[HOST:]PORT",
                        help="plain TCP address to accept on (default: a free loopback port)")
    parser.add_argument("--server-name", default="localhost",
                        help="SNI and the certificate name to check (default: localhost)")
    parser.add_argument("--cafile", help="CA (or self-signed certificate) to check the server with")
    parser.add_argument("--insecure", action="store_true", help="do not check the server's certificate")
    args = parser.parse_args(argv)
    listen = _address(args.listen if ":" in args.listen else f"127.0.0.1:{args.listen}")
    if not args.cafile and not args.insecure:
        parser.error("give --cafile, or --insecure to skip the certificate check")
    context = ssl.create_default_context(cafile=args.cafile)
    if args.insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    relay = Relay(listen, _address(args.connect), context, args.server_name)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        relay.stop()  # a flag and a wakeup byte; the loop does the rest

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"tls_relay: listening on {relay.address[0]}:{relay.address[1]}"
          f" -> TLS {args.connect}", flush=True)
    relay.serve_forever()
    print(f"tls_relay: stopped after {relay.accepted} connections; the server ended "
          f"{relay.ragged_eofs} of them with a FIN and no close_notify", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
