"""The WebSocket connection state machine, sans I/O (RFC 6455 §5-§7).

Strategy: the websockets-style triple ``receive_data`` / ``events_received``
/ ``data_to_send``. Received bytes go to a ``FrameParser`` whose header hook
checks message sequencing and the cumulative message size before a payload
is buffered; data frames then stream in pieces as their bytes arrive and
update the message in progress (a ``MessageAssembler``: TEXT payloads go
through an incremental UTF-8 decoder piece by piece, so invalid UTF-8 fails
as soon as the bad bytes arrive, even mid-frame); compressed messages are inflated piece by piece with
the remaining size as the cap; what an unfinished compressed message holds
is reserved from the worker's ``InflateBudget`` (1009 when it is spent) and
given back when the message completes or the connection ends. Every
``WebSocketError`` ends up in ``_fail``, the one place that turns an error into
its close frame; that frame, like the echo of a peer's close, is queued at the
next ``data_to_send`` so the application's replies to earlier events in the
same batch still precede it. No clocks or sockets here: keep-alive pings and
timeouts are driven by the I/O layer through ``send_ping`` and ``Pong`` events.
Every ping is answered in order, unless the I/O layer sets ``hold_pongs``
(its peer is not reading what it was sent): then only the latest ping's pong
is kept, until the flag is cleared (RFC 6455 §5.5.3 allows answering only the
most recent ping), and the bytes of the pongs it replaced are counted, so the
I/O layer can hold them against its send buffer without queueing them.
"""

from __future__ import annotations

from prefork.protocol.errors import WebSocketError
from prefork.protocol.limits import WsLimits
from prefork.protocol.websocket.assembler import MessageAssembler
from prefork.protocol.websocket.budget import InflateBudget
from prefork.protocol.websocket.deflate import DeflateParams, PerMessageDeflate
from prefork.protocol.websocket.events import (
    MAX_CLOSE_REASON,
    BytesMessage,
    CloseReceived,
    ConnState,
    Event,
    InvalidState,
    Ping,
    Pong,
    TextMessage,
    close_payload,
    parse_close,
    valid_close_code,
)
from prefork.protocol.websocket.frames import (
    CloseCode,
    Frame,
    FrameHeader,
    FrameParser,
    Opcode,
    frame_head,
    serialize_frame,
)

__all__ = [
    "BytesMessage",
    "CloseReceived",
    "ConnState",
    "Event",
    "InvalidState",
    "Ping",
    "Pong",
    "TextMessage",
    "WebSocketConnection",
]

#: Payloads of this size or more are queued as their own buffer, after the
#: frame header, rather than copied behind it.
_SEPARATE_PAYLOAD = 16 * 1024


