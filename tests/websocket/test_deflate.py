"""Tests for prefork.protocol.websocket.deflate: negotiation matrix, codec, zip bombs."""

from __future__ import annotations

import os
import zlib
from typing import Any

import pytest

from prefork.protocol.errors import WebSocketError
from prefork.protocol.websocket.deflate import DeflateParams, PerMessageDeflate, negotiate

PMD = "permessage-deflate"
TAIL = b"\x00\x00\xff\xff"


def offer(*params: tuple[str, str | None]) -> tuple[str, list[tuple[str, str | None]]]:
    return (PMD, list(params))


# -- negotiation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("params", "expected", "header"),
    [
        ([], DeflateParams(), PMD),
        ([("client_max_window_bits", None)], DeflateParams(), PMD),
        ([("client_max_window_bits", "10")], DeflateParams(client_max_window_bits=10),
         f"{PMD}; client_max_window_bits=10"),
        ([("server_max_window_bits", "8")], DeflateParams(server_max_window_bits=8),
         f"{PMD}; server_max_window_bits=8"),
        ([("server_no_context_takeover", None)], DeflateParams(server_no_context_takeover=True),
         f"{PMD}; server_no_context_takeover"),
        ([("client_no_context_takeover", None)], DeflateParams(client_no_context_takeover=True),
         f"{PMD}; client_no_context_takeover"),
        ([("client_no_context_takeover", None), ("client_max_window_bits", None),
          ("server_no_context_takeover", None), ("server_max_window_bits", "9")],
         DeflateParams(True, True, 9, None),
         f"{PMD}; server_no_context_takeover; client_no_context_takeover; "
         "server_max_window_bits=9"),
        ([("SERVER_MAX_WINDOW_BITS", "15")], DeflateParams(server_max_window_bits=15),
         f"{PMD}; server_max_window_bits=15"),
    ],
)
def test_negotiation_accepts_valid_offers(
    params: list[tuple[str, str | None]], expected: DeflateParams, header: str
) -> None:
    params_out = negotiate([offer(*params)])
    assert params_out == expected
    assert params_out.header_value() == header


@pytest.mark.parametrize(
    "params",
    [
        [("server_max_window_bits", None)],  # value required
        [("server_max_window_bits", "7")],
        [("server_max_window_bits", "16")],
        [("server_max_window_bits", "010")],
        [("client_max_window_bits", "abc")],
        [("server_no_context_takeover", "1")],  # takes no value
        [("client_no_context_takeover", None), ("client_no_context_takeover", None)],
        [("unknown_param", None)],
    ],
)
def test_invalid_offer_is_declined(params: list[tuple[str, str | None]]) -> None:
    assert negotiate([offer(*params)]) is None


def test_invalid_offer_falls_through_to_the_next() -> None:
    offers = [("x-webkit-deflate-frame", []), offer(("server_max_window_bits", "99")),
              offer(("client_no_context_takeover", None)), offer()]
    assert negotiate(offers) == DeflateParams(client_no_context_takeover=True)


def test_no_offer_declines() -> None:
    assert negotiate([]) is None
    assert negotiate([("foo", [])]) is None


def test_server_preferences_apply_within_the_rules() -> None:
    prefs: dict[str, Any] = {"server_no_context_takeover": True, "server_max_window_bits": 12,
             "client_max_window_bits": 11}
    # client_max_window_bits may only be answered when offered (§7.1.2.2).
    assert negotiate([offer()], **prefs) == DeflateParams(True, False, 12, None)
    assert negotiate([offer(("client_max_window_bits", None))], **prefs) == DeflateParams(
        True, False, 12, 11)
    # The response value may not exceed what was offered.
    assert negotiate([offer(("client_max_window_bits", "9"), ("server_max_window_bits", "10"))],
                     **prefs) == DeflateParams(True, False, 10, 9)


# -- codec ------------------------------------------------------------------------


def client_compress(messages: list[bytes], *, wbits: int = 15, reset: bool = False) -> list[bytes]:
    """Compress like a client would: raw deflate, sync flush, tail stripped."""
    out, comp = [], None
    for message in messages:
        if comp is None or reset:
            comp = zlib.compressobj(6, zlib.DEFLATED, -max(wbits, 9))
        data = comp.compress(message) + comp.flush(zlib.Z_SYNC_FLUSH)
        assert data.endswith(TAIL)
        out.append(data[:-4])
    return out


