"""Tests for prefork.protocol.websocket.handshake: accept key, every refusal, token lists."""

from __future__ import annotations

import pytest

from prefork.protocol.errors import ProtocolError
from prefork.protocol.websocket.deflate import DeflateParams
from prefork.protocol.websocket.handshake import (
    HandshakeError,
    HandshakeRequest,
    accept_key,
    build_accept_response,
    build_error_response,
    parse_extensions,
    requests_websocket,
    validate_upgrade,
)

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="

Headers = list[tuple[bytes, bytes]]


def headers(**overrides: bytes | None) -> Headers:
    """A valid upgrade request's headers with some replaced (None removes one)."""
    base: dict[str, bytes | None] = {
        "Host": b"example.com",
        "Upgrade": b"websocket",
        "Connection": b"Upgrade",
        "Sec-WebSocket-Key": KEY,
        "Sec-WebSocket-Version": b"13",
    }
    base.update({k.replace("_", "-"): v for k, v in overrides.items()})
    return [(k.encode(), v) for k, v in base.items() if v is not None]


def refused(method: bytes = b"GET", version: bytes = b"1.1", hdrs: Headers | None = None,
            **kwargs: object) -> HandshakeError:
    with pytest.raises(HandshakeError) as info:
        validate_upgrade(method, version, headers() if hdrs is None else hdrs,
                         **kwargs)  # type: ignore[arg-type]
    return info.value


def test_accept_key_rfc_example() -> None:
    # RFC 6455 §1.3.
    assert accept_key(KEY) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_valid_request_is_parsed() -> None:
    req = validate_upgrade(b"GET", b"HTTP/1.1", headers(
        Origin=b"https://example.com",
        Sec_WebSocket_Protocol=b"chat, superchat",
        Sec_WebSocket_Extensions=b"permessage-deflate; client_max_window_bits",
    ))
    assert req == HandshakeRequest(
        KEY, ["chat", "superchat"],
        [("permessage-deflate", [("client_max_window_bits", None)])],
        "https://example.com",
    )


@pytest.mark.parametrize(
    ("name", "value"),
    [
        (b"connection", b"keep-alive, Upgrade"),
        (b"CONNECTION", b"upgrade,keep-alive"),
        (b"Connection", b"  UPGRADE  "),
    ],
)
def test_connection_token_lists_are_case_insensitive(name: bytes, value: bytes) -> None:
    hdrs = [(n, v) for n, v in headers() if n != b"Connection"] + [(name, value)]
    assert validate_upgrade(b"GET", b"1.1", hdrs).key == KEY


def test_tokens_split_over_repeated_fields() -> None:
    hdrs = [(n, v) for n, v in headers() if n not in (b"Connection", b"Upgrade")]
    hdrs += [(b"Connection", b"keep-alive"), (b"Connection", b"upgrade"),
             (b"upgrade", b"h2c, WebSocket")]
    assert validate_upgrade(b"GET", b"1.1", hdrs).key == KEY


@pytest.mark.parametrize(
    ("kwargs", "status", "message", "extra"),
    [
        ({"method": b"POST"}, 405, "WebSocket upgrade needs GET, got b'POST'", [(b"Allow", b"GET")]),
        ({"version": b"1.0"}, 400, "WebSocket upgrade needs HTTP/1.1, got b'1.0'", []),
        ({"hdrs": headers(Upgrade=None)}, 426, "missing Upgrade: websocket",
         [(b"Upgrade", b"websocket")]),
        ({"hdrs": headers(Upgrade=b"h2c")}, 426, "missing Upgrade: websocket",
         [(b"Upgrade", b"websocket")]),
        ({"hdrs": headers(Connection=b"keep-alive")}, 400, "missing Connection: upgrade", []),
        ({"hdrs": headers(Connection=None)}, 400, "missing Connection: upgrade", []),
        ({"hdrs": headers(Sec_WebSocket_Key=None)}, 400, "missing Sec-WebSocket-Key header", []),
        ({"hdrs": headers(Sec_WebSocket_Key=b"c2hvcnQ=")}, 400,
         "invalid Sec-WebSocket-Key: b'c2hvcnQ='", []),
        ({"hdrs": headers(Sec_WebSocket_Key=b"not base64!!")}, 400,
         "invalid Sec-WebSocket-Key: b'not base64!!'", []),
        ({"hdrs": headers(Sec_WebSocket_Key=b"AAAAAAAAAAAAAAAAAAAAAAAA")}, 400,
         "invalid Sec-WebSocket-Key: b'AAAAAAAAAAAAAAAAAAAAAAAA'", []),  # 18 bytes
        ({"hdrs": headers(Sec_WebSocket_Version=b"8")}, 426,
         "unsupported Sec-WebSocket-Version: b'8'", [(b"Sec-WebSocket-Version", b"13")]),
        ({"hdrs": headers(Sec_WebSocket_Version=None)}, 426,
         "unsupported Sec-WebSocket-Version: b''", [(b"Sec-WebSocket-Version", b"13")]),
        ({"hdrs": headers(Sec_WebSocket_Extensions=b"permessage-deflate; =x")}, 400,
         "malformed Sec-WebSocket-Extensions: 'permessage-deflate; =x'", []),
    ],
)
def test_refusals_carry_status_and_headers(
    kwargs: dict[str, object], status: int, message: str, extra: Headers
) -> None:
    err = refused(**kwargs)  # type: ignore[arg-type]
    assert isinstance(err, ProtocolError)
    assert (err.status, str(err), err.extra_headers) == (status, message, extra)


def test_duplicate_key_is_refused() -> None:
    err = refused(hdrs=headers() + [(b"Sec-WebSocket-Key", KEY)])
    assert (err.status, str(err)) == (400, "duplicate sec-websocket-key header")


