"""The server side of the WebSocket opening handshake (RFC 6455 §4.2).

Strategy: ``validate_upgrade`` takes the request's method, version and raw
header pairs exactly as received and either returns a ``HandshakeRequest``
(key, offered subprotocols and extensions, origin) or raises
``HandshakeError`` carrying the status and headers to answer with, so the I/O
layer maps it like any other ``ProtocolError``. Headers are combined per name
(RFC 9110 §5.3) and list-valued ones split into case-insensitive tokens, so
``Connection: keep-alive, Upgrade`` is recognised. The caller chooses the
subprotocol and negotiates extensions (``deflate.negotiate``) from what was
parsed here; ``build_accept_response`` then renders the 101 response.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from prefork.protocol.errors import BadRequest, describe
from prefork.protocol.websocket.deflate import DeflateParams, ExtensionOffer

__all__ = [
    "ANY_ORIGIN",
    "GUID",
    "HandshakeError",
    "HandshakeRequest",
    "accept_key",
    "build_accept_response",
    "build_error_response",
    "parse_extensions",
    "requests_websocket",
    "validate_upgrade",
]

#: RFC 6455 §1.3: appended to the client's key before hashing.
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

_REASONS = {400: "Bad Request", 403: "Forbidden", 405: "Method Not Allowed",
            426: "Upgrade Required"}

# RFC 9110 §5.6.2 token and §5.6.4 quoted-string, as used by the
# Sec-WebSocket-Extensions grammar (RFC 6455 §9.1).
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_PARAM_RE = re.compile(rf"\s*({_TOKEN})\s*(?:=\s*({_TOKEN}|{_QUOTED})\s*)?")
_TOKEN_RE = re.compile(rf"{_TOKEN}\Z")

#: In ``allowed_origins``: accept every Origin.
ANY_ORIGIN = "*"
# RFC 6454 §6.1 serialisation of an http(s) origin, and RFC 9110 §7.2 Host.
_HOSTNAME = r"(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s/:\[\]@]+)(?::(?P<port>[0-9]{1,5}))?"
_ORIGIN_RE = re.compile(rf"(?P<scheme>[Hh][Tt][Tt][Pp][Ss]?)://{_HOSTNAME}")
_HOST_RE = re.compile(_HOSTNAME)
_DEFAULT_PORTS = {"http": 80, "https": 443}


class HandshakeError(BadRequest):
    """A refused opening handshake.

    Attributes:
        status: the HTTP status to answer with (400, 403, 405 or 426).
        extra_headers: headers the answer must carry, e.g.
            ``Sec-WebSocket-Version: 13`` with a 426 (RFC 6455 §4.2.2).
    """

    def __init__(
        self, message: str, status: int = 400,
        extra_headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        """Create the error.

        Args:
            message: what was wrong, naming the offending value.
            status: the HTTP status to answer with.
            extra_headers: headers to add to the error response.
        """
        super().__init__(message, status)
        self.extra_headers = list(extra_headers)


@dataclass(slots=True)
class HandshakeRequest:
    """What a valid upgrade request offered.

    Attributes:
        key: the Sec-WebSocket-Key value (base64 text, as bytes).
        subprotocols: Sec-WebSocket-Protocol tokens in the client's order.
        extensions: parsed Sec-WebSocket-Extensions offers in the client's order.
        origin: the Origin header, if any.
    """

    key: bytes
    subprotocols: list[str] = field(default_factory=list)
    extensions: list[ExtensionOffer] = field(default_factory=list)
    origin: str | None = None


def accept_key(key: bytes) -> bytes:
    """Compute Sec-WebSocket-Accept for a client key (RFC 6455 §4.2.2 step 5.4).

    Args:
        key: the Sec-WebSocket-Key value.

    Returns:
        base64(SHA-1(key + GUID)).
    """
    return base64.b64encode(hashlib.sha1(key + GUID).digest())


def _combined(headers: Sequence[tuple[bytes, bytes]]) -> dict[bytes, list[bytes]]:
    """Group header values by lower-cased name, stripping OWS (RFC 9110 §5.5)."""
    out: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        out.setdefault(name.strip().lower(), []).append(value.strip(b" \t"))
    return out


def _tokens(values: list[bytes]) -> list[str]:
    """Split comma-separated list headers into lower-cased tokens (RFC 9110 §5.6.1)."""
    return [t.strip().lower() for v in values for t in v.decode("latin-1").split(",")
            if t.strip()]


def _single(fields: dict[bytes, list[bytes]], name: bytes) -> bytes | None:
    """The one value of a header that must not repeat; 400 if it does."""
    values = fields.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise HandshakeError(f"duplicate {name.decode()} header")
    return values[0]


def requests_websocket(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    """Whether any protocol the Upgrade header lists is ``websocket``, case-insensitively.

    Upgrade is a list in the client's order of preference (RFC 9110 §7.8), so
    ``Upgrade: foo, websocket`` asks for a WebSocket as much as ``Upgrade: websocket``.

    Args:
        headers: raw (name, value) pairs as received.

    Returns:
        True when one of the listed protocols is ``websocket``.
    """
    return "websocket" in _tokens([v.strip(b" \t") for n, v in headers if n.strip().lower() == b"upgrade"])


def _check_key(key: bytes | None) -> bytes:
    """Require a base64 nonce of exactly 16 bytes (RFC 6455 §4.1 item 7)."""
    if key is None:
        raise HandshakeError("missing Sec-WebSocket-Key header")
    try:
        raw = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 16:
        raise HandshakeError(f"invalid Sec-WebSocket-Key: {describe(key)}")
    return key


def _check_request_line(method: bytes, http_version: bytes) -> None:
    """GET and HTTP/1.1 or later (RFC 6455 §4.1 items 1-2)."""
    if method != b"GET":
        raise HandshakeError(f"WebSocket upgrade needs GET, got {describe(method)}",
                             405, [(b"Allow", b"GET")])
    if http_version.removeprefix(b"HTTP/") != b"1.1":
        raise HandshakeError(f"WebSocket upgrade needs HTTP/1.1, got {describe(http_version)}")


def _check_upgrade_headers(fields: dict[bytes, list[bytes]]) -> None:
    """Upgrade: websocket, Connection: upgrade, Sec-WebSocket-Version: 13 (§4.2.1)."""
    if "websocket" not in _tokens(fields.get(b"upgrade", [])):
        # RFC 9110 §15.5.22: a 426 names the protocol to upgrade to.
        raise HandshakeError("missing Upgrade: websocket", 426, [(b"Upgrade", b"websocket")])
    if "upgrade" not in _tokens(fields.get(b"connection", [])):
        raise HandshakeError("missing Connection: upgrade")
    version = _single(fields, b"sec-websocket-version")
    if version != b"13":
        # §4.2.2: answer with the versions we do support.
        raise HandshakeError(f"unsupported Sec-WebSocket-Version: {describe(version or b'')}",
                             426, [(b"Sec-WebSocket-Version", b"13")])


def _authority(text: str, pattern: re.Pattern[str], default_port: int) -> tuple[str, int] | None:
    """(lower-cased host, port) of an Origin or Host value; None if it is neither."""
    m = pattern.fullmatch(text)
    if m is None:
        return None
    return m.group("host").lower(), int(m.group("port")) if m.group("port") else default_port


def _same_origin(origin: str, host: str | None) -> bool:
    """Whether ``origin`` names the host (and port) the request was sent to (RFC 6454 §4)."""
    m = _ORIGIN_RE.fullmatch(origin)
    if m is None or host is None:
        return False  # "null", other schemes, no Host: never the same origin
    default = _DEFAULT_PORTS[m.group("scheme").lower()]
    # A Host without a port means the default port of the scheme the page was loaded with.
    return _authority(origin, _ORIGIN_RE, default) == _authority(host, _HOST_RE, default)


def _check_origin(origin: str | None, allowed: Sequence[str] | None, host: str | None) -> None:
    """Refuse a cross-site handshake with 403 (RFC 6455 §4.2.2 item 4, §10.2).

    ``allowed``: None accepts any Origin; containing ``*`` likewise; empty means the
    same origin as the request's Host (a client that sends no Origin is not a
    browser, so it is accepted); otherwise only the Origins listed.
    """
    if allowed is None or ANY_ORIGIN in allowed:
        return
    if not allowed:
        if origin is not None and not _same_origin(origin, host):
            raise HandshakeError(f"cross-origin handshake: Origin {origin!r} is not Host {host!r}", 403)
        return
    # Origins are ASCII serialisations whose scheme and host are case-insensitive.
    if origin is None or origin.lower() not in {o.lower() for o in allowed}:
        raise HandshakeError(f"origin not allowed: {origin!r}", 403)


def parse_extensions(values: Sequence[bytes]) -> list[ExtensionOffer]:
    """Parse Sec-WebSocket-Extensions values (RFC 6455 §9.1).

    Args:
        values: every Sec-WebSocket-Extensions field value, in order.

    Returns:
        ``(name, [(param, value or None), ...])`` per offer; quoted values unquoted.

    Raises:
        HandshakeError: 400 on a malformed value.
    """
    offers: list[ExtensionOffer] = []
    for item in _tokens_preserving_case(values):
        name, *raw_params = item.split(";")
        name = name.strip()
        if not _TOKEN_RE.match(name):
            raise HandshakeError(f"malformed Sec-WebSocket-Extensions: {item!r}")
        offers.append((name, [_parse_param(p, item) for p in raw_params]))
    return offers


def _tokens_preserving_case(values: Sequence[bytes]) -> list[str]:
    """Split list values on commas outside quoted strings."""
    items: list[str] = []
    for value in values:
        text = value.decode("latin-1")
        items += [m.strip() for m in re.findall(rf'(?:{_QUOTED}|[^,"])+', text) if m.strip()]
    return items


def _parse_param(raw: str, item: str) -> tuple[str, str | None]:
    """Parse ``name[=value]``; a quoted value must unquote to a token (§9.1)."""
    m = _PARAM_RE.fullmatch(raw)
    if m is None:
        raise HandshakeError(f"malformed Sec-WebSocket-Extensions: {item!r}")
    name, value = m.group(1), m.group(2)
    if value is not None and value.startswith('"'):
        value = re.sub(r"\\(.)", r"\1", value[1:-1])
        if not _TOKEN_RE.match(value):
            raise HandshakeError(f"malformed Sec-WebSocket-Extensions: {item!r}")
    return name, value


def validate_upgrade(
    method: bytes,
    http_version: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    *,
    allowed_origins: Sequence[str] | None = None,
    authority: str | None = None,
) -> HandshakeRequest:
    """Check an opening handshake request (RFC 6455 §4.2.1).

    Args:
        method: the request method, e.g. ``b"GET"``.
        http_version: ``b"1.1"`` or ``b"HTTP/1.1"``.
        headers: raw (name, value) pairs as received.
        allowed_origins: None (the default) accepts any Origin, as does a list
            holding ``"*"``; an empty list accepts only the same origin as Host
            (or no Origin at all: not a browser); otherwise only the Origins listed.
        authority: the ``host:port`` the request was sent to when a trusted proxy
            said so (it rewrote Host); None: the request's Host.

    Returns:
        The parsed request.

    Raises:
        HandshakeError: with the status (400/403/405/426) and headers to answer.
    """
    _check_request_line(method, http_version)
    fields = _combined(headers)
    _check_upgrade_headers(fields)
    key = _check_key(_single(fields, b"sec-websocket-key"))
    origin_raw = _single(fields, b"origin")
    origin = origin_raw.decode("latin-1") if origin_raw is not None else None
    host = _single(fields, b"host")
    if authority is None and host is not None:
        authority = host.decode("latin-1")
    _check_origin(origin, allowed_origins, authority)
    subprotocols = [t.strip() for v in fields.get(b"sec-websocket-protocol", [])
                    for t in v.decode("latin-1").split(",") if t.strip()]
    extensions = parse_extensions(fields.get(b"sec-websocket-extensions", []))
    return HandshakeRequest(key, subprotocols, extensions, origin)


def build_accept_response(
    req: HandshakeRequest,
    *,
    subprotocol: str | None = None,
    deflate: DeflateParams | None = None,
    extra_headers: Sequence[tuple[bytes, bytes]] = (),
) -> bytes:
    """Render the 101 Switching Protocols response (RFC 6455 §4.2.2 step 5).

    Args:
        req: the validated request.
        subprotocol: the chosen subprotocol; must be one the client offered.
        deflate: negotiated permessage-deflate parameters, if any.
        extra_headers: further headers (e.g. Date, Server).

    Returns:
        The full response head, ending with the blank line.

    Raises:
        ValueError: if ``subprotocol`` was not offered (§4.2.2 forbids it).
    """
    if subprotocol is not None and subprotocol not in req.subprotocols:
        raise ValueError(f"subprotocol {subprotocol!r} was not offered")
    lines = [
        b"HTTP/1.1 101 Switching Protocols",
        b"Upgrade: websocket",
        b"Connection: Upgrade",
        b"Sec-WebSocket-Accept: " + accept_key(req.key),
    ]
    if subprotocol is not None:
        lines.append(b"Sec-WebSocket-Protocol: " + subprotocol.encode("ascii"))
    if deflate is not None:
        lines.append(b"Sec-WebSocket-Extensions: " + deflate.header_value().encode("ascii"))
    lines += [name + b": " + value for name, value in extra_headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def build_error_response(err: HandshakeError) -> bytes:
    """Render a refusal: status line, the error's headers and a short text body.

    Args:
        err: the handshake error.

    Returns:
        A complete HTTP/1.1 response that closes the connection.
    """
    body = (str(err) + "\n").encode("utf-8", "replace")
    lines = [
        f"HTTP/1.1 {err.status} {_REASONS.get(err.status, 'Error')}".encode("ascii"),
        b"Content-Type: text/plain; charset=utf-8",
        b"Content-Length: " + str(len(body)).encode("ascii"),
        b"Connection: close",
    ]
    lines += [name + b": " + value for name, value in err.extra_headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
