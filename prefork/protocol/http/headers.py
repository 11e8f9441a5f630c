"""Header fields: the Headers type, block validation, and body-framing rules.

Strategy: a header block is validated and split in one ``findall`` over the
whole block (see ``abnf.FIELD_LINE``); only when that fails do we walk the
lines in Python to say which line is wrong and why. Names and values are kept
exactly as received (values trimmed of OWS), in order, duplicates kept, so the
application sees what the client sent. The framing decision (RFC 9112 §6)
then makes one pass over the pairs, looking only at the handful of fields that
decide message framing and connection handling, and is strict in every case
where two parsers could disagree about where the body ends (request
smuggling): duplicate or list Content-Length, Transfer-Encoding together with
Content-Length, chunked not final or repeated, and Transfer-Encoding in
HTTP/1.0 are all rejected.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from prefork.protocol.buffer import ReceiveBuffer
from prefork.protocol.errors import BadRequest, HeadersTooLarge, NotImplementedCoding, describe
from prefork.protocol.http.abnf import FIELD_LINE, FIELD_NAME, FIELD_VALUE
from prefork.protocol.http.target import check_host

__all__ = ["EMPTY_HEADERS", "Framing", "Headers", "check_line_ends", "decide_framing", "parse_fields"]

Pair = tuple[bytes, bytes]
# (content_length, chunked, keep_alive, expects_continue, upgrade)
Framing = tuple[int | None, bool, bool, bool, bytes | None]

# A Content-Length of 19 digits may exceed 2**63 - 1; 18 digits (about 1 EB)
# is more than any real body and keeps int() trivially cheap.
_MAX_CL_DIGITS = 18

# A field line whose (lower-cased) name decides framing or connection handling.
# Every LF in a validated head starts a field line, so "\n" + name + ":" is
# exact (no whitespace before the colon is allowed, RFC 9112 §5.1).
_SPECIAL_LINE = re.compile(rb"\n(content-length|transfer-encoding|host|connection|expect|upgrade):")


class Headers:
    """Ordered header fields, as received.

    Names keep their case; lookups are case-insensitive (RFC 9110 §5.1).
    Instances are treated as immutable once built.
    """

    __slots__ = ("_raw",)

    def __init__(self, raw: list[Pair] | None = None) -> None:
        """Wrap a list of (name, value) pairs.

        Args:
            raw: the pairs, in wire order; the list is kept, not copied.
        """
        self._raw: list[Pair] = raw if raw is not None else []

    @property
    def raw(self) -> list[Pair]:
        """The (name, value) pairs in wire order."""
        return self._raw

    def get(self, name: bytes, default: bytes | None = None) -> bytes | None:
        """Return the first value of ``name`` (case-insensitive), or ``default``.

        Args:
            name: the field name.
            default: returned when the field is absent.

        Returns:
            The first value or ``default``.
        """
        lname = name.lower()
        for n, v in self._raw:
            if n.lower() == lname:
                return v
        return default

    def get_all(self, name: bytes) -> list[bytes]:
        """Return every value of ``name`` (case-insensitive), in order.

        Args:
            name: the field name.

        Returns:
            The values, possibly empty.
        """
        lname = name.lower()
        return [v for n, v in self._raw if n.lower() == lname]

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, (bytes, bytearray)):
            return False
        lname = bytes(name).lower()
        return any(n.lower() == lname for n, _ in self._raw)

    def __len__(self) -> int:
        return len(self._raw)

    def __iter__(self) -> Iterator[Pair]:
        return iter(self._raw)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Headers):
            return self._raw == other._raw
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Headers({self._raw!r})"


EMPTY_HEADERS = Headers([])


def parse_fields(data: bytes, pos: int, end: int, max_count: int) -> list[Pair]:
    """Validate and split the field lines in ``data[pos:end]``.

    ``data[pos - 1]`` must be the LF ending the previous line (the request line,
    or a synthetic one for trailers) and ``data[end - 2:end]`` the CRLF ending
    the last field line.

    Args:
        data: the buffer holding the block.
        pos: offset of the first field line.
        end: offset just past the last field line's CRLF.
        max_count: most fields allowed.

    Returns:
        The (name, value) pairs.

    Raises:
        BadRequest: a malformed line (obs-fold, bare CR or LF, CTL, bad name).
        HeadersTooLarge: more than ``max_count`` fields.
    """
    pairs: list[Pair] = FIELD_LINE.findall(data, pos, end)
    if len(pairs) != data.count(b"\n", pos, end):
        _diagnose(data[pos:end])
    if len(pairs) > max_count:
        raise HeadersTooLarge(f"too many header fields: {len(pairs)} > {max_count}")
    return pairs


def check_line_ends(buf: ReceiveBuffer, start: int, scan: int, stop: int, max_count: int) -> None:
    """Reject a field block still arriving as soon as a line in it ends in bare LF.

    Only ``buf[scan:stop]`` is new since the last call: each LF there must
    follow a CR, and counting both keeps the check O(new bytes) and loop-free.
    On a mismatch the lines so far are parsed, so the error names the first bad
    line, exactly as parsing the finished block would.

    Args:
        buf: the receive buffer.
        start: offset of the block's first field line (after an LF, or 0).
        scan: where the bytes not yet checked begin.
        stop: where to stop checking.
        max_count: most fields allowed (passed on to ``parse_fields``).

    Raises:
        BadRequest: a line ends in bare LF (or an earlier line is malformed).
    """
    scan = max(scan, start)
    if scan < stop and buf.count(b"\n", scan, stop) != buf.count(b"\r\n", max(scan - 1, start), stop):
        parse_fields(b"\n" + buf.peek(start, stop), 1, stop - start + 1, max_count)


def _diagnose(block: bytes) -> None:
    """Raise BadRequest naming the first bad line of a block that failed to parse."""
    for line in block.split(b"\n")[:-1]:
        if not line.endswith(b"\r"):
            # RFC 9112 §2.2 lets us treat bare LF as a line end; we reject it
            # because a front end that does not would see different lines.
            raise BadRequest(f"header line ends in bare LF: {describe(line)}")
        if not FIELD_LINE.match(b"\n" + line + b"\n", 1):
            _check_line(line[:-1])
    raise BadRequest(f"illegal header block: {describe(block)}")  # pragma: no cover


def _check_line(line: bytes) -> None:
    if line[:1] in (b" ", b"\t"):
        # RFC 9112 §5.2: a server MUST reject obs-fold or replace it; we reject.
        raise BadRequest(f"obsolete line folding is not allowed: {describe(line)}")
    name, colon, value = line.partition(b":")
    if not colon:
        raise BadRequest(f"illegal header line: {describe(line)}")
    if not name:
        raise BadRequest(f"empty header name: {describe(line)}")
    if name[-1:] in (b" ", b"\t"):
        # RFC 9112 §5.1: no whitespace between field name and colon; MUST 400.
        raise BadRequest(f"whitespace before colon in header line: {describe(line)}")
    if not FIELD_NAME.fullmatch(name):
        raise BadRequest(f"illegal header name: {describe(name)}")
    stripped = value.strip(b" \t")
    if not FIELD_VALUE.fullmatch(stripped):
        raise BadRequest(f"illegal header value: {describe(stripped)}")
    raise BadRequest(f"illegal header line: {describe(line)}")  # pragma: no cover


def decide_framing(head: bytes, version: bytes) -> Framing:
    """Decide body framing and connection handling for a request head.

    Args:
        head: the complete head, request line to blank line, whose field lines
            ``parse_fields`` has already validated.
        version: ``b"1.1"`` or ``b"1.0"``.

    Returns:
        ``(content_length, chunked, keep_alive, expects_continue, upgrade)``;
        ``content_length`` is None when ``chunked`` is True.

    Raises:
        BadRequest: Host missing, repeated or invalid; bad or conflicting framing.
        NotImplementedCoding: a transfer coding other than chunked.
    """
    # One C-level pass over the lower-cased head finds the few fields that
    # matter; a Python loop over every field costs more than the whole regex.
    found: dict[bytes, list[bytes]] = {}
    for m in _SPECIAL_LINE.finditer(head.lower()):
        start = m.end()
        value = head[start : head.index(b"\r\n", start)].strip(b" \t")
        found.setdefault(m.group(1), []).append(value)
    if not found:
        if version == b"1.1":
            # RFC 9112 §3.2: a server MUST respond 400 to a 1.1 request without Host.
            raise BadRequest("missing Host header")
        return 0, False, False, False, None
    return _framing(found, version)


def _framing(found: dict[bytes, list[bytes]], version: bytes) -> Framing:
    hosts = found.get(b"host", ())
    if len(hosts) > 1:
        raise BadRequest(f"multiple Host headers: {describe(b', '.join(hosts))}")
    if hosts:
        check_host(hosts[0])
    elif version == b"1.1":
        raise BadRequest("missing Host header")
    tokens = _connection_tokens(found.get(b"connection"))
    if version == b"1.1":
        keep_alive = b"close" not in tokens
    else:
        keep_alive = b"keep-alive" in tokens and b"close" not in tokens
    upgrade = None
    if b"upgrade" in tokens and b"upgrade" in found:
        # The first protocol named; empty list elements are allowed and skipped (RFC 9110 §5.6.1).
        named = (t.strip(b" \t").lower() for t in found[b"upgrade"][0].split(b","))
        upgrade = next((t for t in named if t), None)
    # RFC 9110 §10.1.1: a server MUST ignore 100-continue in an HTTP/1.0 request.
    expects = version == b"1.1" and any(v.lower() == b"100-continue" for v in found.get(b"expect", ()))
    te = found.get(b"transfer-encoding")
    if te is not None:
        _check_chunked(te, version, b"content-length" in found)
        return None, True, keep_alive, expects, upgrade
    cls = found.get(b"content-length")
    return _content_length(cls) if cls else 0, False, keep_alive, expects, upgrade


def _connection_tokens(values: list[bytes] | None) -> set[bytes] | tuple[bytes, ...]:
    if not values:
        return ()
    if len(values) == 1 and b"," not in values[0]:
        return (values[0].lower(),)
    return {t.strip(b" \t").lower() for v in values for t in v.split(b",")}


def _content_length(values: list[bytes]) -> int:
    # RFC 9112 §6.3 rule 5: differing or invalid Content-Length MUST be 400. We
    # also reject duplicates and lists of identical values ("5, 5", which RFC
    # 9110 §8.6 only permits): one field, one decimal number, no exceptions.
    if len(values) > 1:
        raise BadRequest(f"multiple Content-Length headers: {describe(b', '.join(values))}")
    value = values[0]
    if not value.isdigit() or len(value) > _MAX_CL_DIGITS:
        raise BadRequest(f"invalid Content-Length: {describe(value)}")
    return int(value)


def _check_chunked(values: list[bytes], version: bytes, has_cl: bool) -> None:
    if version != b"1.1":
        # RFC 9112 §6.1: TE in a 1.0 message means faulty framing.
        raise BadRequest("Transfer-Encoding in an HTTP/1.0 request")
    if has_cl:
        # RFC 9112 §6.1/§6.3 rule 3: both present is a smuggling attempt.
        raise BadRequest("both Transfer-Encoding and Content-Length")
    codings = [c.strip(b" \t").lower() for v in values for c in v.split(b",")]
    codings = [c for c in codings if c]  # RFC 9110 §5.6.1: ignore empty elements
    shown = describe(b", ".join(values))
    if not codings:
        raise BadRequest(f"empty Transfer-Encoding: {shown}")
    if codings[-1] != b"chunked":
        if b"chunked" in codings:
            # RFC 9112 §6.3 rule 4: chunked not final => length unknown => 400.
            raise BadRequest(f"chunked is not the final transfer coding: {shown}")
        raise NotImplementedCoding(f"unsupported transfer coding: {shown}")
    if codings.count(b"chunked") > 1:
        # RFC 9112 §6.1: chunked MUST NOT be applied more than once.
        raise BadRequest(f"chunked applied more than once: {shown}")
    if len(codings) > 1:
        # We decode no coding but chunked; handing a gzip body on undecoded
        # would misrepresent it (RFC 9112 §6.1: SHOULD answer 501).
        raise NotImplementedCoding(f"unsupported transfer coding: {shown}")
