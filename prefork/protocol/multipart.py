"""Sans-IO streaming multipart/form-data parser (RFC 7578, RFC 2046 §5.1).

Strategy: bytes in, events out. ``feed()`` appends to one bytearray and runs
a small state machine (PREAMBLE -> HEADERS -> BODY -> ... -> EPILOGUE). In the
body we search for the delimiter ``CRLF--boundary`` with ``bytearray.find``
from a remembered position, hand out everything before it as one ``PartData``
slice, and keep back only the bytes that could still be the start of a
delimiter (the defnull/multipart technique). There is no per-byte Python loop,
so large file parts pass through at memcpy-like speed. The very first
delimiter may come without a CRLF (RFC 2046 §5.1.1: the CRLF belongs to the
delimiter, and there is none before the first one), so the buffer starts with
a virtual CRLF.

Policies (chosen on purpose, tested):
- ``CRLF--boundary`` followed by anything other than ``--`` or transport
  padding (LWSP) + CRLF is not a delimiter line (RFC 2046 §5.1.1 grammar) and
  stays part of the data; the padding is capped at ``MAX_PADDING`` bytes.
- Part header lines must end in CRLF; a bare CR or LF inside the header block
  is rejected (defnull/multipart strict mode), as is obs-fold.
- Too many parts -> ``BodyTooLarge`` (413), like FormLimits documents; a too
  large part header block -> ``HeadersTooLarge`` (431); anything malformed ->
  ``MultipartError`` (400). Errors are final: the parser then refuses input.
- Header names are reported lower-cased; values are decoded as UTF-8 (what
  browsers send, HTML §4.10.21.8) with a Latin-1 fallback.
- No "last one wins": a part with two Content-Disposition (or Content-Type)
  headers, and a repeated parameter (``name``, ``filename``, ``boundary``,
  ...) in either or in the request's Content-Type, are 400 (RFC 6266 §4.1,
  RFC 6838 §4.3), since two readers could take different ones.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from prefork.protocol.errors import BodyTooLarge, HeadersTooLarge, MultipartError, describe
from prefork.protocol.limits import FormLimits
from prefork.protocol.mediatype import HeaderValue, parse_header_value, parse_options_header

__all__ = [
    "MultipartParser",
    "PartData",
    "PartEnd",
    "PartStart",
    "parse_boundary",
    "parse_options_header",
]

#: Longest transport padding accepted after a delimiter. RFC 2046 sets no
#: bound; real clients send none, and a bound keeps held-back bytes finite.
MAX_PADDING = 256
#: A buffer up to this size is kept between feeds and reused; a larger one (a
#: large feed) is given up once its bytes are consumed, keeping only the
#: unconsumed tail. A server feeds every connection's chunks one after the
#: other, so the allocator hands the block just freed to the next feed: one
#: large block per process instead of one per connection (measured: 1.5 MiB
#: per upload, 21-26 MiB per worker with 20 uploads each).
KEEP_BUFFER = 64 * 1024

# RFC 2046 §5.1.1: boundary := 0*69<bchars> bcharsnospace
_BOUNDARY_RE = re.compile(rb"[0-9A-Za-z'()+_,\-./:=? ]{0,69}[0-9A-Za-z'()+_,\-./:=?]")
# RFC 9110 §5.6.2: token = 1*tchar
_TOKEN_RE = re.compile(rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


@dataclass(frozen=True, slots=True)
class PartStart:
    """A part begins; its headers are complete.

    Attributes:
        name: the form field name (Content-Disposition ``name``).
        filename: the filename as sent, or None for a non-file field.
        content_type: the part's Content-Type header, or None.
        headers: all part headers as (lower-cased name, value) pairs.
    """

    name: str
    filename: str | None
    content_type: str | None
    headers: list[tuple[str, str]]


@dataclass(frozen=True, slots=True)
class PartData:
    """A slice of the current part's body.

    ``data`` is bytes, or with ``zero_copy`` a memoryview valid until the next ``feed()``.
    """

    data: bytes | memoryview


@dataclass(frozen=True, slots=True)
class PartEnd:
    """The current part is complete."""


Event = PartStart | PartData | PartEnd


class _State(enum.Enum):
    PREAMBLE = 1
    HEADERS = 2
    BODY = 3
    EPILOGUE = 4
    ENDED = 5
    ERROR = 6


def _parameters(value: str, what: str) -> HeaderValue:
    """Parse a header value; a repeated parameter is invalid (RFC 6838 §4.3, RFC 6266 §4.1)."""
    parsed = parse_header_value(value)
    if parsed.repeated:
        raise MultipartError(
            f"repeated parameter {parsed.repeated[0]!r} in {what}: {describe(value.encode('utf-8', 'replace'))}")
    return parsed


def parse_boundary(content_type: str | bytes) -> bytes:
    """Extract and validate the boundary of a multipart Content-Type.

    Args:
        content_type: the request's Content-Type header value.

    Returns:
        The boundary as bytes (without the leading ``--``).

    Raises:
        MultipartError: not multipart, a repeated parameter, or the boundary is
            missing, empty, longer than 70 characters, or has characters outside
            RFC 2046 §5.1.1 bchars.
    """
    text = content_type.decode("latin-1") if isinstance(content_type, bytes) else content_type
    parsed = _parameters(text, "multipart content type")
    if not parsed.main.startswith("multipart/"):
        raise MultipartError(f"not a multipart content type: {describe(text.encode('utf-8', 'replace'))}")
    boundary = parsed.params.get("boundary")
    if boundary is None:
        raise MultipartError("multipart content type without boundary")
    raw = boundary.encode("utf-8", "replace")
    if not _BOUNDARY_RE.fullmatch(raw):
        raise MultipartError(f"invalid multipart boundary: {describe(raw, 80)}")
    return raw


def _parse_part_headers(block: bytes) -> list[tuple[str, str]]:
    """Parse a part's header block (lines without the final empty line)."""
    headers: list[tuple[str, str]] = []
    for line in block.split(b"\r\n") if block else []:
        if b"\r" in line or b"\n" in line:
            raise MultipartError(f"bare CR or LF in part header: {describe(line)}")
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN_RE.fullmatch(name):
            # Also rejects obs-fold (a line starting with SP/HT), RFC 9112 §5.2.
            raise MultipartError(f"invalid part header line: {describe(line)}")
        try:
            text = value.strip(b" \t").decode("utf-8")
        except UnicodeDecodeError:
            text = value.strip(b" \t").decode("latin-1")
        headers.append((name.decode("ascii").lower(), text))
    return headers


