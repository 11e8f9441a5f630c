"""Who the client is behind trusted proxies: ``Forwarded`` (RFC 7239) and ``X-Forwarded-*``.

Strategy: the headers are read in one pass that keeps only the five fields that
matter, and each field is parsed into a chain of hops, left (the first proxy's
entry) to right (the entry our direct peer added). The chain is believed only
as far as it is vouched for: when the direct peer is a trusted proxy, the chain
is walked from the right past every hop whose address is trusted, and the
first hop that is not trusted is the client (all trusted: the left-most hop),
as nginx's ``real_ip_recursive`` and uvicorn's ProxyHeadersMiddleware do. From an
untrusted peer nothing is taken, since anyone can send these headers (RFC 7239
§8.1). Nothing here raises on a bad header: a hop that cannot be read is a
wall, the walk stops there and keeps what it has (the peer, or the last trusted
hop passed), so a malformed or truncated entry can never move the answer to an
address further left, which is where a client's own forged entries sit (nginx
stops at an unparsable ``X-Forwarded-For`` entry the same way). Scheme, host
and port come from the hop that named the client -- in ``Forwarded`` each
element describes the connection into the proxy that added it (RFC 7239 §5) --
or, for ``X-Forwarded-Proto``/``-Host``/``-Port``, from the entry at the same
position when those lists are as long as the ``X-Forwarded-For`` chain, else
from their right-most entry (the one our trusted peer set).
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from prefork.protocol.errors import BadRequest
from prefork.protocol.http.target import check_host

__all__ = ["ForwardedElement", "ForwardedView", "HeaderSource", "Node", "TrustedProxies", "parse_forwarded",
           "parse_x_forwarded_for", "parse_x_forwarded_list", "resolve_client"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# What the request parser produces (``Headers`` iterates as these pairs) or any list of them.
HeaderPairs = Iterable[tuple[bytes, bytes]]

#: The only schemes taken from headers; anything else is ignored (the server speaks HTTP only).
SCHEMES = frozenset({"http", "https"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_FIELDS = (b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host", b"x-forwarded-port")

# --- RFC 7239 §4 grammar -------------------------------------------------------------
# Forwarded         = 1#forwarded-element
# forwarded-element = [ forwarded-pair ] *( ";" [ forwarded-pair ] )
# forwarded-pair    = token "=" value
# value             = token / quoted-string
# token, quoted-string: RFC 9110 §5.6.2 and §5.6.4 (RFC 7230 §3.2.6 in the RFC's words):
# qdtext      = HTAB / SP / %x21 / %x23-5B / %x5D-7E / obs-text
# quoted-pair = "\" ( HTAB / SP / VCHAR / obs-text )
# The list's OWS around "," is RFC 9110 §5.6.1's; we also allow OWS around ";",
# which the ABNF does not, because deployed proxies write "for=a; proto=https"
# and refusing it would only lose information, never gain an attacker any.
_TCHAR = rb"[!#$%&'*+\-.^_`|~0-9A-Za-z]"
_QUOTED = rb'"((?:[\t \x21\x23-\x5b\x5d-\x7e\x80-\xff]|\\[\t\x20-\x7e\x80-\xff])*)"'
_PAIR = re.compile(rb"[ \t]*(" + _TCHAR + rb"+)=(?:(" + _TCHAR + rb"+)|" + _QUOTED + rb")[ \t]*")
_QUOTED_PAIR = re.compile(rb"\\(.)", re.DOTALL)

# --- RFC 7239 §6 node identifiers ------------------------------------------------------
# node     = nodename [ ":" node-port ]
# nodename = IPv4address / "[" IPv6address "]" / "unknown" / obfnode
# obfnode  = "_" 1*( ALPHA / DIGIT / "." / "_" / "-")
# node-port = port / obfport ; port = 1*5DIGIT ; obfport = "_" 1*(ALPHA / DIGIT / "." / "_" / "-")
_OBFUSCATED = re.compile(r"_[A-Za-z0-9._-]+")
_PORT = re.compile(r"[0-9]{1,5}")
# uri-scheme (RFC 7239 §5.4 -> RFC 3986 §3.1): ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+\-.]*")


@dataclass(frozen=True, slots=True)
class Node:
    """One hop's identifier (RFC 7239 §6), from ``for=``/``by=`` or an ``X-Forwarded-For`` entry.

    Attributes:
        name: the address in canonical text (IPv6 without brackets), or
            ``"unknown"`` (§6.2), or an obfuscated identifier such as ``"_hidden"`` (§6.3).
        ip: the address, or None for ``unknown`` and obfuscated identifiers.
        port: the port, or None when absent or obfuscated (``obfport``, §6).
    """

    name: str
    ip: IPAddress | None = None
    port: int | None = None


@dataclass(frozen=True, slots=True)
class ForwardedElement:
    """One ``forwarded-element``: what one proxy recorded about its incoming connection (RFC 7239 §5).

    A parameter that is absent, or whose value does not have the syntax §5-§6
    give it, is None. Extension parameters (§5.5) are dropped.

    Attributes:
        for_: the node that made the request to this proxy (§5.2).
        by: the interface the request came in on (§5.1).
        host: the Host this proxy received, as sent (§5.3).
        proto: the scheme, lower-cased, the request came in with (§5.4).
    """

    for_: Node | None = None
    by: Node | None = None
    host: str | None = None
    proto: str | None = None


class HeaderSource(enum.Enum):
    """Which headers ``resolve_client`` reads.

    ``AUTO`` reads ``Forwarded`` when the request has one and ``X-Forwarded-*``
    otherwise. If the trusted proxy only writes ``X-Forwarded-*`` and passes a
    client's own ``Forwarded`` through, ``AUTO`` would believe the client: name
    the one the proxy writes (Hypercorn's ProxyFix makes the same choice explicit).
    """

    AUTO = "auto"
    FORWARDED = "forwarded"
    X_FORWARDED = "x-forwarded"


@dataclass(frozen=True, slots=True)
class ForwardedView:
    """The client and the URL it used, as far as the trusted proxies vouch for them.

    Attributes:
        client: the client's address (canonical text), or an RFC 7239 ``unknown``
            or obfuscated identifier; the peer's address as given when nothing was taken.
        client_port: the client's port, or None when not known.
        scheme: ``"http"`` or ``"https"``.
        host: the host name the client asked for, without port (IPv6 in
            brackets), or the caller's when no header gave one.
        port: the port the client connected to, or the caller's when no header
            said anything about the URL.
        from_headers: whether any field above was taken from a header.
    """

    client: str
    client_port: int | None
    scheme: str
    host: str | None
    port: int | None
    from_headers: bool


@dataclass(frozen=True, slots=True)
class TrustedProxies:
    """The proxies whose forwarding headers are believed.

    Attributes:
        networks: trusted addresses and networks; IPv4-mapped IPv6 ones are
            stored as IPv4, and addresses are unmapped before the check, so
            ``10.0.0.0/8`` covers a dual-stack socket's ``::ffff:10.1.2.3``.
        unix: whether a peer that has no IP address (the worker names a
            unix-socket peer ``"unix"``) is trusted.
        everyone: trust every peer and every hop (``*``). The walk then always
            ends at the left-most hop, which the client wrote: only for a
            proxy that replaces the headers rather than appending to them.
    """

    networks: tuple[IPNetwork, ...]
    unix: bool
    everyone: bool

    @classmethod
    def parse(cls, entries: Iterable[str]) -> TrustedProxies:
        """Build from configuration text: IPs, CIDR networks, ``unix`` and ``*``.

        Args:
            entries: e.g. ``["127.0.0.1", "::1", "10.0.0.0/8", "unix"]``.

        Returns:
            The trusted set.

        Raises:
            ValueError: an entry is none of these, or a network has host bits set
                (``10.0.0.1/8``: a typo for ``10.0.0.0/8`` or for ``10.0.0.1``?).
        """
        networks: list[IPNetwork] = []
        unix = everyone = False
        for raw in entries:
            entry = raw.strip()
            if entry == "*":
                everyone = True
            elif entry.lower() == "unix":
                unix = True
            else:
                try:
                    networks.append(_unmap_network(ipaddress.ip_network(entry)))
                except ValueError:
                    raise ValueError(f"not an IP address or network: {raw!r}") from None
        return cls(tuple(networks), unix, everyone)

    def trusts(self, address: str | IPAddress) -> bool:
        """Whether a peer or hop address is trusted.

        Args:
            address: an address object or its text; text that is no IP address
                (``"unix"`` for a unix-socket peer) is trusted only with ``unix``.

        Returns:
            True if trusted.
        """
        if self.everyone:
            return True
        ip = _ip(address) if isinstance(address, str) else address
        if ip is None:
            return self.unix
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self.networks)

    def _trusts_node(self, node: Node) -> bool:
        # "unknown" and obfuscated hops are nobody's address: never a trusted proxy.
        return self.everyone or (node.ip is not None and self.trusts(node.ip))


def _unmap_network(net: IPNetwork) -> IPNetwork:
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96:
        mapped = net.network_address.ipv4_mapped
        if mapped is not None:
            return ipaddress.IPv4Network((mapped, net.prefixlen - 96))
    return net


def _ip(text: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


# --- parsing -------------------------------------------------------------------------


def parse_forwarded(values: Iterable[bytes]) -> list[ForwardedElement | None]:
    """Parse every ``Forwarded`` field line, in order, into elements.

    Several lines form one list (RFC 9110 §5.3); empty list elements are
    skipped (RFC 9110 §5.6.1); parameter names are case-insensitive (RFC 7239 §4).

    Args:
        values: the field values, in wire order.

    Returns:
        The elements, left to right. None marks an element that does not parse,
        or repeats a parameter (RFC 7239 §4: MUST NOT occur more than once); the
        rest of its line is dropped, as there is no knowing where it would resume.
    """
    elements: list[ForwardedElement | None] = []
    for value in values:
        elements.extend(_parse_line(value))
    return elements


def _parse_line(line: bytes) -> list[ForwardedElement | None]:
    out: list[ForwardedElement | None] = []
    params: dict[str, str] = {}
    pos, end, duplicate = 0, len(line), False
    while True:
        m = _PAIR.match(line, pos)
        if m is not None:
            name = m.group(1).decode("ascii").lower()
            token, quoted = m.group(2), m.group(3)
            raw = token if token is not None else _QUOTED_PAIR.sub(rb"\1", quoted)
            duplicate = duplicate or name in params
            params[name] = raw.decode("latin-1")
            pos = m.end()
        else:
            while pos < end and line[pos] in b" \t":
                pos += 1
        if pos < end and line[pos] == 0x3B:  # ";": the element goes on
            pos += 1
            continue
        if pos < end and line[pos] != 0x2C:  # neither ";" nor "," nor the end: unreadable
            out.append(None)
            return out
        if duplicate:
            out.append(None)
        elif params:
            out.append(_element(params))
        if pos >= end:
            return out
        pos, params, duplicate = pos + 1, {}, False


def _element(params: dict[str, str]) -> ForwardedElement:
    proto = params.get("proto")
    host = params.get("host")
    return ForwardedElement(
        for_=_node(params["for"]) if "for" in params else None,
        by=_node(params["by"]) if "by" in params else None,
        host=host if host is not None and _split_host(host) is not None else None,
        proto=proto.lower() if proto is not None and _SCHEME.fullmatch(proto) else None,
    )


def _node(text: str) -> Node | None:
    # RFC 7239 §6; IPv6 in brackets, and in a quoted-string, which _PAIR has undone.
    if text.startswith("["):
        close = text.find("]")
        literal, rest = text[1:close], text[close + 1 :]
        if close < 0 or "%" in literal:  # RFC 3986 IPv6address has no zone
            return None
        try:
            ip: IPAddress | None = ipaddress.IPv6Address(literal)
        except ValueError:
            return None
        name = str(ip)
    else:
        name, colon, port_text = text.partition(":")
        rest = colon + port_text
        ip = None
        if name.lower() == "unknown":  # RFC 5234 §2.3: quoted ABNF strings are case-insensitive
            name = "unknown"
        elif not _OBFUSCATED.fullmatch(name):
            try:
                ip = ipaddress.IPv4Address(name)  # refuses leading zeros ("010.0.0.1")
            except ValueError:
                return None
            name = str(ip)
    if not rest:
        return Node(name, ip, None)
    port = _port(rest[1:]) if rest[0] == ":" else None
    if port is None and not (rest[0] == ":" and _OBFUSCATED.fullmatch(rest[1:])):
        return None
    return Node(name, ip, port)


def _port(text: str) -> int | None:
    if _PORT.fullmatch(text) and int(text) <= 65535:
        return int(text)
    return None


def _list(values: Iterable[bytes]) -> list[str]:
    # RFC 9110 §5.6.1: a comma list over one or more lines, empty elements ignored.
    return [item for value in values for item in value.decode("latin-1").replace("\t", " ").split(",")
            if item.strip()]


def parse_x_forwarded_for(values: Iterable[bytes]) -> list[Node | None]:
    """Parse ``X-Forwarded-For`` lines into hops, left to right.

    Entries are bare addresses; IPv6 is not bracketed (RFC 7239 §7.4), but
    ``[v6]``, ``[v6]:port`` and ``v4:port``, which some proxies write, are read too.

    Args:
        values: the field values, in wire order.

    Returns:
        One hop per non-empty entry; None for an entry that is no address.
    """
    return [_xff_node(item.strip()) for item in _list(values)]


def _xff_node(item: str) -> Node | None:
    if item.startswith("[") or item.count(":") == 1:  # "[v6]", "[v6]:port" or "v4:port"
        node = _node(item)
        return node if node is not None and node.ip is not None else None
    ip = _ip(item)
    return Node(str(ip), ip) if ip is not None and "%" not in item else None  # no zone (RFC 3986)


def parse_x_forwarded_list(values: Iterable[bytes]) -> list[str]:
    """Split ``X-Forwarded-Proto``/``-Host``/``-Port`` lines into their entries.

    Args:
        values: the field values, in wire order.

    Returns:
        The non-empty entries, stripped, left to right; not validated.
    """
    return [item.strip() for item in _list(values)]


# --- deciding --------------------------------------------------------------------------


def resolve_client(peer_ip: str, headers: HeaderPairs, trusted: TrustedProxies, *, peer_port: int | None = None,
                   scheme: str = "http", host: str | None = None, port: int | None = None,
                   source: HeaderSource = HeaderSource.AUTO) -> ForwardedView:
    """Decide the client's address, scheme, host and port for one request.

    Args:
        peer_ip: the direct peer's address (``"unix"`` for a unix-socket peer).
        headers: the request's fields (a ``Headers`` or (name, value) pairs;
            names are matched case-insensitively).
        trusted: the proxies whose headers are believed.
        peer_port: the direct peer's port.
        scheme: the connection's own scheme.
        host: the host the request names on its own (Host), without port.
        port: the server's own port.
        source: which headers to read.

    Returns:
        The view; equal to the direct connection's values when the peer is not
        trusted or the headers say nothing usable.
    """
    own = ForwardedView(peer_ip, peer_port, scheme, host, port, False)
    if not trusted.trusts(peer_ip):
        return own
    fields = _collect(headers)
    use_forwarded = source is HeaderSource.FORWARDED or (source is HeaderSource.AUTO and b"forwarded" in fields)
    if use_forwarded:
        client, proto, host_text, port_text = _from_forwarded(fields.get(b"forwarded", []), trusted)
    else:
        client, proto, host_text, port_text = _from_x_forwarded(fields, trusted)
    return _view(own, client, proto, host_text, port_text)


def _collect(headers: HeaderPairs) -> dict[bytes, list[bytes]]:
    fields: dict[bytes, list[bytes]] = {}
    for name, value in headers:
        lname = name.lower()
        if lname in _FIELDS:
            fields.setdefault(lname, []).append(value)
    return fields


_Found = tuple[Node | None, str | None, str | None, str | None]  # client, proto, host, port


def _walk(hops: Sequence[Node | None], trusted: TrustedProxies) -> int | None:
    """Index of the hop naming the client, or None to keep the peer (see Strategy)."""
    chosen = None
    for i in range(len(hops) - 1, -1, -1):
        node = hops[i]
        if node is None:  # a wall: never look left of what cannot be read
            break
        chosen = i
        if not trusted._trusts_node(node):
            break
    return chosen


def _from_forwarded(values: list[bytes], trusted: TrustedProxies) -> _Found:
    elements = parse_forwarded(values)
    index = _walk([e.for_ if e is not None else None for e in elements], trusted)
    # With no usable for=, the element our peer added may still carry proto and host.
    chosen = elements[index] if index is not None else elements[-1] if elements else None
    if chosen is None:
        return None, None, None, None
    return chosen.for_ if index is not None else None, chosen.proto, chosen.host, None


def _from_x_forwarded(fields: dict[bytes, list[bytes]], trusted: TrustedProxies) -> _Found:
    hops = parse_x_forwarded_for(fields.get(b"x-forwarded-for", []))
    index = _walk(hops, trusted)

    def pick(name: bytes) -> str | None:
        entries = parse_x_forwarded_list(fields.get(name, []))
        if not entries:
            return None
        if index is not None and len(entries) == len(hops):
            return entries[index]
        return entries[-1]

    client = hops[index] if index is not None else None
    return client, pick(b"x-forwarded-proto"), pick(b"x-forwarded-host"), pick(b"x-forwarded-port")


def _view(own: ForwardedView, client: Node | None, proto: str | None, host_text: str | None,
          port_text: str | None) -> ForwardedView:
    scheme = proto.lower() if proto is not None and proto.lower() in SCHEMES else None
    split = _split_host(host_text) if host_text is not None else None
    port = _port(port_text) if port_text is not None else None
    if port is None and split is not None:
        port = split[1]
    if port is None and (scheme is not None or split is not None):
        # The URL changed but named no port: the one its scheme implies (RFC 9110 §4.2).
        port = _DEFAULT_PORTS.get(scheme or own.scheme, own.port)
    if client is None and scheme is None and split is None and port is None:
        return own
    name, client_port = (client.name, client.port) if client is not None else (own.client, own.client_port)
    return ForwardedView(name, client_port, scheme or own.scheme, split[0] if split is not None else own.host,
                         port if port is not None else own.port, True)


def _split_host(text: str) -> tuple[str, int | None] | None:
    """``uri-host [":" port]`` -> (host, port), or None if invalid or empty."""
    raw = text.encode("latin-1")
    try:
        check_host(raw)  # the same grammar as the Host field (RFC 9112 §3.2)
    except BadRequest:
        return None
    if text.startswith("["):
        close = text.index("]")
        name, rest = text[: close + 1], text[close + 1 :]
    else:
        name, colon, port_text = text.partition(":")
        rest = colon + port_text
    if not name:
        return None
    return name, int(rest[1:]) if len(rest) > 1 else None