@pytest.mark.parametrize("origin", [None, b"https://evil.example"])
def test_origin_outside_allow_list_is_403(origin: bytes | None) -> None:
    err = refused(hdrs=headers(Origin=origin), allowed_origins=["https://example.com"])
    assert err.status == 403
    assert str(err).startswith("origin not allowed")


def test_origin_in_allow_list_is_accepted() -> None:
    req = validate_upgrade(b"GET", b"1.1", headers(Origin=b"https://Example.com"),
                           allowed_origins=["https://example.com"])
    assert req.origin == "https://Example.com"


SAME_ORIGIN = [
    (b"http://example.com", b"example.com"),
    (b"https://example.com", b"example.com"),
    (b"http://EXAMPLE.com:80", b"example.com"),
    (b"https://example.com:443", b"Example.COM"),
    (b"http://127.0.0.1:8000", b"127.0.0.1:8000"),
    (b"http://[::1]:8080", b"[::1]:8080"),
    (b"http://example.com:8080", b"example.com:8080"),
]
CROSS_ORIGIN = [
    (b"http://evil.example", b"example.com"),
    (b"http://example.com:8080", b"example.com"),
    (b"http://example.com", b"example.com:8080"),
    (b"https://example.com", b"example.com:80"),
    (b"http://example.com.evil.example", b"example.com"),
    (b"http://example.com@evil.example", b"example.com"),
    (b"null", b"example.com"),  # sandboxed frames, file: pages
    (b"chrome-extension://abcdef", b"example.com"),
    (b"http://127.0.0.1:8001", b"127.0.0.1:8000"),
]


@pytest.mark.parametrize(("origin", "host"), SAME_ORIGIN)
def test_default_accepts_the_same_origin(origin: bytes, host: bytes) -> None:
    req = validate_upgrade(b"GET", b"1.1", headers(Origin=origin, Host=host), allowed_origins=())
    assert req.origin == origin.decode()


@pytest.mark.parametrize(("origin", "host"), CROSS_ORIGIN)
def test_default_refuses_a_cross_origin_browser_with_403(origin: bytes, host: bytes) -> None:
    err = refused(hdrs=headers(Origin=origin, Host=host), allowed_origins=())
    assert err.status == 403
    assert str(err) == f"cross-origin handshake: Origin {origin.decode()!r} is not Host {host.decode()!r}"


def test_default_accepts_clients_without_origin() -> None:
    # Not a browser: nothing for a cross-site page to hijack.
    assert validate_upgrade(b"GET", b"1.1", headers(), allowed_origins=()).origin is None


@pytest.mark.parametrize(("origin", "host"), CROSS_ORIGIN + [(None, b"example.com")])
def test_star_accepts_every_origin(origin: bytes | None, host: bytes) -> None:
    validate_upgrade(b"GET", b"1.1", headers(Origin=origin, Host=host), allowed_origins=["*"])


def test_a_list_accepts_only_its_origins_even_the_same_origin() -> None:
    allowed = ["https://app.example"]
    validate_upgrade(b"GET", b"1.1", headers(Origin=b"https://app.example"), allowed_origins=allowed)
    err = refused(hdrs=headers(Origin=b"http://example.com"), allowed_origins=allowed)
    assert (err.status, str(err)) == (403, "origin not allowed: 'http://example.com'")


@pytest.mark.parametrize(("values", "expected"), [
    ([b"websocket"], True),
    ([b"foo, websocket"], True),
    ([b"h2c, WebSocket"], True),
    ([b"foo", b"WEBSOCKET"], True),
    ([b" foo ,\twebsocket "], True),
    ([b"foo, websocket/13x"], False),
    ([b"foo, h2c"], False),
    ([], False),
])
def test_requests_websocket_looks_at_every_upgrade_token(values: list[bytes], expected: bool) -> None:
    hdrs = [(b"Host", b"example.com")] + [(b"Upgrade", v) for v in values]
    assert requests_websocket(hdrs) is expected


def test_parse_extensions_grammar() -> None:
    values = [b'permessage-deflate; client_max_window_bits; server_max_window_bits="10", '
              b"x-webkit-deflate-frame", b"foo;a=1;b"]
    assert parse_extensions(values) == [
        ("permessage-deflate", [("client_max_window_bits", None),
                                ("server_max_window_bits", "10")]),
        ("x-webkit-deflate-frame", []),
        ("foo", [("a", "1"), ("b", None)]),
    ]


def test_parse_extensions_rejects_non_token_quoted_value() -> None:
    with pytest.raises(HandshakeError):
        parse_extensions([b'foo; a="b c"'])


def test_accept_response_bytes() -> None:
    req = HandshakeRequest(KEY, ["chat"])
    out = build_accept_response(req, subprotocol="chat",
                                deflate=DeflateParams(client_no_context_takeover=True))
    assert out == (
        b"HTTP/1.1 101 Switching Protocols\r\n"
        b"Upgrade: websocket\r\n"
        b"Connection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
        b"Sec-WebSocket-Protocol: chat\r\n"
        b"Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n"
        b"\r\n"
    )


def test_accept_response_refuses_unoffered_subprotocol() -> None:
    with pytest.raises(ValueError, match="'mqtt' was not offered"):
        build_accept_response(HandshakeRequest(KEY, ["chat"]), subprotocol="mqtt")


def test_error_response_bytes() -> None:
    err = refused(hdrs=headers(Sec_WebSocket_Version=b"8"))
    body = b"unsupported Sec-WebSocket-Version: b'8'\n"
    assert build_error_response(err) == (
        b"HTTP/1.1 426 Upgrade Required\r\n"
        b"Content-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n"
        b"Connection: close\r\n"
        b"Sec-WebSocket-Version: 13\r\n"
        b"\r\n" + body
    )
