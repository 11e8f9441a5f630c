"""PROXY protocol v1/v2 headers (haproxy's proxy-protocol.txt), every input in every split.

Each valid header is fed whole, byte by byte and at seeded random split points,
followed by the HTTP request that shares its segment, and must give the same
result with the request handed on untouched. Each invalid one must fail with
the same message whatever the split.
"""

from __future__ import annotations

import random
import struct
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefork.protocol.errors import ProtocolError
from prefork.protocol.proxy_protocol import (
    DEFAULT_MAX_V2_SIZE,
    V1_MAX_LINE,
    V2_SIGNATURE,
    Endpoint,
    Family,
    ProxyHeaderParser,
    ProxyProtocolError,
    ProxyResult,
    Transport,
)
from tests.helpers import Raised, feed_variants

REQUEST = b"GET / HTTP/1.1\r\nHost: 192.168.0.11\r\n\r\n"


def drive(chunks: list[bytes]) -> list[object]:
    """Feed until a result; return it (``consumed`` zeroed) and the bytes handed on, if any."""
    parser = ProxyHeaderParser()
    events: list[object] = []
    rest = bytearray()
    done = False
    for chunk in chunks:
        if done:
            rest += chunk
            continue
        result = parser.feed(chunk)
        if result is not None:
            done = True
            assert 0 < result.consumed <= len(chunk)
            events.append(replace(result, consumed=0))
            rest += chunk[result.consumed :]
    if rest:
        events.append(bytes(rest))
    return events


def parsed(header: bytes) -> ProxyResult:
    """The result for ``header``, the same in every split, with REQUEST handed on after it."""
    events = feed_variants(drive, header + REQUEST)
    assert len(events) == 2 and events[1] == REQUEST, events
    result = events[0]
    assert isinstance(result, ProxyResult)
    assert result.header_size == len(header)
    # Whole, in one chunk: ``consumed`` is where the request starts.
    whole = ProxyHeaderParser().feed(header + REQUEST)
    assert whole is not None and whole.consumed == len(header)
    return result


def rejected(data: bytes, message: str) -> None:
    assert feed_variants(drive, data) == [Raised(ProxyProtocolError, message)]


def v2(ver_cmd: int, fam: int, block: bytes = b"", length: int | None = None) -> bytes:
    """A v2 header built as §2.2's struct proxy_hdr_v2 describes it."""
    return struct.pack("!12sBBH", V2_SIGNATURE, ver_cmd, fam, len(block) if length is None else length) + block


def tlv(kind: int, value: bytes) -> bytes:
    return struct.pack("!BH", kind, len(value)) + value


def test_error_is_a_400_protocol_error() -> None:
    assert issubclass(ProxyProtocolError, ProtocolError) and ProxyProtocolError("x").status == 400


# --- version 1 -----------------------------------------------------------------------