class WebSocketConnection:
    """One server-side WebSocket connection after a successful handshake.

    Attributes:
        state: OPEN, CLOSING (our close sent, or the connection failed) or CLOSED.
        last_error: the error that failed the connection, if any.
    """

    def __init__(
        self,
        limits: WsLimits = WsLimits(),
        trailing_data: bytes = b"",
        *,
        deflate: DeflateParams | None = None,
        inflate_budget: InflateBudget | None = None,
    ) -> None:
        """Create the connection.

        Args:
            limits: message and frame size limits.
            trailing_data: bytes received after the handshake request; they are
                the first frame bytes and are processed now.
            deflate: negotiated permessage-deflate parameters, if any.
            inflate_budget: the worker's budget for the inflated bytes of
                unfinished compressed messages (None: only ``max_message_size``).
        """
        self.limits = limits
        self._budget = inflate_budget
        self.state = ConnState.OPEN
        self.last_error: WebSocketError | None = None
        self._codec = PerMessageDeflate(deflate) if deflate is not None else None
        self._parser = FrameParser(
            require_mask=True,
            max_payload=limits.max_frame_size,
            allow_rsv1=deflate is not None,
            stream_data=True,  # validate text as it arrives (Autobahn 6.4.3-4)
            on_header=self._check_header,
        )
        self._message: MessageAssembler | None = None
        self._events: list[Event] = []
        self._out: list[bytes] = []
        self._small = bytearray()  # small frames, joined into one buffer
        # Our close frame (echo or failure) waits here until data_to_send(), so
        # replies to the events that preceded it still go out before it.
        self._pending_close: bytes | None = None
        #: Set by the I/O layer while its peer does not read: pongs are coalesced.
        self.hold_pongs = False
        self._held_pong: bytes | None = None  # the latest ping's payload, not yet answered
        self._coalesced = 0  # wire bytes of pongs replaced by a later one
        self._close_sent = False
        self._close_received = False
        if trailing_data:
            self.receive_data(trailing_data)

    # -- input ---------------------------------------------------------------

    def receive_data(self, data: bytes) -> None:
        """Process bytes from the peer; ``b""`` means EOF.

        Args:
            data: received bytes, or ``b""`` at end of stream.
        """
        if not data:
            self._receive_eof()
            return
        if self.last_error is not None or self.state is ConnState.CLOSED:
            return  # §7.1.7/§5.5.1: nothing is processed after failure or close
        self._parser.feed(data)
        try:
            while (frame := self._parser.next_frame()) is not None:
                self._handle_frame(frame)
                if self._close_received:
                    return  # §5.5.1: no data frames follow a close
        except WebSocketError as err:
            self._fail(err)

    def _receive_eof(self) -> None:
        """The peer closed TCP; abrupt (1006) unless the close handshake finished."""
        if self.state is ConnState.CLOSED:
            return
        self.state = ConnState.CLOSED
        self._drop_message()
        if self.last_error is None and not self._close_received:
            self._events.append(CloseReceived(CloseCode.ABNORMAL_CLOSURE, ""))

    def events_received(self) -> list[Event]:
        """Return and clear the events produced since the last call.

        Returns:
            Messages, pings, pongs and at most one final ``CloseReceived``.
        """
        events, self._events = self._events, []
        return events

    def _check_header(self, header: FrameHeader) -> None:
        """Refuse bad sequencing (§5.4) or an oversized message (1009) early."""
        if header.opcode.is_control:
            return  # control frames may interleave and are capped at 125 bytes
        msg = self._message
        if header.opcode is Opcode.CONT:
            if msg is None:
                raise WebSocketError("continuation frame without a message in progress")
            compressed, size = msg.compressed, msg.size
        else:
            if msg is not None:
                raise WebSocketError(
                    f"{header.opcode.name} frame while a fragmented message is in progress"
                )
            compressed, size = header.rsv1, 0
        # Compressed messages are capped on their inflated size instead (deflate.py).
        limit = self.limits.max_message_size
        if not compressed and size + header.length > limit:
            raise WebSocketError(
                f"message of at least {size + header.length} bytes exceeds limit of "
                f"{limit} bytes",
                close_code=CloseCode.MESSAGE_TOO_BIG,
            )

    def _handle_frame(self, frame: Frame) -> None:
        """Dispatch one validated frame."""
        if frame.opcode is Opcode.PING:
            if not self._close_sent:
                self._answer_ping(frame.payload)
            self._events.append(Ping(frame.payload))
        elif frame.opcode is Opcode.PONG:
            self._events.append(Pong(frame.payload))
        elif frame.opcode is Opcode.CLOSE:
            self._handle_close(frame.payload)
        else:
            self._handle_data(frame)

    def _answer_ping(self, payload: bytes) -> None:
        """Queue the pong (§5.5.2), or only keep the latest while ``hold_pongs`` (§5.5.3)."""
        if not self.hold_pongs:
            self._send_frame(Frame(Opcode.PONG, payload))
            return
        if self._held_pong is not None:
            self._coalesced += 2 + len(self._held_pong)
        self._held_pong = payload

    def _release_held_pong(self, force: bool = False) -> None:
        """Queue the held pong once pongs may flow again, or before our close (§5.5.1)."""
        if self._held_pong is not None and (force or not self.hold_pongs):
            self._send_frame(Frame(Opcode.PONG, self._held_pong))
            self._held_pong = None

    def take_coalesced(self) -> int:
        """Return and reset the wire bytes of pongs not sent because a later ping replaced them.

        Returns:
            Bytes the peer asked for (by pinging) and will never get, since the last call.
        """
        coalesced, self._coalesced = self._coalesced, 0
        return coalesced

    def _handle_data(self, frame: Frame) -> None:
        """Add a data frame to the message in progress; emit it when final."""
        msg = self._message
        if msg is None:
            msg = self._message = MessageAssembler(frame.opcode, frame.rsv1)
        payload = frame.payload
        if msg.compressed:
            payload = self._inflate(msg, payload, frame.fin)
        message = msg.add(payload, frame.fin)
        if message is not None:
            self._message = None
            self._events.append(message)

    def _inflate(self, msg: MessageAssembler, payload: bytes, fin: bool) -> bytes:
        """Inflate a piece of a compressed message within its size limit and the budget.

        A piece that completes its message is delivered at once and never reserved
        (a budget spent by unfinished messages does not stop whole ones); any other
        is inflated at most up to the budget's room, so a refused piece costs no more
        than that, and what it adds is reserved until the message ends.
        """
        assert self._codec is not None  # RSV1 is only accepted with deflate
        remaining = self.limits.max_message_size - msg.size
        budget = self._budget
        if budget is None or fin:
            out = self._codec.decompress(payload, fin=fin, limit=remaining)
            if budget is not None:
                msg.release(budget)
            return out
        room = budget.limit - budget.used
        try:
            out = self._codec.decompress(payload, fin=fin, limit=min(remaining, room))
        except WebSocketError as err:
            if err.close_code != CloseCode.MESSAGE_TOO_BIG or room >= remaining:
                raise
            raise WebSocketError(
                f"unfinished compressed messages would hold over {budget.limit} bytes "
                f"of this worker's inflate budget",
                close_code=CloseCode.MESSAGE_TOO_BIG,
            ) from None
        budget.reserve(len(out))  # fits: at most ``room``
        msg.held += len(out)
        return out

    def _drop_message(self) -> None:
        """Forget the message in progress, giving back what it held."""
        msg, self._message = self._message, None
        if msg is not None and msg.held and self._budget is not None:
            msg.release(self._budget)

    @property
    def message_in_progress(self) -> bool:
        """Whether a data message has begun and its final frame not yet arrived."""
        return self._message is not None

    def fail(self, code: int, reason: str) -> None:
        """Fail the connection on the I/O layer's behalf (e.g. a message timeout).

        Like a protocol error (§7.1.7): the close frame is queued, the message in
        progress is dropped, nothing more is processed, and a ``CloseReceived``
        with ``code`` is the last event. A no-op once failed or closed.

        Args:
            code: the close code to send, e.g. 1008.
            reason: the close reason (cut to 123 bytes).
        """
        if self.last_error is None and self.state is not ConnState.CLOSED:
            self._fail(WebSocketError(reason, close_code=code))

    def abort(self) -> None:
        """The transport is gone without an EOF seen here: drop the message in progress."""
        self._drop_message()

    def _handle_close(self, payload: bytes) -> None:
        """Answer or complete the closing handshake (§5.5.1, §7.1.2-3)."""
        code, reason = parse_close(payload)
        self._close_received = True
        if not self._close_sent:
            # Echo the peer's code; an empty close is answered with an empty one.
            self._pending_close = serialize_frame(Frame(Opcode.CLOSE, payload[:2]))
            self._close_sent = True
        self.state = ConnState.CLOSED
        self._drop_message()  # §5.5.1: an unfinished message stays unfinished
        self._events.append(CloseReceived(code, reason))

    def _fail(self, err: WebSocketError) -> None:
        """_Fail the WebSocket Connection_ (§7.1.7): send a close, stop reading."""
        # Kept for the connection's life: without its traceback, which would keep the
        # raising frames' locals alive (a refused piece of a zip bomb: up to 16 MiB).
        self.last_error = err.with_traceback(None)
        reason = str(err).encode("utf-8")[:MAX_CLOSE_REASON].decode("utf-8", "ignore")
        if not self._close_sent:
            payload = close_payload(err.close_code, reason)
            self._pending_close = serialize_frame(Frame(Opcode.CLOSE, payload))
            self._close_sent = True
        if self.state is ConnState.OPEN:
            self.state = ConnState.CLOSING
        self._drop_message()
        self._events.append(CloseReceived(err.close_code, reason))

    # -- output --------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Return and clear the bytes to write to the transport (``chunks_to_send`` joined).

        Returns:
            The queued bytes (possibly empty).
        """
        return b"".join(self.chunks_to_send())

    def chunks_to_send(self) -> list[bytes]:
        """Return and clear the buffers to write to the transport, in order.

        A large payload is its own buffer, after its frame header, so that it
        reaches the socket without a copy (scatter-gather). A close frame owed
        to the peer (an echo, or the one that fails the connection) is appended
        here, after whatever the application sent in reply to the events before
        it (Autobahn 3.2, 4.1.3, 5.15 expect those replies first).

        Returns:
            The queued buffers (possibly none).
        """
        self._release_held_pong(force=self._pending_close is not None)
        if self._pending_close is not None:
            self._small += self._pending_close
            self._pending_close = None
        self._flush_small()
        out, self._out = self._out, []
        return out

    def _flush_small(self) -> None:
        if self._small:
            self._out.append(bytes(self._small))
            self._small.clear()

    def close_expected(self) -> bool:
        """Whether to close TCP once ``data_to_send()`` is flushed.

        True after the closing handshake, after EOF, and after a protocol
        error. RFC 6455 §7.1.1: the server closes the TCP connection first.

        Returns:
            Whether the transport should be closed after flushing.
        """
        return self.state is ConnState.CLOSED or self.last_error is not None

    def send_text(self, text: str) -> None:
        """Queue a text message.

        Args:
            text: the message.

        Raises:
            InvalidState: if the connection is not OPEN.
        """
        self._send_message(Opcode.TEXT, text.encode("utf-8"))

    def send_binary(self, data: bytes) -> None:
        """Queue a binary message.

        Args:
            data: the message.

        Raises:
            InvalidState: if the connection is not OPEN.
        """
        self._send_message(Opcode.BINARY, bytes(data))

    def send_ping(self, payload: bytes = b"") -> None:
        """Queue a ping; the peer's answer arrives as a ``Pong`` event.

        Args:
            payload: at most 125 bytes, e.g. a counter to match the pong.

        Raises:
            InvalidState: if the connection is not OPEN.
            ValueError: if the payload is over 125 bytes.
        """
        self._send_control(Opcode.PING, payload)

    def send_pong(self, payload: bytes = b"") -> None:
        """Queue an unsolicited pong (a unidirectional heartbeat, §5.5.3).

        Args:
            payload: at most 125 bytes.

        Raises:
            InvalidState: if the connection is not OPEN.
            ValueError: if the payload is over 125 bytes.
        """
        self._send_control(Opcode.PONG, payload)

    def send_close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Start the closing handshake; a no-op once a close was sent or received.

        Args:
            code: the close code (1000, 1001, 1003, 1007-1014 or 3000-4999).
            reason: at most 123 bytes of UTF-8.

        Raises:
            ValueError: for a code that must not be sent, or a reason too long.
        """
        if not valid_close_code(code):
            raise ValueError(f"close code {code} must not be sent")
        if len(reason.encode("utf-8")) > MAX_CLOSE_REASON:
            raise ValueError(f"close reason longer than {MAX_CLOSE_REASON} bytes")
        if self._close_sent or self.state is not ConnState.OPEN:
            return
        self._send_close_frame(code, reason)
        self.state = ConnState.CLOSING

    def _send_message(self, opcode: Opcode, payload: bytes) -> None:
        """Queue a data message, compressed when deflate was negotiated."""
        self._require_open(opcode.name)
        if self._codec is not None:
            self._send_frame(Frame(opcode, self._codec.compress(payload), rsv1=True))
        else:
            self._send_frame(Frame(opcode, payload))

    def _send_control(self, opcode: Opcode, payload: bytes) -> None:
        """Queue a ping or pong after checking the §5.5 size rule."""
        self._require_open(opcode.name)
        if len(payload) > 125:
            raise ValueError(f"{opcode.name} payload of {len(payload)} bytes exceeds 125")
        self._send_frame(Frame(opcode, bytes(payload)))

    def _send_close_frame(self, code: int, reason: str) -> None:
        """Queue a close frame and remember that no more frames may follow (§5.5.1)."""
        self._release_held_pong(force=True)
        self._send_frame(Frame(Opcode.CLOSE, close_payload(code, reason)))
        self._close_sent = True

    def _send_frame(self, frame: Frame) -> None:
        """Queue a server frame (unmasked, §5.1): its header, then its payload."""
        if len(frame.payload) < _SEPARATE_PAYLOAD:
            self._small += frame_head(frame)
            self._small += frame.payload
        else:
            self._flush_small()
            self._out += (frame_head(frame), frame.payload)  # bytes: the send_* methods made sure

    def _require_open(self, what: str) -> None:
        """Refuse to send after our close frame was queued (§5.5.1).

        While our close is pending (see ``data_to_send``) sends are still
        allowed: they answer events that arrived before the close or error.
        """
        if self._pending_close is None and (self._close_sent or self.state is not ConnState.OPEN):
            raise InvalidState(f"can't send {what} in state {self.state.name}")
