"""Sans-IO incremental HTTP/1.1 request parser.

Strategy: bytes go into one ``ReceiveBuffer``; ``next_event`` turns them into
events. The head is found with two ``find`` calls that resume where the last
attempt stopped (the request line's LF, then the blank line), so a head
trickled one byte at a time costs O(n) in total, and every limit is checked
against the unterminated bytes as they arrive (414/431 before the terminator).
Each check reports what a byte-by-byte reader would meet first (a line ends at
its first LF; a bare LF within a limit beats the limit), so the answer never
depends on how the input was split into reads. The request line is validated
as soon as it is complete (``target.parse_request_line``); the header block is
validated and split by one regex pass (``headers.parse_fields``). Bodies are
read by small reader objects, ``ContentLengthReader`` and ``ChunkedReader``,
that return an event, None ("need data") or raise, as in h11's
``_readers.py``; a reader hands out everything buffered up to its framing
limit in one ``Data`` (merging consecutive chunks), so large bodies cost one
copy out of the buffer per read. States are a small enum; the transitions are
all in ``next_event`` and its helpers. Every ``ProtocolError`` moves the parser
to ERROR for good: the I/O layer answers with ``.status`` and closes.

Policies (see the module tests): one CRLF before a request line is ignored
(RFC 9112 §2.2 SHOULD), a second is a 400; bare LF is rejected everywhere
(RFC 9112 §2.2 MAY accept it, but a front end that does not would see other
lines, so strictness wins); a first byte that cannot start a method (e.g. a
TLS ClientHello, 0x16) is rejected at once.
"""

from __future__ import annotations

import enum

from prefork.protocol.buffer import ReceiveBuffer
from prefork.protocol.errors import BadRequest, BodyTooLarge, HeadersTooLarge, IncompleteBody, ProtocolError, UriTooLong, describe
from prefork.protocol.http.abnf import CHUNK_LINE, TCHAR_BYTES
from prefork.protocol.http.events import ConnectionClosed, Data, EndOfMessage, Request, Signal
from prefork.protocol.http.headers import EMPTY_HEADERS, Headers, check_line_ends, decide_framing, parse_fields
from prefork.protocol.http.target import RequestLine, parse_request_line, with_host
from prefork.protocol.limits import HttpLimits

__all__ = ["ChunkedReader", "ContentLengthReader", "ParserState", "RequestParser", "Signal"]

_END_OF_MESSAGE = EndOfMessage(EMPTY_HEADERS)
# A chunk size with more significant hex digits than this could not be
# buffered by anyone; the cap keeps int() bounded (2**60 bytes).
_MAX_CHUNK_DIGITS = 15
_TLS_HANDSHAKE = 0x16  # TLS record type "handshake" (RFC 8446 §5.1)


class ParserState(enum.Enum):
    """Where the parser is in the request/response cycle."""

    IDLE = 1  # waiting for (or reading) a request head
    BODY = 2  # reading a body
    DONE = 3  # message complete; waiting for start_next_cycle()
    UPGRADED = 4  # message with Upgrade complete; the rest is another protocol
    CLOSED = 5  # the peer closed cleanly between requests
    ERROR = 6  # a ProtocolError was raised; nothing more will parse


class ContentLengthReader:
    """Body reader for ``Content-Length`` framing (RFC 9112 §6.2)."""

    __slots__ = ("remaining",)

    def __init__(self, length: int) -> None:
        """Args: length: declared body length."""
        self.remaining = length

    def __call__(self, buf: ReceiveBuffer, eof: bool) -> Data | EndOfMessage | None:
        """Return the next body event, or None if more data is needed.

        Args:
            buf: the receive buffer.
            eof: whether the peer has closed.

        Returns:
            Data with everything buffered up to the declared length, then
            EndOfMessage; None when the buffer is empty.

        Raises:
            IncompleteBody: EOF before the declared length.
        """
        remaining = self.remaining
        if not remaining:
            return _END_OF_MESSAGE
        if not len(buf):
            if eof:
                raise IncompleteBody(f"connection closed with {remaining} body bytes outstanding")
            return None
        data = buf.take(remaining)
        self.remaining = remaining - len(data)
        return Data(data)