def test_v1_spec_example() -> None:
    # §2.1's example line, before the request it precedes.
    result = parsed(b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n")
    assert result == ProxyResult(1, False, Family.INET, Transport.STREAM, Endpoint("192.168.0.1", 56324),
                                 Endpoint("192.168.0.11", 443), 47)


def test_v1_longest_tcp4_line_is_56_bytes() -> None:
    line = b"PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n"
    assert len(line) == 56
    assert parsed(line).source == Endpoint("255.255.255.255", 65535)


def test_v1_tcp6_longest_line_is_104_bytes_and_addresses_come_out_canonical() -> None:
    a = b"FFFF:0000:ffff:ffff:ffff:ffff:ffff:0001"
    line = b"PROXY TCP6 " + a + b" " + a + b" 65535 65535\r\n"
    assert len(line) == 104
    result = parsed(line)
    assert result.family is Family.INET6
    assert result.source == result.destination == Endpoint("ffff:0:ffff:ffff:ffff:ffff:ffff:1", 65535)
    assert parsed(b"PROXY TCP6 ::1 ::2 0 0\r\n").destination == Endpoint("::2", 0)


def test_v1_tcp6_compressed() -> None:
    result = parsed(b"PROXY TCP6 2001:db8::1 ::1 4711 8080\r\n")
    assert (result.source, result.destination) == (Endpoint("2001:db8::1", 4711), Endpoint("::1", 8080))


def test_v1_unknown_short_form_is_15_bytes() -> None:
    assert parsed(b"PROXY UNKNOWN\r\n") == ProxyResult(1, False, Family.UNSPEC, Transport.UNSPEC, None, None, 15)


def test_v1_unknown_worst_case_107_bytes_is_accepted_and_its_rest_ignored() -> None:
    a = b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    line = b"PROXY UNKNOWN " + a + b" " + a + b" 65535 65535\r\n"
    assert len(line) == V1_MAX_LINE == 107
    assert parsed(line).source is None
    assert parsed(b"PROXY UNKNOWN whatever \xff\x00 goes\r\n").family is Family.UNSPEC


def test_v1_108_byte_line_is_rejected() -> None:
    a = b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    line = b"PROXY UNKNOWN " + a + b" " + a + b" 65535 655350\r\n"
    assert len(line) == 108
    rejected(line, f"PROXY v1 line without CRLF in 107 bytes: {line[:60]!r}...")


def test_v1_without_crlf_fails_at_107_bytes_not_later() -> None:
    data = b"PROXY TCP4 " + b"1" * 200
    rejected(data, f"PROXY v1 line without CRLF in 107 bytes: {data[:60]!r}...")
    parser = ProxyHeaderParser()
    assert parser.feed(data[:106]) is None
    with pytest.raises(ProxyProtocolError):
        parser.feed(data[106:107])


def test_v1_buffers_at_most_107_bytes() -> None:
    parser = ProxyHeaderParser()
    assert parser.feed(b"PROXY TCP4 1.2.3.4") is None
    result = parser.feed(b" 5.6.7.8 1 2\r\n" + b"x" * 100_000)
    assert result is not None and result.consumed == 14
    with pytest.raises(ProxyProtocolError):
        ProxyHeaderParser().feed(b"PROXY " + b"x" * 100_000)


@pytest.mark.parametrize(
    ("data", "shown"),
    [
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n"),
        (b"PROXY TCP4 1.2.3.4\r 5.6.7.8 1 2\r\n", b"PROXY TCP4 1.2.3.4\r "),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r"),
        (b"PROXY UNKNOWN\n", b"PROXY UNKNOWN\n"),
    ],
)
def test_v1_bare_cr_or_lf_is_rejected(data: bytes, shown: bytes) -> None:
    # §2.1: "The receiver must not tolerate a single CR or LF character to end the line".
    rejected(data, f"PROXY v1 line with a bare CR or LF: {shown!r}")


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1", "invalid PROXY v1 line: b'PROXY TCP4 1.2.3.4 5.6.7.8 1'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3", "invalid PROXY v1 line: b'PROXY TCP4 1.2.3.4 5.6.7.8 1 2 3'"),
        (b"PROXY TCP4  1.2.3.4 5.6.7.8 1 2", "invalid PROXY v1 line: b'PROXY TCP4  1.2.3.4 5.6.7.8 1 2'"),
        (b"PROXY TCP5 1.2.3.4 5.6.7.8 1 2", "invalid PROXY v1 line: b'PROXY TCP5 1.2.3.4 5.6.7.8 1 2'"),
        (b"PROXY tcp4 1.2.3.4 5.6.7.8 1 2", "invalid PROXY v1 line: b'PROXY tcp4 1.2.3.4 5.6.7.8 1 2'"),
        (b"PROXY UNKNOWNX", "invalid PROXY v1 line: b'PROXY UNKNOWNX'"),
        (b"PROXY ", "invalid PROXY v1 line: b'PROXY '"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 ", "invalid PROXY v1 line: b'PROXY TCP4 1.2.3.4 5.6.7.8 1 2 '"),
        (b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2",
         "invalid address b'01.2.3.4' in PROXY v1 line: b'PROXY TCP4 01.2.3.4 5.6.7.8 1 2'"),
        (b"PROXY TCP4 1.2.3.4 256.6.7.8 1 2",
         "invalid address b'256.6.7.8' in PROXY v1 line: b'PROXY TCP4 1.2.3.4 256.6.7.8 1 2'"),
        (b"PROXY TCP4 ::1 5.6.7.8 1 2", "invalid address b'::1' in PROXY v1 line: b'PROXY TCP4 ::1 5.6.7.8 1 2'"),
        (b"PROXY TCP6 1.2.3.4 ::1 1 2", "invalid address b'1.2.3.4' in PROXY v1 line: b'PROXY TCP6 1.2.3.4 ::1 1 2'"),
        (b"PROXY TCP6 fe80::1%eth0 ::1 1 2",
         "invalid address b'fe80::1%eth0' in PROXY v1 line: b'PROXY TCP6 fe80::1%eth0 ::1 1 2'"),
        (b"PROXY TCP6 1::2::3 ::1 1 2", "invalid address b'1::2::3' in PROXY v1 line: b'PROXY TCP6 1::2::3 ::1 1 2'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 01 2", "invalid port b'01' in PROXY v1 line: b'PROXY TCP4 1.2.3.4 5.6.7.8 01 2'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 65536",
         "invalid port b'65536' in PROXY v1 line: b'PROXY TCP4 1.2.3.4 5.6.7.8 1 65536'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2", "invalid port b'-1' in PROXY v1 line: b'PROXY TCP4 1.2.3.4 5.6.7.8 -1 2'"),
        (b"PROXY TCP4 1.2.3.4 5.6.7.8 1 \xff", "invalid port b'\\xff' in PROXY v1 line: b'PROXY TCP4 1.2.3.4 5.6.7.8 1 \\xff'"),
    ],
)
def test_v1_malformed_lines(line: bytes, message: str) -> None:
    rejected(line + b"\r\n", message)


