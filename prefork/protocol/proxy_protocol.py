"""An incremental parser for the HAProxy PROXY protocol header, versions 1 and 2.

Strategy: the header comes first on the connection, before any HTTP byte
(proxy-protocol.txt §2), and the receiver MUST NOT act on the connection until
it has all of it. ``ProxyHeaderParser.feed`` takes bytes as they arrive and
returns None until the header is complete, then a ``ProxyResult`` saying how
many bytes of that last chunk the header used, so the rest (often the whole
first request, sent in the same segment) goes straight on to the HTTP parser
without being copied here. The first byte decides the version (``P`` starts
v1's ``PROXY``, CR starts v2's signature; §2.2 "identifying the protocol
version"); each later byte is checked as soon as it arrives, so a stray
request, a TLS hello or a v1 line without its CRLF fails at once or at the
107-byte mark (§2.1) rather than waiting. Only header bytes are buffered, and
never more than the limit: 107 for v1, and for v2 the 16-byte fixed part plus
the announced length, which is refused before its first byte is read when it
exceeds ``max_v2_size``. TLVs (§2.2.1-2.2.8) are skipped, not interpreted.
Anything that does not match the protocol exactly raises ``ProxyProtocolError``
(§2.1: such a sequence "must be discarded and cause the receiver to abort").
"""

from __future__ import annotations

import enum
import ipaddress
import re
import struct
from dataclasses import dataclass, replace

from prefork.protocol.errors import BadRequest, describe

__all__ = [
    "DEFAULT_MAX_V2_SIZE",
    "V1_MAX_LINE",
    "V2_SIGNATURE",
    "Endpoint",
    "Family",
    "ProxyHeaderParser",
    "ProxyProtocolError",
    "ProxyResult",
    "Transport",
]

#: v1's longest line, CRLF included: "PROXY UNKNOWN" with two full IPv6
#: addresses and ports (§2.1, "worst case"). No CRLF by then is an error.
V1_MAX_LINE = 107
#: v2 header limit, the 16 fixed bytes included. The length field allows
#: 65,551; nginx stops at 4096 (NGX_PROXY_PROTOCOL_MAX_HEADER), which holds
#: the largest address block (AF_UNIX, 216 bytes) and any TLVs seen in practice.
DEFAULT_MAX_V2_SIZE = 4096
#: The 12-byte v2 signature (§2.2); it has a NUL, so it is no C string.
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"

_V1_PREFIX = b"PROXY "
_V2_FIXED = 16
_V2_HEAD = struct.Struct("!12sBBH")  # sig, ver_cmd, fam, len (§2.2 struct proxy_hdr_v2)
_V4_BLOCK = struct.Struct("!4s4sHH")  # src, dst, sport, dport: 12 bytes
_V6_BLOCK = struct.Struct("!16s16sHH")  # 36 bytes
_UNIX_BLOCK = struct.Struct("!108s108s")  # 216 bytes
# Ports: decimal, 0-65535, no leading zeros (§2.1, "to avoid any possible confusion with octal").
_V1_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")
_V1_IPV6 = re.compile(rb"[0-9A-Fa-f:.]+")  # no zone ("%eth0"), which ipaddress would take


class ProxyProtocolError(BadRequest):
    """A malformed, truncated or oversized PROXY protocol header (400).

    There is no HTTP exchange yet to answer in; the connection is dropped.
    """


class Family(enum.IntEnum):
    """The address family nibble of v2's 14th byte (§2.2); v1's TCP4/TCP6/UNKNOWN map to it."""

    UNSPEC = 0x0
    INET = 0x1
    INET6 = 0x2
    UNIX = 0x3