class _Chunk(enum.Enum):
    SIZE = 1
    DATA = 2
    DATA_END = 3
    TRAILER = 4


class ChunkedReader:
    """Body reader for chunked transfer coding (RFC 9112 §7.1)."""

    __slots__ = ("_error", "_limits", "_remaining", "_scan", "_state", "_total")

    def __init__(self, limits: HttpLimits) -> None:
        """Args: limits: chunk-line, trailer and body-size limits."""
        self._limits = limits
        self._state = _Chunk.SIZE
        self._remaining = 0  # bytes left in the current chunk
        self._total = 0  # body bytes declared so far, for max_body_size
        self._scan = 0  # where the next CRLF search resumes
        self._error: ProtocolError | None = None  # deferred until buffered data is out

    def __call__(self, buf: ReceiveBuffer, eof: bool) -> Data | EndOfMessage | None:
        """Return the next body event, or None if more data is needed.

        Data from several buffered chunks is merged into one event.

        Args:
            buf: the receive buffer.
            eof: whether the peer has closed.

        Returns:
            Data, EndOfMessage (with trailers), or None.

        Raises:
            BadRequest: malformed chunk line or missing CRLF after chunk data.
            BodyTooLarge: the chunk sizes add up past ``max_body_size``.
            HeadersTooLarge: the trailer block is too large.
            IncompleteBody: EOF inside the body.
        """
        if self._error is not None:
            raise self._error
        pieces: list[bytes] = []
        try:
            return self._advance(buf, eof, pieces)
        except ProtocolError as exc:
            if not pieces:
                raise
            # Hand out the data that preceded the fault first, so the events
            # do not depend on how the input was split; raise on the next call.
            self._error = exc
            return Data(b"".join(pieces))

    def _advance(self, buf: ReceiveBuffer, eof: bool, pieces: list[bytes]) -> Data | EndOfMessage | None:
        # One loop over the chunk states; kept together because it is the hot
        # path for chunked uploads and a call per state would double its cost.
        while True:
            state = self._state
            if state is _Chunk.DATA:
                if not len(buf):
                    break
                piece = buf.take(self._remaining)
                pieces.append(piece)
                self._remaining -= len(piece)
                if self._remaining:
                    break
                self._state = _Chunk.DATA_END
            elif state is _Chunk.DATA_END:
                # Reject at the first wrong byte (a bare LF must not wait for a
                # second byte that may never come) and show just that far.
                n = len(buf)
                if n and buf.byte_at(0) != 0x0D:
                    raise BadRequest(f"chunk data not followed by CRLF: {describe(buf.peek(0, 1))}")
                if n < 2:
                    break
                if buf.byte_at(1) != 0x0A:
                    raise BadRequest(f"chunk data not followed by CRLF: {describe(buf.peek(0, 2))}")
                buf.skip(2)
                self._state = _Chunk.SIZE
            elif state is _Chunk.SIZE:
                if not self._read_size_line(buf):
                    break
            else:
                if pieces:
                    break  # hand out the data first; trailers on the next call
                event = self._read_trailers(buf)
                if event is not None:
                    return event
                break
        if pieces:
            return Data(pieces[0] if len(pieces) == 1 else b"".join(pieces))
        if eof:
            raise IncompleteBody("connection closed in the middle of a chunked body")
        return None

    def _read_size_line(self, buf: ReceiveBuffer) -> bool:
        # The line ends at its first LF, which must follow a CR. Judging by the
        # LF's position alone gives the same answer however the line was split:
        # "too long" if it lies past the limit, else bare LF or the line itself.
        limit = self._limits.max_chunk_line
        lf = buf.find(b"\n", self._scan)
        if lf < 0:
            n = len(buf)
            if n > limit + 1:
                raise BadRequest(f"chunk size line too long (limit {limit} bytes)")
            self._scan = n
            return False
        if lf > limit + 1:
            raise BadRequest(f"chunk size line too long (limit {limit} bytes)")
        line = buf.peek(0, lf + 1)
        if line[-2:] != b"\r\n":
            raise BadRequest(f"chunk size line ends in bare LF: {describe(line)}")
        m = CHUNK_LINE.fullmatch(line)
        if m is None:
            raise BadRequest(f"invalid chunk size line: {describe(line[:-2])}")
        digits = m.group(1)
        if len(digits.lstrip(b"0")) > _MAX_CHUNK_DIGITS:
            raise BadRequest(f"chunk size too large: {describe(digits)}")
        size = int(digits, 16)
        self._total += size
        max_body = self._limits.max_body_size
        if max_body is not None and self._total > max_body:
            raise BodyTooLarge(f"chunked body exceeds the limit of {max_body} bytes")
        buf.skip(lf + 1)
        self._scan = 0
        if size:
            self._state, self._remaining = _Chunk.DATA, size
        else:
            self._state = _Chunk.TRAILER
        return True

    def _read_trailers(self, buf: ReceiveBuffer) -> EndOfMessage | None:
        # trailer-section = *( field-line CRLF ) CRLF (RFC 9112 §7.1.2). Trailers
        # are returned apart from the headers; never merged (RFC 9110 §6.5.1).
        n = len(buf)
        if n >= 2 and buf.find(b"\r\n", 0, 2) == 0:
            buf.skip(2)
            return _END_OF_MESSAGE
        limit = self._limits.max_trailer_bytes
        idx = buf.find(b"\r\n\r\n", self._scan)
        if idx < 0 or idx + 2 > limit:
            # Unterminated or too large: a bare LF within the limit is what a
            # byte-by-byte reader would have met first, so it wins over 431.
            check_line_ends(buf, 0, self._scan, min(n, limit + 2), self._limits.max_header_count)
            if n > limit + 2:
                raise HeadersTooLarge(f"trailer block too large (limit {limit} bytes)")
            self._scan = max(n - 3, 0)
            return None
        block = b"\n" + buf.take(idx + 4)  # the LF anchors the first field line
        pairs = parse_fields(block, 1, idx + 3, self._limits.max_header_count)
        return EndOfMessage(Headers(pairs))