@pytest.mark.parametrize(
    ("data", "shown"),
    [(REQUEST, b"G"), (b"\x16\x03\x01\x02\x00\x01", b"\x16"), (b"PROXZ TCP4", b"PROXZ"), (b"proxy TCP4", b"p"),
     (b"PROXYTCP4", b"PROXYT"), (b"\r\n\r\n\x00\r\nQUIT!", b"\r\n\r\n\x00\r\nQUIT!"), (b"\r\nGET", b"\r\nG")],
)
def test_not_a_proxy_header_fails_at_the_first_wrong_byte(data: bytes, shown: bytes) -> None:
    rejected(data, f"not a PROXY protocol header: {shown!r}")


def test_every_proper_prefix_needs_more() -> None:
    for header in (b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n", v2(0x21, 0x11, bytes(12))):
        for cut in range(1, len(header)):
            assert ProxyHeaderParser().feed(header[:cut]) is None, cut


# --- version 2 -----------------------------------------------------------------------

# Bytes haproxy sent with "send-proxy-v2" (hexdump in seriousben/experiment-proxy-protocol):
# TCP over IPv4, 172.19.0.1:42578 -> 172.19.0.3:80, no TLV, then curl's request.
HAPROXY_V2 = bytes.fromhex("0d0a0d0a000d0a515549540a 2111 000c ac130001 ac130003 a652 0050")


def test_v2_as_haproxy_sends_it() -> None:
    assert parsed(HAPROXY_V2) == ProxyResult(2, False, Family.INET, Transport.STREAM,
                                             Endpoint("172.19.0.1", 42578), Endpoint("172.19.0.3", 80), 28)


def test_v2_udp4_and_tcp6() -> None:
    udp = parsed(v2(0x21, 0x12, bytes([192, 0, 2, 1, 198, 51, 100, 7]) + struct.pack("!HH", 53, 5353)))
    assert (udp.transport, udp.source, udp.destination) == (
        Transport.DGRAM, Endpoint("192.0.2.1", 53), Endpoint("198.51.100.7", 5353))
    src = bytes.fromhex("20010db8000000000000000000000001")
    tcp6 = parsed(v2(0x21, 0x21, src + bytes(15) + b"\x01" + struct.pack("!HH", 4711, 443)))
    assert (tcp6.family, tcp6.source, tcp6.destination) == (
        Family.INET6, Endpoint("2001:db8::1", 4711), Endpoint("::1", 443))


def test_v2_ipv4_mapped_ipv6_source_is_kept_as_sent() -> None:
    src = bytes(10) + b"\xff\xff" + bytes([10, 0, 0, 1])
    assert parsed(v2(0x21, 0x21, src + src + bytes(4))).source == Endpoint("::ffff:a00:1", 0)


def test_v2_unix_stream_and_abstract_paths() -> None:
    block = b"/run/haproxy.sock".ljust(108, b"\x00") + b"\x00abstract".ljust(108, b"\x00")
    result = parsed(v2(0x21, 0x31, block))
    assert (result.family, result.source, result.destination) == (
        Family.UNIX, Endpoint("/run/haproxy.sock", None), Endpoint("@abstract", None))
    assert parsed(v2(0x21, 0x32, bytes(216))).source == Endpoint("", None)


def test_v2_tlvs_are_skipped_and_the_request_handed_on() -> None:
    tlvs = (tlv(0x01, b"h2") + tlv(0x02, b"example.com") + tlv(0x04, bytes(5))
            + tlv(0x20, b"\x01" + bytes(4) + tlv(0x21, b"TLSv1.3")) + tlv(0xE0, b"custom"))
    result = parsed(v2(0x21, 0x11, bytes([1, 2, 3, 4, 5, 6, 7, 8]) + struct.pack("!HH", 1, 2) + tlvs))
    assert result.source == Endpoint("1.2.3.4", 1) and result.header_size == 28 + len(tlvs)


def test_v2_local_uses_the_real_endpoints_and_skips_any_block() -> None:
    local = ProxyResult(2, True, Family.UNSPEC, Transport.UNSPEC, None, None, 16)
    assert parsed(v2(0x20, 0x00)) == local
    # "must not assume zero is presented for LOCAL connections"; the family is ignored, even an invalid one.
    assert parsed(v2(0x20, 0x11, bytes(12))) == replace(local, header_size=28)
    assert parsed(v2(0x20, 0xFF, b"junk")) == replace(local, header_size=20)


def test_v2_unspec_family_or_transport_is_accepted_without_addresses() -> None:
    assert parsed(v2(0x21, 0x00)) == ProxyResult(2, False, Family.UNSPEC, Transport.UNSPEC, None, None, 16)
    assert parsed(v2(0x21, 0x10, bytes(12))).source is None
    assert parsed(v2(0x21, 0x01, bytes(3))).family is Family.UNSPEC


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (v2(0x11, 0x11, bytes(12)), "unsupported PROXY v2 version: 0x1"),
        (v2(0x31, 0x11, bytes(12)), "unsupported PROXY v2 version: 0x3"),
        (v2(0x22, 0x11, bytes(12)), "unknown PROXY v2 command: 0x2"),
        (v2(0x2F, 0x11, bytes(12)), "unknown PROXY v2 command: 0xf"),
        (v2(0x21, 0x41, bytes(12)), "unknown PROXY v2 address family and protocol: 0x41"),
        (v2(0x21, 0x13, bytes(12)), "unknown PROXY v2 address family and protocol: 0x13"),
        (v2(0x21, 0x11, bytes(11)), "PROXY v2 address block of 11 bytes is too short for INET: needs 12"),
        (v2(0x21, 0x21, bytes(12)), "PROXY v2 address block of 12 bytes is too short for INET6: needs 36"),
        (v2(0x21, 0x31, bytes(215)), "PROXY v2 address block of 215 bytes is too short for UNIX: needs 216"),
    ],
)
def test_v2_invalid_headers(header: bytes, message: str) -> None:
    rejected(header, message)