class Transport(enum.IntEnum):
    """The transport protocol nibble of v2's 14th byte (§2.2)."""

    UNSPEC = 0x0
    STREAM = 0x1
    DGRAM = 0x2


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One end of the proxied connection.

    Attributes:
        address: an IP address in canonical text, or a unix socket path
            (an abstract one as ``"@name"``), decoded like ``os.fsdecode``.
        port: the port; None for unix sockets.
    """

    address: str
    port: int | None


@dataclass(frozen=True, slots=True)
class ProxyResult:
    """A complete, valid PROXY header.

    Attributes:
        version: 1 or 2.
        local: a v2 LOCAL command (a health check by the proxy itself): use
            the real connection's endpoints (§2.2).
        family: the address family announced; UNSPEC for v1 UNKNOWN and LOCAL.
        transport: the transport announced (v1: STREAM, or UNSPEC for UNKNOWN).
        source: the client's end; None for LOCAL, UNKNOWN and UNSPEC, where
            the receiver uses the real connection's endpoints (§2.1, §2.2).
        destination: the proxy's end the client connected to; None likewise.
        header_size: the header's length in bytes.
        consumed: how many bytes of the chunk passed to the last ``feed`` the
            header took; the bytes after them belong to the next protocol.
    """

    version: int
    local: bool
    family: Family
    transport: Transport
    source: Endpoint | None
    destination: Endpoint | None
    header_size: int
    consumed: int = 0


_BLOCKS = {Family.INET: _V4_BLOCK, Family.INET6: _V6_BLOCK, Family.UNIX: _UNIX_BLOCK}


class _State(enum.Enum):
    START = "START"  # nothing yet
    V1 = "V1"  # "P" seen: reading the line
    V2_FIXED = "V2_FIXED"  # CR seen: reading the 16 fixed bytes
    V2_BLOCK = "V2_BLOCK"  # reading the address block and TLVs
    DONE = "DONE"
    ERROR = "ERROR"


class ProxyHeaderParser:
    """Incremental, bounded PROXY protocol v1/v2 header parser (sans-IO).

    Only use it on a listener configured for the PROXY protocol: the
    receiver "MUST not try to guess whether the protocol header is present"
    (§2), or any client could claim any address.
    """

    def __init__(self, *, max_v2_size: int = DEFAULT_MAX_V2_SIZE) -> None:
        """Create a parser for one connection.

        Args:
            max_v2_size: largest v2 header accepted, the 16 fixed bytes
                included; at least 16 + 216 so every address family fits.

        Raises:
            ValueError: ``max_v2_size`` is too small to hold an AF_UNIX block.
        """
        if max_v2_size < _V2_FIXED + _UNIX_BLOCK.size:
            raise ValueError(f"max_v2_size {max_v2_size} is below {_V2_FIXED + _UNIX_BLOCK.size}")
        self._max_v2 = max_v2_size
        self._buf = bytearray()
        self._state = _State.START
        self._need = 1  # bytes the buffer must hold before the next step

    @property
    def state(self) -> str:
        """The parser's state name (``START``, ``V1``, ..., ``DONE``, ``ERROR``)."""
        return self._state.value

    def feed(self, data: bytes | bytearray | memoryview) -> ProxyResult | None:
        """Take the next bytes of the connection.

        Args:
            data: what arrived; ``b""`` means the peer closed (EOF).

        Returns:
            None while the header is incomplete; the result once it is complete,
            whose ``consumed`` says where in ``data`` the header ended.

        Raises:
            ProxyProtocolError: the bytes are no valid PROXY header, the header
                is too long, or EOF came before it was complete.
            RuntimeError: called again after a result or an error.
        """
        if self._state in (_State.DONE, _State.ERROR):
            raise RuntimeError(f"can't feed in state {self._state.value}")
        try:
            if not data:
                raise ProxyProtocolError(f"connection closed inside the PROXY header: {describe(self._buf)}")
            result = self._feed(memoryview(data).cast("B"))
        except ProxyProtocolError:
            self._state = _State.ERROR
            raise
        if result is not None:
            self._state = _State.DONE
            self._buf = bytearray()
        return result

    def _feed(self, data: memoryview) -> ProxyResult | None:
        pos = 0
        while pos < len(data):
            start = len(self._buf)
            take = min(len(data) - pos, self._need - start)
            self._buf += data[pos : pos + take]
            pos += take
            result = self._step(start)
            if result is not None:
                # The step may have found the header's end before the buffer's (v1's CRLF).
                return replace(result, consumed=pos - (len(self._buf) - result.header_size))
        return None

    def _step(self, start: int) -> ProxyResult | None:
        # One transition per state; ``start`` is where this feed's bytes begin in the buffer.
        if self._state is _State.START:
            self._start()
        elif self._state is _State.V1:
            return self._v1(start)
        elif self._state is _State.V2_FIXED:
            self._v2_fixed(start)
        # V2_BLOCK, possibly just entered with nothing to wait for (a zero-length block).
        if self._state is _State.V2_BLOCK and len(self._buf) == self._need:
            return _v2_result(bytes(self._buf))
        return None

    def _start(self) -> None:
        first = self._buf[0]
        if first == _V1_PREFIX[0]:
            self._state, self._need = _State.V1, V1_MAX_LINE
        elif first == V2_SIGNATURE[0]:
            self._state, self._need = _State.V2_FIXED, _V2_FIXED
        else:
            raise ProxyProtocolError(f"not a PROXY protocol header: {describe(self._buf)}")

    def _v1(self, start: int) -> ProxyResult | None:
        buf = self._buf
        _check_prefix(buf, start, _V1_PREFIX)
        # Only the new bytes are searched; a CR before them was the buffer's last byte.
        lf = buf.find(b"\n", start)
        cr = buf.find(b"\r", max(start - 1, 0), lf if lf >= 0 else len(buf) - 1)
        if cr >= 0 and cr != lf - 1 or lf >= 0 and cr < 0:
            # §2.1: "must not tolerate a single CR or LF character to end the line".
            bad = buf[: cr + 2] if cr >= 0 and cr != lf - 1 else buf[: lf + 1]
            raise ProxyProtocolError(f"PROXY v1 line with a bare CR or LF: {describe(bad)}")
        if lf < 0:
            if len(buf) >= V1_MAX_LINE:
                raise ProxyProtocolError(f"PROXY v1 line without CRLF in {V1_MAX_LINE} bytes: {describe(buf)}")
            return None
        return _v1_result(bytes(buf[: lf - 1]))

    def _v2_fixed(self, start: int) -> None:
        buf = self._buf
        _check_prefix(buf, start, V2_SIGNATURE)
        if len(buf) < _V2_FIXED:
            return
        _, ver_cmd, fam, length = _V2_HEAD.unpack_from(buf)
        if ver_cmd >> 4 != 2:  # §2.2: "the receiver must only accept this value"
            raise ProxyProtocolError(f"unsupported PROXY v2 version: 0x{ver_cmd >> 4:x}")
        if ver_cmd & 0xF > 1:  # §2.2: "Receivers must drop connections presenting unexpected values"
            raise ProxyProtocolError(f"unknown PROXY v2 command: 0x{ver_cmd & 0xF:x}")
        if _V2_FIXED + length > self._max_v2:
            raise ProxyProtocolError(
                f"PROXY v2 header of {_V2_FIXED + length} bytes exceeds limit of {self._max_v2} bytes")
        if ver_cmd & 0xF == 1:  # PROXY; LOCAL ignores the family byte (§2.2)
            _check_family(fam, length)
        self._state, self._need = _State.V2_BLOCK, _V2_FIXED + length