_Reader = ContentLengthReader | ChunkedReader


class RequestParser:
    """Incremental HTTP/1.1 request parser: feed bytes, pull events."""

    __slots__ = ("_buf", "_eof", "_error", "_limits", "_line", "_line_end", "_reader", "_scan", "_skipped_crlf",
                 "_upgrade", "state")

    def __init__(self, limits: HttpLimits = HttpLimits()) -> None:
        """Create a parser in state IDLE.

        Args:
            limits: request-line, header, body and chunk limits.
        """
        self._limits = limits
        self._buf = ReceiveBuffer()
        self._eof = False
        self._error: ProtocolError | None = None
        self._reader: _Reader = ContentLengthReader(0)
        self._upgrade = False
        self.state = ParserState.IDLE
        self._reset_head()

    def _reset_head(self) -> None:
        self._line: RequestLine | None = None  # method, target, version, target's host
        self._line_end = -1  # offset of the request line's CRLF once found
        self._scan = 0  # offset where the next search resumes
        self._skipped_crlf = False

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes; an empty ``data`` means the peer closed (EOF).

        Args:
            data: the bytes received; copied, so the caller may reuse its buffer.

        Raises:
            RuntimeError: data fed after EOF.
        """
        if self._eof:
            if not len(data):
                return
            raise RuntimeError("can't feed data after EOF")
        if len(data):
            self._buf.feed(data)
        else:
            self._eof = True

    @property
    def buffered(self) -> int:
        """Bytes currently buffered and not yet returned as events."""
        return len(self._buf)

    @property
    def trailing_data(self) -> bytes:
        """Bytes buffered after an Upgrade request: the first bytes of the new protocol.

        Raises:
            RuntimeError: the parser is not in state UPGRADED.
        """
        if self.state is not ParserState.UPGRADED:
            raise RuntimeError(f"can't take trailing data in state {self.state.name}")
        return bytes(self._buf)

    def direct_body_remaining(self) -> int:
        """Body bytes the caller may hand straight to its sink instead of feeding them.

        While a Content-Length body is being read and nothing is buffered, the
        bytes that follow are body bytes, up to the declared length: an I/O
        layer can receive them into its own buffer and write them on, saving
        the buffer's two copies (see ``consume_body``).

        Returns:
            The outstanding body length, or 0 when bytes must go through ``feed``.
        """
        reader = self._reader
        if self.state is ParserState.BODY and type(reader) is ContentLengthReader and not len(self._buf):
            return reader.remaining
        return 0

    def consume_body(self, n: int) -> None:
        """Account for ``n`` body bytes the caller took directly.

        Args:
            n: at most ``direct_body_remaining()``.

        Raises:
            RuntimeError: more bytes than the body has outstanding, or not in a body.
        """
        if not 0 <= n <= self.direct_body_remaining():
            raise RuntimeError(f"can't consume {n} body bytes in state {self.state.name}")
        self._reader.remaining -= n  # type: ignore[union-attr]

    def start_next_cycle(self) -> None:
        """Go from DONE back to IDLE to parse the next (possibly pipelined) request.

        Raises:
            RuntimeError: the parser is not in state DONE.
        """
        if self.state is not ParserState.DONE:
            raise RuntimeError(f"can't start a new cycle in state {self.state.name}")
        self.state = ParserState.IDLE
        self._reset_head()

    def decline_upgrade(self) -> None:
        """Go from UPGRADED to DONE when the server answers without switching protocols.

        Raises:
            RuntimeError: the parser is not in state UPGRADED.
        """
        if self.state is not ParserState.UPGRADED:
            raise RuntimeError(f"can't decline an upgrade in state {self.state.name}")
        self.state = ParserState.DONE

    def next_event(self) -> Request | Data | EndOfMessage | ConnectionClosed | Signal:
        """Return the next event, or a Signal when none can be produced yet.

        Returns:
            Request, Data, EndOfMessage or ConnectionClosed; Signal.NEED_DATA
            when more bytes are needed; Signal.PAUSED in DONE or UPGRADED.

        Raises:
            ProtocolError: the input is not acceptable; ``.status`` says how
                to answer. The parser stays in ERROR and raises it again.
        """
        state = self.state
        event: Request | Data | EndOfMessage | ConnectionClosed | None
        try:
            if state is ParserState.BODY:
                event = self._reader(self._buf, self._eof)
                if event.__class__ is EndOfMessage:
                    self.state = ParserState.UPGRADED if self._upgrade else ParserState.DONE
            elif state is ParserState.IDLE:
                event = self._read_head()
            elif state is ParserState.ERROR:
                assert self._error is not None
                raise self._error
            elif state is ParserState.CLOSED:
                return ConnectionClosed()
            else:
                return Signal.PAUSED
        except ProtocolError as exc:
            self.state = ParserState.ERROR
            self._error = exc
            raise
        return Signal.NEED_DATA if event is None else event

    def _read_head(self) -> Request | ConnectionClosed | None:
        buf = self._buf
        if self._line is None:
            if not self._read_request_line():
                if not len(buf) and self._eof:
                    self.state = ParserState.CLOSED
                    return ConnectionClosed()
                if self._eof:
                    raise BadRequest("connection closed in the middle of a request head")
                return None
        limits = self._limits
        line_end = self._line_end
        end = buf.find(b"\r\n\r\n", max(self._scan, line_end))
        if end < 0 or end - line_end > limits.max_header_bytes:
            self._check_partial_block()  # raises 431 for a complete block that is too large
            if self._eof:
                raise BadRequest("connection closed in the middle of a request head")
            return None
        head = buf.take(end + 4)
        pairs = parse_fields(head, line_end + 2, end + 2, limits.max_header_count) if end > line_end else []
        return self._start_body(head, pairs)

    def _start_body(self, head: bytes, pairs: list[tuple[bytes, bytes]]) -> Request:
        assert self._line is not None
        method, target, version, target_host = self._line
        content_length, chunked, keep_alive, expects, upgrade = decide_framing(head, version)
        if target_host is not None:
            pairs = with_host(pairs, target_host)
        max_body = self._limits.max_body_size
        if max_body is not None and content_length is not None and content_length > max_body:
            raise BodyTooLarge(f"declared body of {content_length} bytes exceeds the limit of {max_body} bytes")
        self._reader = ChunkedReader(self._limits) if chunked else ContentLengthReader(content_length or 0)
        self._upgrade = upgrade is not None
        self.state = ParserState.BODY
        self._reset_head()
        return Request(method, target, version, Headers(pairs), keep_alive, expects, upgrade, content_length, chunked)

    def _read_request_line(self) -> bool:
        """Find and validate the request line; False if more data is needed."""
        buf = self._buf
        if not len(buf):
            return False
        first = buf.byte_at(0)
        if first not in TCHAR_BYTES:
            if first == 0x0D and not self._skipped_crlf:
                # RFC 9112 §2.2: SHOULD ignore at least one empty line before
                # the request line (old clients send CRLF after a POST body).
                if len(buf) < 2:
                    return False
                if buf.byte_at(1) == 0x0A:
                    buf.skip(2)
                    self._skipped_crlf = True
                    return self._read_request_line()
            if first == _TLS_HANDSHAKE:
                raise BadRequest("TLS handshake received on a plain HTTP port")
            raise BadRequest(f"invalid first byte of a request line: {describe(bytes([first]))}")
        # The line ends at its first LF. Its position alone decides between 414
        # (past the limit) and the line's own verdict (bare LF, bad syntax), so
        # the answer does not depend on how the line was split into reads.
        lf = buf.find(b"\n", self._scan)
        max_line = self._limits.max_request_line
        if lf < 0:
            n = len(buf)
            if n > max_line + 1:
                raise UriTooLong(_too_long(max_line, buf.peek(0, min(40, max_line))))
            self._scan = n
            return False
        if lf > max_line + 1:
            raise UriTooLong(_too_long(max_line, buf.peek(0, min(40, max_line))))
        line = buf.peek(0, lf + 1)
        if line[-2:] != b"\r\n":
            raise BadRequest(f"request line ends in bare LF: {describe(line)}")
        self._line = parse_request_line(line)
        self._line_end = self._scan = lf - 1
        return True

    def _check_partial_block(self) -> None:
        """Catch bare LF, then enforce the size limit, on a block not yet accepted.

        In that order, and a bare LF only within the limit: that is what a
        byte-by-byte reader meets first, so whole and trickled input agree.
        """
        buf = self._buf
        n = len(buf)
        start = self._line_end + 2
        limit = self._limits.max_header_bytes
        check_line_ends(buf, start, self._scan, min(n, start + limit + 2), self._limits.max_header_count)
        if n - start > limit + 2:
            raise HeadersTooLarge(f"header block too large (limit {limit} bytes)")
        self._scan = max(n - 3, self._line_end)


def _too_long(max_line: int, prefix: bytes) -> str:
    # Show a prefix no longer than the limit, so the message is the same however
    # the line was split into reads.
    return f"request line too long (limit {max_line} bytes): {describe(prefix)}..."