def test_v2_length_beyond_the_limit_fails_after_16_bytes() -> None:
    header = v2(0x21, 0x11, length=DEFAULT_MAX_V2_SIZE - 16 + 1)
    assert len(header) == 16
    rejected(header, "PROXY v2 header of 4097 bytes exceeds limit of 4096 bytes")
    rejected(v2(0x21, 0x11, length=0xFFFF), "PROXY v2 header of 65551 bytes exceeds limit of 4096 bytes")
    assert parsed(v2(0x21, 0x11, bytes(DEFAULT_MAX_V2_SIZE - 16))).header_size == DEFAULT_MAX_V2_SIZE


def test_v2_limit_is_configurable_but_holds_an_af_unix_block() -> None:
    parser = ProxyHeaderParser(max_v2_size=232)
    with pytest.raises(ProxyProtocolError, match="PROXY v2 header of 233 bytes exceeds limit of 232 bytes"):
        parser.feed(v2(0x21, 0x31, bytes(217)))
    assert ProxyHeaderParser(max_v2_size=232).feed(v2(0x21, 0x31, bytes(216))) is not None
    with pytest.raises(ValueError, match="max_v2_size 231 is below 232"):
        ProxyHeaderParser(max_v2_size=231)


# --- the parser's life cycle ---------------------------------------------------------