def _check_prefix(buf: bytearray, start: int, prefix: bytes) -> None:
    # The new bytes that fall within the fixed prefix must match it; the error
    # shows the bytes up to the first wrong one, whatever the split.
    for i in range(start, min(len(buf), len(prefix))):
        if buf[i] != prefix[i]:
            raise ProxyProtocolError(f"not a PROXY protocol header: {describe(buf[: i + 1])}")


def _check_family(fam: int, length: int) -> None:
    try:
        family, transport = Family(fam >> 4), Transport(fam & 0xF)
    except ValueError:
        # §2.2: other values "must be rejected as invalid by receivers".
        raise ProxyProtocolError(f"unknown PROXY v2 address family and protocol: 0x{fam:02x}") from None
    block = _BLOCKS.get(family)
    if block is not None and transport is not Transport.UNSPEC and length < block.size:
        raise ProxyProtocolError(
            f"PROXY v2 address block of {length} bytes is too short for {family.name}: needs {block.size}")


def _v1_result(line: bytes) -> ProxyResult:
    """Decode a complete v1 line (without its CRLF)."""
    size = len(line) + 2
    proto, _, rest = line[len(_V1_PREFIX) :].partition(b" ")
    if proto == b"UNKNOWN":
        # §2.1: for UNKNOWN "the receiver must ignore anything presented before the CRLF".
        return ProxyResult(1, False, Family.UNSPEC, Transport.UNSPEC, None, None, size)
    fields = rest.split(b" ")
    if proto not in (b"TCP4", b"TCP6") or len(fields) != 4:
        raise ProxyProtocolError(f"invalid PROXY v1 line: {describe(line)}")
    family = Family.INET if proto == b"TCP4" else Family.INET6
    src, dst = (_v1_address(a, family, line) for a in fields[:2])
    sport, dport = (_v1_port(p, line) for p in fields[2:])
    return ProxyResult(1, False, family, Transport.STREAM, Endpoint(src, sport), Endpoint(dst, dport), size)