def _single(headers: list[tuple[str, str]], name: str) -> str | None:
    """The value of a header a part may have at most once."""
    values = [value for key, value in headers if key == name]
    if len(values) > 1:
        raise MultipartError(f"part has {len(values)} {name} headers")
    return values[0] if values else None


def _part_start(headers: list[tuple[str, str]]) -> PartStart:
    """Build a PartStart from headers; RFC 7578 §4.2 requires form-data with a name."""
    disposition = _single(headers, "content-disposition")
    if disposition is None:
        raise MultipartError("part without Content-Disposition header")
    parsed = _parameters(disposition, "part Content-Disposition")
    if parsed.main != "form-data" or "name" not in parsed.params:
        raise MultipartError(
            f"part Content-Disposition is not form-data with a name: {describe(disposition.encode())}"
        )
    content_type = _single(headers, "content-type")
    if content_type is not None:
        _parameters(content_type, "part Content-Type")  # its charset decides how a field decodes
    return PartStart(parsed.params["name"], parsed.params.get("filename"), content_type, headers)


class MultipartParser:
    """Incremental multipart/form-data parser.

    Args:
        boundary: the boundary from ``parse_boundary``.
        limits: part count and header size limits.
        zero_copy: hand out ``PartData.data`` as a memoryview of the parser's
            buffer instead of a bytes copy. Such a view is valid only until the
            next ``feed()``: for consumers that write the data out at once (a
            staging file), it saves a copy and an allocation per chunk.
    """

    def __init__(self, boundary: bytes, limits: FormLimits = FormLimits(), *, zero_copy: bool = False) -> None:
        if not _BOUNDARY_RE.fullmatch(boundary):
            raise MultipartError(f"invalid multipart boundary: {describe(boundary, 80)}")
        self._limits = limits
        self._delim = b"\r\n--" + bytes(boundary)
        self._zero_copy = zero_copy
        # The unconsumed input is self._buf[self._start:self._end]. The buffer is
        # reused, never resized: CPython reallocates a bytearray (and faults in
        # fresh pages) on every large append after a front delete, which cost
        # more than the parsing itself. Past KEEP_BUFFER it is given up after
        # each feed instead (see _shrink). The virtual CRLF lets the first
        # delimiter match without one (see Strategy).
        self._buf = bytearray(b"\r\n")
        self._start = 0
        self._end = 2
        self._scan = 0  # HEADERS: where the next CRLFCRLF search starts (absolute index)
        self._state = _State.PREAMBLE
        self._parts = 0

    @property
    def complete(self) -> bool:
        """True once the close delimiter was seen."""
        return self._state in (_State.EPILOGUE, _State.ENDED)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Event]:
        """Feed body bytes and return the events they complete.

        Args:
            data: the next bytes; ``b""`` means end of input.

        Returns:
            PartStart / PartData / PartEnd events in order (possibly none).

        Raises:
            MultipartError: malformed body, or end of input before the close delimiter.
            BodyTooLarge: more than ``limits.max_parts`` parts.
            HeadersTooLarge: a part header block over ``limits.max_part_header_bytes``.
        """
        if self._state in (_State.ENDED, _State.ERROR):
            raise MultipartError(f"can't feed data in state {self._state.name}")
        if not data:
            return self._end_of_input()
        if self._state is _State.EPILOGUE:
            return []  # RFC 2046 §5.1.1: the epilogue is ignored
        self._append(data)
        events: list[Event] = []
        try:
            while self._step(events):
                pass
        except Exception:
            self._state = _State.ERROR
            raise
        self._shrink()
        return events

    @property
    def buffer_size(self) -> int:
        """Bytes of buffer held between feeds: at most KEEP_BUFFER, or twice the
        unconsumed bytes (a part header block, or a possible delimiter)."""
        return len(self._buf)

    def _shrink(self) -> None:
        """Give up a large, mostly consumed buffer, keeping a copy of the unconsumed bytes.

        Views handed out by this feed keep the old buffer alive until they go.
        """
        if len(self._buf) > KEEP_BUFFER and 2 * (self._end - self._start) < len(self._buf):
            self._buf = self._buf[self._start : self._end]
            self._scan = max(0, self._scan - self._start)
            self._start, self._end = 0, len(self._buf)

    def _append(self, data: bytes | bytearray | memoryview) -> None:
        """Copy ``data`` behind the unconsumed bytes, moving those to the front first."""
        size = memoryview(data).nbytes
        if self._end + size > len(self._buf):
            kept = self._end - self._start
            if kept + size > len(self._buf):
                # A new buffer rather than a resize: views handed out by the last
                # feed() may still exist, and an exported bytearray can't resize.
                if kept + size >= 2 * len(self._buf):
                    # Exactly the size needed: built by concatenation, not zero-filled first.
                    self._buf = self._buf[self._start : self._end] + data
                    self._scan = max(0, self._scan - self._start)
                    self._start, self._end = 0, len(self._buf)
                    return
                grown = bytearray(2 * len(self._buf))
                grown[:kept] = memoryview(self._buf)[self._start : self._end]
                self._buf = grown
            else:
                self._buf[:kept] = self._buf[self._start : self._end]
            self._scan = max(0, self._scan - self._start)
            self._start, self._end = 0, kept
        # Through a memoryview: a bytearray's own slice assignment first copies
        # any operand that is not a bytearray.
        with memoryview(self._buf) as view:
            view[self._end : self._end + size] = data
        self._end += size

    def close(self) -> None:
        """Release the buffer.

        Raises:
            MultipartError: the close delimiter was never seen.
        """
        complete = self.complete
        self._release()
        if not complete:
            self._state = _State.ERROR
            raise MultipartError("multipart body ended before the closing delimiter")
        self._state = _State.ENDED

    def _release(self) -> None:
        self._buf = bytearray()
        self._start = self._end = self._scan = 0

    def _end_of_input(self) -> list[Event]:
        if not self.complete:
            state = self._state.name
            self._state = _State.ERROR
            raise MultipartError(f"multipart body ended before the closing delimiter (in {state})")
        self._state = _State.ENDED
        self._release()
        return []

    def _step(self, events: list[Event]) -> bool:
        """Run the handler of the current state; True if it made progress."""
        if self._state is _State.HEADERS:
            return self._read_headers(events)
        if self._state is _State.EPILOGUE:
            self._release()
            return False
        return self._read_until_delimiter(events)

    def _read_until_delimiter(self, events: list[Event]) -> bool:
        """PREAMBLE/BODY: pass data on (or drop it), stop at a real delimiter."""
        buf, delim, end = self._buf, self._delim, self._end
        # What is unconsumed here is a possible delimiter (< len(delim) +
        # MAX_PADDING bytes) plus the new input; rescanning it keeps the logic simple.
        pos = self._start
        while True:
            at = buf.find(delim, pos, end)
            if at < 0:
                self._emit(events, self._safe_end(), consumed=None)
                return False
            after = self._delimiter_end(at + len(delim))
            if after is None:  # can't decide yet: keep the candidate
                self._emit(events, at, consumed=None)
                return False
            if after >= 0:
                break
            pos = at + 1  # boundary-like bytes inside the data
        close = buf[at + len(delim) : at + len(delim) + 2] == b"--"
        self._emit(events, at, consumed=after)
        if self._state is _State.BODY:
            events.append(PartEnd())
        if close:
            self._state = _State.EPILOGUE
            return True
        self._parts += 1
        if self._parts > self._limits.max_parts:
            raise BodyTooLarge(f"multipart body has more than {self._limits.max_parts} parts")
        self._state = _State.HEADERS
        return True

    def _emit(self, events: list[Event], stop: int, *, consumed: int | None) -> None:
        """Hand out buf[start:stop] as data (dropped in the preamble) and consume it.

        With ``consumed`` set, bytes up to there (the delimiter line) go too,
        except the delimiter line's CRLF, which starts the header block.
        """
        if stop > self._start and self._state is _State.BODY:
            view = memoryview(self._buf)[self._start : stop]
            events.append(PartData(view if self._zero_copy else view.tobytes()))
        self._start = stop if consumed is None else consumed - 2

    def _safe_end(self) -> int:
        """Bytes before this index can't be part of a delimiter that is still arriving."""
        buf, delim, end = self._buf, self._delim, self._end
        start = max(self._start, end - len(delim) + 1)
        while True:
            cr = buf.find(b"\r", start, end)
            if cr < 0:
                return end
            if delim.startswith(buf[cr:end]):
                return cr
            start = cr + 1

    def _delimiter_end(self, pos: int) -> int | None:
        """Classify the bytes after ``CRLF--boundary`` at ``pos`` (RFC 2046 §5.1.1).

        Returns:
            The index just past the delimiter line's CRLF (or past ``--`` for the
            close delimiter), -1 when this is not a delimiter, None if more bytes
            are needed to tell.
        """
        buf, end = self._buf, self._end
        tail = buf[pos : min(pos + 2, end)]
        if tail == b"--":
            return pos + 2
        if tail == b"-":
            return None
        window = buf[pos : min(pos + MAX_PADDING + 2, end)]
        stop = pos + len(window) - len(window.lstrip(b" \t"))  # LWSP, RFC 2046 §5.1.1
        if stop - pos > MAX_PADDING:
            raise MultipartError(f"transport padding after delimiter exceeds {MAX_PADDING} bytes")
        line_end = buf[stop : min(stop + 2, end)]
        if line_end == b"\r\n":
            return stop + 2
        if line_end == b"" or line_end == b"\r":
            return None
        return -1

    def _read_headers(self, events: list[Event]) -> bool:
        """HEADERS: the unconsumed bytes start with the delimiter line's CRLF."""
        buf, start, end = self._buf, self._start, self._end
        limit = self._limits.max_part_header_bytes
        if buf.startswith(b"\r\n\r\n", start, end):
            size = 0  # a part with no headers at all; rejected below for lack of a name
        else:
            found = buf.find(b"\r\n\r\n", max(start, self._scan - 3), end)
            if found < 0:
                if end - start - 2 > limit + 3:  # + 3: a terminator may be arriving
                    raise HeadersTooLarge(
                        f"part header block exceeds limit of {limit} bytes: {describe(buf[start + 2 : end])}"
                    )
                self._scan = end
                return False
            size = found - start - 2
        if size > limit:
            raise HeadersTooLarge(f"part header block of {size} bytes exceeds limit of {limit} bytes")
        block = bytes(buf[start + 2 : start + 2 + size])
        events.append(_part_start(_parse_part_headers(block)))
        self._start = start + (size + 6 if size else 4)
        self._scan = self._start
        self._state = _State.BODY
        return True