def client_decompress(payloads: list[bytes], *, reset: bool = False) -> list[bytes]:
    out, decomp = [], None
    for payload in payloads:
        if decomp is None or reset:
            decomp = zlib.decompressobj(-15)
        out.append(decomp.decompress(payload + TAIL))
    return out


MESSAGES = [b"hello world " * 20, b"hello world " * 20, b"", os.urandom(3000),
            "snowman ☃ ".encode() * 50]


@pytest.mark.parametrize("no_takeover", [False, True])
@pytest.mark.parametrize("bits", [None, 8, 9, 12, 15])
def test_server_compress_round_trip(no_takeover: bool, bits: int | None) -> None:
    codec = PerMessageDeflate(DeflateParams(server_no_context_takeover=no_takeover,
                                            server_max_window_bits=bits))
    payloads = [codec.compress(m) for m in MESSAGES]
    # A peer that resets its decompressor per message only works if we reset too.
    assert client_decompress(payloads, reset=no_takeover) == MESSAGES


def test_context_takeover_shrinks_repeated_messages() -> None:
    with_ctx = PerMessageDeflate(DeflateParams())
    without = PerMessageDeflate(DeflateParams(server_no_context_takeover=True))
    message = os.urandom(500)
    assert len([with_ctx.compress(message) for _ in range(2)][1]) < 50
    assert len([without.compress(message) for _ in range(2)][1]) > 500


def test_8_bit_window_output_is_readable_with_a_256_byte_window() -> None:
    codec = PerMessageDeflate(DeflateParams(server_max_window_bits=8))
    message = (b"abcdefghij" * 30 + os.urandom(40)) * 20
    decomp = zlib.decompressobj(-8)
    assert decomp.decompress(codec.compress(message) + TAIL) == message


@pytest.mark.parametrize("no_takeover", [False, True])
@pytest.mark.parametrize("bits", [None, 8, 10, 15])
def test_server_decompress_round_trip(no_takeover: bool, bits: int | None) -> None:
    codec = PerMessageDeflate(DeflateParams(client_no_context_takeover=no_takeover,
                                            client_max_window_bits=bits))
    payloads = client_compress(MESSAGES, wbits=bits or 15, reset=no_takeover)
    assert [codec.decompress(p, fin=True, limit=1 << 20) for p in payloads] == MESSAGES


def test_decompress_frame_by_frame() -> None:
    (payload,) = client_compress([b"fragmented " * 1000])
    codec = PerMessageDeflate(DeflateParams())
    pieces = [payload[i : i + 7] for i in range(0, len(payload), 7)]
    out = b"".join(codec.decompress(p, fin=i == len(pieces) - 1, limit=1 << 20)
                   for i, p in enumerate(pieces))
    assert out == b"fragmented " * 1000


def test_zip_bomb_is_refused_without_inflating_it() -> None:
    # 64 MiB of zeros compresses to about 64 KiB.
    (bomb,) = client_compress([bytes(64 * 1024 * 1024)])
    codec = PerMessageDeflate(DeflateParams())
    with pytest.raises(WebSocketError) as info:
        codec.decompress(bomb, fin=True, limit=1024 * 1024)
    assert info.value.close_code == 1009
    assert str(info.value) == "decompressed message exceeds limit by at least 1 bytes"


def test_exactly_at_the_limit_is_accepted() -> None:
    (payload,) = client_compress([b"a" * 1000])
    assert PerMessageDeflate(DeflateParams()).decompress(payload, fin=True, limit=1000) == b"a" * 1000
    with pytest.raises(WebSocketError):
        PerMessageDeflate(DeflateParams()).decompress(payload, fin=True, limit=999)


def test_corrupt_data_is_1007() -> None:
    with pytest.raises(WebSocketError) as info:
        PerMessageDeflate(DeflateParams()).decompress(b"\xff\xff\xff", fin=True, limit=100)
    assert info.value.close_code == 1007
    assert str(info.value).startswith("invalid compressed data: ")