def test_eof_inside_the_header_is_an_error() -> None:
    parser = ProxyHeaderParser()
    assert parser.feed(b"PROXY TCP4 1.2") is None
    with pytest.raises(ProxyProtocolError, match=r"connection closed inside the PROXY header: b'PROXY TCP4 1.2'"):
        parser.feed(b"")
    assert parser.state == "ERROR"
    with pytest.raises(ProxyProtocolError, match=r"connection closed inside the PROXY header: b''"):
        ProxyHeaderParser().feed(b"")


def test_feeding_after_a_result_or_an_error_is_a_caller_bug() -> None:
    parser = ProxyHeaderParser()
    assert parser.feed(b"PROXY UNKNOWN\r\n") is not None and parser.state == "DONE"
    with pytest.raises(RuntimeError, match="can't feed in state DONE"):
        parser.feed(REQUEST)
    parser = ProxyHeaderParser()
    with pytest.raises(ProxyProtocolError):
        parser.feed(b"x")
    with pytest.raises(RuntimeError, match="can't feed in state ERROR"):
        parser.feed(b"PROXY UNKNOWN\r\n")


def test_accepts_bytearray_and_memoryview() -> None:
    data = bytearray(HAPROXY_V2 + REQUEST)
    for chunk in (data, memoryview(data)):
        result = ProxyHeaderParser().feed(chunk)
        assert result is not None and result.consumed == 28


def test_random_v2_headers_with_random_tlvs_round_trip() -> None:
    rng = random.Random(7239)
    for _ in range(50):
        src = bytes(rng.randrange(256) for _ in range(16))
        sport = rng.randrange(65536)
        tlvs = b"".join(tlv(rng.randrange(256), rng.randbytes(rng.randrange(40))) for _ in range(rng.randrange(4)))
        result = parsed(v2(0x21, 0x21, src + bytes(16) + struct.pack("!HH", sport, 80) + tlvs))
        assert result.source is not None and result.source.port == sport


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([b"", b"PROXY ", V2_SIGNATURE + b"\x21", V2_SIGNATURE]))
def test_fuzz_parses_or_raises_proxy_protocol_error(data: bytes, prefix: bytes) -> None:
    parser = ProxyHeaderParser()
    try:
        result = parser.feed(prefix + data)
    except ProxyProtocolError:
        return
    if result is not None:
        assert 0 < result.consumed <= len(prefix + data)