def _v1_address(text: bytes, family: Family, line: bytes) -> str:
    try:
        if family is Family.INET:
            # Exactly four decimal numbers, no leading zeros: ipaddress refuses "010.0.0.1" too.
            return str(ipaddress.IPv4Address(text.decode("ascii")))
        if _V1_IPV6.fullmatch(text):
            return str(ipaddress.IPv6Address(text.decode("ascii")))
    except (ValueError, UnicodeDecodeError):
        pass
    raise ProxyProtocolError(f"invalid address {describe(text)} in PROXY v1 line: {describe(line)}")


def _v1_port(text: bytes, line: bytes) -> int:
    if _V1_PORT.fullmatch(text) and int(text) <= 65535:
        return int(text)
    raise ProxyProtocolError(f"invalid port {describe(text)} in PROXY v1 line: {describe(line)}")


def _v2_result(header: bytes) -> ProxyResult:
    """Decode a complete v2 header: the 16 fixed bytes, already checked, and the block."""
    _, ver_cmd, fam, length = _V2_HEAD.unpack_from(header)
    size = _V2_FIXED + length
    if ver_cmd & 0xF == 0:
        # LOCAL: "discard the protocol block including the family which is ignored" (§2.2).
        return ProxyResult(2, True, Family.UNSPEC, Transport.UNSPEC, None, None, size)
    family, transport = Family(fam >> 4), Transport(fam & 0xF)  # checked by _check_family
    if family is Family.UNSPEC or transport is Transport.UNSPEC:
        # §2.2: UNSPEC: accept, and "The receiver should ignore address information."
        return ProxyResult(2, False, family, transport, None, None, size)
    block = _BLOCKS[family]
    # Bytes past the block are TLVs (§2.2); we may "skip over and ignore those bytes".
    if family is Family.UNIX:
        src_path, dst_path = _UNIX_BLOCK.unpack_from(header, _V2_FIXED)
        src, dst = Endpoint(_unix_path(src_path), None), Endpoint(_unix_path(dst_path), None)
    else:
        src_raw, dst_raw, sport, dport = block.unpack_from(header, _V2_FIXED)
        src = Endpoint(str(ipaddress.ip_address(src_raw)), sport)
        dst = Endpoint(str(ipaddress.ip_address(dst_raw)), dport)
    return ProxyResult(2, False, family, transport, src, dst, size)


def _unix_path(raw: bytes) -> str:
    # sun_path: NUL-terminated; a leading NUL names a Linux abstract socket, shown as "@name".
    if raw[:1] == b"\x00" and raw.strip(b"\x00"):
        return "@" + raw[1:].rstrip(b"\x00").decode("utf-8", "surrogateescape")
    return raw.split(b"\x00", 1)[0].decode("utf-8", "surrogateescape")
