"""Forwarded (RFC 7239) and X-Forwarded-* behind trusted proxies, every chain in every split.

"Split" here has two meanings: a list may arrive as one field line or as many
(RFC 9110 §5.3), so every chain is also parsed cut into lines at every comma
boundary; and the request carrying the headers is run through the HTTP parser
whole, byte by byte and at random split points before its ``Headers`` are used.
"""

from __future__ import annotations

import ipaddress
import itertools
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from prefork.protocol.forwarded import (
    ForwardedElement,
    ForwardedView,
    HeaderSource,
    Node,
    TrustedProxies,
    parse_forwarded,
    parse_x_forwarded_for,
    parse_x_forwarded_list,
    resolve_client,
)
from prefork.protocol.http.events import Request
from tests.http.test_parser import events_of

TRUSTED = TrustedProxies.parse(["127.0.0.1", "::1", "10.0.0.0/8", "fd00::/8"])
PROXY = "10.0.0.1"  # our direct peer, trusted
ATTACKER = "6.6.6.6"


def v4(text: str) -> Node:
    return Node(text, ipaddress.IPv4Address(text))


def v6(text: str, port: int | None = None) -> Node:
    return Node(str(ipaddress.IPv6Address(text)), ipaddress.IPv6Address(text), port)


def line_splits(items: list[bytes], sep: bytes = b", ") -> list[list[bytes]]:
    """Every way to cut a list of elements into consecutive field lines."""
    out = []
    for cuts in itertools.product([False, True], repeat=max(len(items) - 1, 0)):
        lines, current = [], [items[0]]
        for item, cut in zip(items[1:], cuts):
            if cut:
                lines.append(sep.join(current))
                current = [item]
            else:
                current.append(item)
        lines.append(sep.join(current))
        out.append(lines)
    return out


def resolve(headers: list[tuple[bytes, bytes]], peer: str = PROXY, **kw: object) -> ForwardedView:
    """resolve_client on ``headers`` given as pairs and after the HTTP parser read them in every split."""
    direct = resolve_client(peer, headers, TRUSTED, **kw)  # type: ignore[arg-type]
    head = b"GET / HTTP/1.1\r\nHost: example.com\r\n" + b"".join(n + b": " + v + b"\r\n" for n, v in headers)
    request = events_of(head + b"\r\n")[0]
    assert isinstance(request, Request)
    assert resolve_client(peer, request.headers, TRUSTED, **kw) == direct  # type: ignore[arg-type]
    return direct


def own(peer: str = PROXY) -> ForwardedView:
    return ForwardedView(peer, None, "http", None, None, False)


# --- RFC 7239 §4-§6: parsing -----------------------------------------------------------


def test_rfc_examples() -> None:
    # §4 and §7.5's examples, one line each and as one list.
    lines = [b'for="_gazonk"', b'For="[2001:db8:cafe::17]:4711"', b"for=192.0.2.60;proto=http;by=203.0.113.43",
             b"for=192.0.2.43, for=198.51.100.17"]
    expected = [
        ForwardedElement(for_=Node("_gazonk")),
        ForwardedElement(for_=v6("2001:db8:cafe::17", 4711)),
        ForwardedElement(for_=v4("192.0.2.60"), by=v4("203.0.113.43"), proto="http"),
        ForwardedElement(for_=v4("192.0.2.43")),
        ForwardedElement(for_=v4("198.51.100.17")),
    ]
    assert parse_forwarded(lines) == expected
    assert parse_forwarded([b", ".join(lines)]) == expected


def test_every_line_split_of_a_chain_parses_the_same() -> None:
    items = [b'for="[2001:db8::1]:4711";proto=https', b"for=unknown", b'for="_hidden:_port";by=_proxy',
             b'host="example.com:8443";for=192.0.2.1', b"FOR=198.51.100.2;PROTO=HTTP"]
    expected = parse_forwarded([b", ".join(items)])
    assert [e.for_ for e in expected if e] == [v6("2001:db8::1", 4711), Node("unknown"), Node("_hidden"),
                                               v4("192.0.2.1"), v4("198.51.100.2")]
    assert expected[2] == ForwardedElement(for_=Node("_hidden"), by=Node("_proxy"))
    assert expected[3] is not None and expected[3].host == "example.com:8443"
    assert expected[4] is not None and expected[4].proto == "http"
    for lines in line_splits(items):
        assert parse_forwarded(lines) == expected, lines
    for lines in line_splits(items, sep=b" ,\t, ,"):
        assert parse_forwarded(lines) == expected, lines


@pytest.mark.parametrize(
    ("value", "node"),
    [
        (b"for=192.0.2.43", v4("192.0.2.43")),
        (b'for="192.0.2.43:47011"', Node("192.0.2.43", ipaddress.IPv4Address("192.0.2.43"), 47011)),
        (b'for="[2001:DB8::0:1]"', v6("2001:db8::1")),
        (b'for="[::ffff:192.0.2.1]:0"', v6("::ffff:192.0.2.1", 0)),
        (b"for=unknown", Node("unknown")),
        (b"for=UnKnOwN", Node("unknown")),  # RFC 5234 §2.3: ABNF strings are case-insensitive
        (b'for="unknown:8080"', Node("unknown", None, 8080)),
        (b"for=_a.b-c_9", Node("_a.b-c_9")),
        (b'for="192.0.2.1:_obf"', Node("192.0.2.1", ipaddress.IPv4Address("192.0.2.1"), None)),
        (b'for="\\1\\9\\2.0.2.1"', v4("192.0.2.1")),  # quoted-pair
        # Not a node (§6): the element stands, with no usable for=.
        (b"for=x-foo", None), (b"for=_", None), (b"for=999.0.2.1", None), (b"for=010.0.2.1", None),
        (b'for="[::1"', None), (b'for="[1.2.3.4]"', None), (b'for="[fe80::1%25eth0]"', None),
        (b'for="[fe80::1%eth0]"', None), (b'for="192.0.2.1:65536"', None), (b'for="192.0.2.1:"', None),
        (b'for="192.0.2.1:1:2"', None), (b'for="[::1]x"', None), (b'for="::1"', None), (b'for=""', None),
        (b'for="_a:_"', None), (b'for="192.0.2.1:+80"', None),
    ],
)
def test_node_identifiers(value: bytes, node: Node | None) -> None:
    assert parse_forwarded([value]) == [ForwardedElement(for_=node)]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"proto=HTTPS", ForwardedElement(proto="https")),
        (b"proto=svn+ssh", ForwardedElement(proto="svn+ssh")),  # a uri-scheme; resolve_client ignores it
        (b"proto=1http", ForwardedElement()),
        (b'host="[::1]:8080"', ForwardedElement(host="[::1]:8080")),
        (b'host="a,b"', ForwardedElement()),
        (b'host="a/b"', ForwardedElement()),
        (b"by=_x;ext=whatever", ForwardedElement(by=Node("_x"))),  # §5.5 extensions dropped
        (b"for=192.0.2.1 ; proto=https ;by=unknown", ForwardedElement(v4("192.0.2.1"), Node("unknown"), None, "https")),
        (b";;for=192.0.2.1;;", ForwardedElement(for_=v4("192.0.2.1"))),
    ],
)
def test_other_parameters(value: bytes, expected: ForwardedElement) -> None:
    assert parse_forwarded([value]) == [expected]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (b"for=[2001:db8::1]", [None]),  # §6: IPv6 MUST be quoted
        (b"for=192.0.2.1:80", [None]),  # so must a node-port
        (b'for="192.0.2.1', [None]),  # unterminated quoted-string
        (b"for", [None]), (b"for=", [None]), (b"=x", [None]), (b"for==x", [None]), (b"f o r=x", [None]),
        (b'for="a"b', [None]),
        (b"for=192.0.2.1;for=192.0.2.2", [None]),  # §4: a parameter MUST NOT occur more than once
        (b"for=192.0.2.1;FOR=192.0.2.2, for=192.0.2.3", [None, ForwardedElement(for_=v4("192.0.2.3"))]),
        # An unreadable element ends its line (no knowing where it would resume), not the next line's.
        (b'for=192.0.2.1, for="x, for=192.0.2.3', [ForwardedElement(for_=v4("192.0.2.1")), None]),
        (b"", []), (b" , ,, ", []), (b";", []),
    ],
)
def test_malformed_elements_never_raise(value: bytes, expected: list[ForwardedElement | None]) -> None:
    assert parse_forwarded([value]) == expected
    assert parse_forwarded([value, b"for=192.0.2.9"]) == [*expected, ForwardedElement(for_=v4("192.0.2.9"))]


# --- X-Forwarded-* parsing -------------------------------------------------------------


def test_x_forwarded_for_entries_in_every_line_split() -> None:
    items = [b"192.0.2.1", b"2001:db8::1", b"[2001:db8::2]", b"[2001:db8::3]:4711", b"192.0.2.4:80", b"garbage"]
    expected = [v4("192.0.2.1"), v6("2001:db8::1"), v6("2001:db8::2"), v6("2001:db8::3", 4711),
                Node("192.0.2.4", ipaddress.IPv4Address("192.0.2.4"), 80), None]
    for lines in line_splits(items):
        assert parse_x_forwarded_for(lines) == expected
    assert parse_x_forwarded_for([b" , 192.0.2.1,,\t", b""]) == [v4("192.0.2.1")]
    assert parse_x_forwarded_for([b"fe80::1%eth0, 01.2.3.4, unknown, _hidden, 1.2.3.4:99999, unknown:80"]) == [None] * 6


def test_x_forwarded_lists() -> None:
    assert parse_x_forwarded_list([b"https, http", b" ,HTTPS "]) == ["https", "http", "HTTPS"]
    assert parse_x_forwarded_list([]) == []


# --- TrustedProxies ------------------------------------------------------------------


def test_trusted_addresses_networks_and_mapped_ipv6() -> None:
    t = TrustedProxies.parse(["10.0.0.0/8", " 192.0.2.7 ", "2001:db8::/32", "::ffff:198.51.100.0/120"])
    assert t.trusts("10.255.0.1") and t.trusts("::ffff:10.1.2.3") and t.trusts("192.0.2.7")
    assert t.trusts("2001:db8:1::5") and t.trusts("198.51.100.200") and t.trusts("::ffff:198.51.100.1")
    assert t.trusts(ipaddress.ip_address("10.0.0.1"))
    assert not t.trusts("11.0.0.1") and not t.trusts("192.0.2.8") and not t.trusts("2001:db9::1")
    assert not t.trusts("unix") and not t.trusts("") and not t.trusts("garbage")


def test_unix_and_everyone() -> None:
    assert TrustedProxies.parse(["unix"]).trusts("unix")
    assert not TrustedProxies.parse(["unix"]).trusts("127.0.0.1")
    star = TrustedProxies.parse(["*"])
    assert star.trusts("203.0.113.9") and star.trusts("unix") and star.trusts("::1")


@pytest.mark.parametrize("entry", ["10.0.0.1/8", "10.0.0.0/33", "nonsense", "", "10.0.0.1 ", "1.2.3.4:80"])
def test_bad_entries_are_value_errors_naming_them(entry: str) -> None:
    if entry == "10.0.0.1 ":  # surrounding whitespace is trimmed: this one is fine
        assert TrustedProxies.parse([entry]).trusts("10.0.0.1")
        return
    with pytest.raises(ValueError, match=f"not an IP address or network: {entry!r}"):
        TrustedProxies.parse(["127.0.0.1", entry])


# --- resolve_client: who is believed ---------------------------------------------------


SPOOF = [(b"Forwarded", b"for=203.0.113.5;proto=https;host=evil.example"),
         (b"X-Forwarded-For", b"203.0.113.5"), (b"X-Forwarded-Proto", b"https"),
         (b"X-Forwarded-Host", b"evil.example"), (b"X-Forwarded-Port", b"443")]


@pytest.mark.parametrize("peer", [ATTACKER, "2001:db8::66", "unix", "10.0.0.1.nip.io"])
def test_untrusted_peer_changes_nothing(peer: str) -> None:
    for headers in (SPOOF, SPOOF[1:]):
        assert resolve(headers, peer=peer) == own(peer)
    view = resolve_client(peer, SPOOF, TRUSTED, peer_port=5555, scheme="http", host="example.com", port=8000)
    assert view == ForwardedView(peer, 5555, "http", "example.com", 8000, False)


def test_trusted_peer_is_believed() -> None:
    assert resolve(SPOOF) == ForwardedView("203.0.113.5", None, "https", "evil.example", 443, True)
    assert resolve(SPOOF[1:]) == ForwardedView("203.0.113.5", None, "https", "evil.example", 443, True)
    assert resolve(SPOOF[1:2], peer="::1") == ForwardedView("203.0.113.5", None, "http", None, None, True)
    assert resolve(SPOOF[1:2], peer="::ffff:10.9.9.9").client == "203.0.113.5"


def test_trusted_peer_without_headers_changes_nothing() -> None:
    assert resolve([]) == own()
    assert resolve([(b"X-Forwarded-Proto", b"ftp"), (b"X-Forwarded-Host", b"a b")]) == own()


@pytest.mark.parametrize(
    ("xff", "client"),
    [
        # The attacker prepends; the right-most untrusted address wins.
        (f"{ATTACKER}, 203.0.113.7", "203.0.113.7"),
        (f"{ATTACKER}, 203.0.113.7, 10.0.0.2", "203.0.113.7"),
        (f"{ATTACKER}, 203.0.113.7, 10.0.0.3, 10.0.0.2", "203.0.113.7"),
        (f"{ATTACKER}, 2001:db8::7, fd00::2", "2001:db8::7"),
        (f"{ATTACKER}, 10.0.0.4, 203.0.113.7", "203.0.113.7"),  # a trusted address left of the client: not reached
        # Every hop trusted: the left-most.
        ("10.0.0.3, 10.0.0.2", "10.0.0.3"),
        ("::1", "::1"),
        # An unreadable hop is a wall: keep the last trusted one passed, never look left of it.
        (f"{ATTACKER}, garbage", PROXY),
        (f"{ATTACKER}, garbage, 10.0.0.2", "10.0.0.2"),
        (f"{ATTACKER}, 203.0.113.7, 01.2.3.4, 10.0.0.3, 10.0.0.2", "10.0.0.3"),
    ],
)
def test_x_forwarded_for_chain(xff: str, client: str) -> None:
    view = resolve([(b"X-Forwarded-For", xff.encode())])
    assert view.client == client and view.from_headers == (client != PROXY)
    # The same chain spread over several lines.
    items = [item.strip().encode() for item in xff.split(",")]
    for lines in line_splits(items):
        assert resolve_client(PROXY, [(b"x-forwarded-for", line) for line in lines], TRUSTED).client == client


@pytest.mark.parametrize(
    ("forwarded", "client"),
    [
        (f"for={ATTACKER}, for=203.0.113.7", "203.0.113.7"),
        (f'for={ATTACKER}, for=203.0.113.7;proto=https, for="[fd00::2]:99"', "203.0.113.7"),
        ("for=10.0.0.3, for=10.0.0.2", "10.0.0.3"),
        # unknown and obfuscated hops are nobody's address, so never a trusted proxy: they are the client.
        (f"for={ATTACKER}, for=_hidden, for=10.0.0.2", "_hidden"),
        (f"for={ATTACKER}, for=unknown", "unknown"),
        # Walls: a malformed element, or one with no usable for=.
        (f'for={ATTACKER}, for="[::1"', PROXY),
        (f"for={ATTACKER}, proto=https, for=10.0.0.2", "10.0.0.2"),
        (f"for={ATTACKER}, for=203.0.113.7;for=203.0.113.8, for=10.0.0.2", "10.0.0.2"),
        # An attacker's unterminated quote swallows the element our proxy appended on the same line:
        # the line is unreadable from there, and nothing left of it is believed.
        (f'for={ATTACKER}, for=1;host=", for=203.0.113.7', PROXY),
    ],
)
def test_forwarded_chain(forwarded: str, client: str) -> None:
    assert resolve([(b"Forwarded", forwarded.encode())]).client == client


def test_client_port_from_either_header() -> None:
    view = resolve([(b"Forwarded", b'for="[2001:db8::1]:4711"')])
    assert (view.client, view.client_port) == ("2001:db8::1", 4711)
    view = resolve([(b"X-Forwarded-For", b"192.0.2.1:5000")])
    assert (view.client, view.client_port) == ("192.0.2.1", 5000)
    assert resolve([(b"Forwarded", b'for="_hidden:_port"')]).client_port is None


def test_forwarded_wins_over_x_forwarded_unless_told_otherwise() -> None:
    both = [(b"X-Forwarded-For", b"198.51.100.1"), (b"X-Forwarded-Proto", b"https"),
            (b"Forwarded", b"for=203.0.113.5")]
    assert resolve(both) == ForwardedView("203.0.113.5", None, "http", None, None, True)
    assert resolve(both, source=HeaderSource.X_FORWARDED).client == "198.51.100.1"
    assert resolve(both, source=HeaderSource.FORWARDED).client == "203.0.113.5"
    assert resolve(both[:2], source=HeaderSource.FORWARDED) == own()
    # Present but unreadable still wins (AUTO): which header counts does not depend on its content.
    assert resolve([*both[:2], (b"Forwarded", b'for="')]) == own()


def test_header_names_are_case_insensitive() -> None:
    assert resolve_client(PROXY, [(b"X-FORWARDED-FOR", b"203.0.113.5")], TRUSTED).client == "203.0.113.5"
    assert resolve_client(PROXY, [(b"fOrWaRdEd", b"for=203.0.113.5")], TRUSTED).client == "203.0.113.5"


def test_unix_socket_peer_trusted_by_name() -> None:
    t = TrustedProxies.parse(["unix"])
    view = resolve_client("unix", [(b"X-Forwarded-For", b"203.0.113.5, 127.0.0.1")], t)
    assert view.client == "127.0.0.1"  # "unix" trusts the socket peer, not loopback hops
    assert resolve_client("unix", [(b"X-Forwarded-For", b"203.0.113.5")], t).client == "203.0.113.5"


def test_everyone_trusted_takes_the_left_most() -> None:
    star = TrustedProxies.parse(["*"])
    assert resolve_client(ATTACKER, [(b"X-Forwarded-For", b"1.1.1.1, 2.2.2.2")], star).client == "1.1.1.1"
    assert resolve_client(ATTACKER, [(b"Forwarded", b"for=_a, for=2.2.2.2")], star).client == "_a"


# --- resolve_client: scheme, host and port ---------------------------------------------


@pytest.mark.parametrize(
    ("proto", "scheme"),
    [(b"https", "https"), (b"HTTPS", "https"), (b" http ", "http"), (b"ws", None), (b"wss", None), (b"ftp", None),
     (b"", None), (b"https, http", "http"), (b"http, https", "https")],
)
def test_scheme_only_http_or_https(proto: bytes, scheme: str | None) -> None:
    view = resolve([(b"X-Forwarded-Proto", proto)], scheme="http", port=8000)
    if scheme is None:
        assert view == ForwardedView(PROXY, None, "http", None, 8000, False)
    else:
        assert (view.scheme, view.port, view.from_headers) == (scheme, 443 if scheme == "https" else 80, True)


def test_forwarded_proto_and_host_come_from_the_clients_element() -> None:
    # client -> p1 (TLS) -> 10.0.0.2 -> us: p1 recorded https, 10.0.0.2 recorded the plain hop.
    value = b'for=203.0.113.5;proto=https;host="shop.example", for=10.0.0.2;proto=http;host=backend'
    assert resolve([(b"Forwarded", value)]) == ForwardedView("203.0.113.5", None, "https", "shop.example", 443, True)
    assert resolve([(b"Forwarded", b"for=203.0.113.5;proto=ftp")]) == ForwardedView(
        "203.0.113.5", None, "http", None, None, True)
    # No usable for= from our peer, but its proto and host stand.
    assert resolve([(b"Forwarded", b'proto=https;host="[2001:db8::1]:8443"')], host="h", port=80) == ForwardedView(
        PROXY, None, "https", "[2001:db8::1]", 8443, True)


def test_x_forwarded_lists_align_with_the_chain_or_use_the_right_most() -> None:
    chain = [(b"X-Forwarded-For", b"203.0.113.5, 10.0.0.2")]
    aligned = resolve([*chain, (b"X-Forwarded-Proto", b"https, http"), (b"X-Forwarded-Host", b"shop.example, backend")])
    assert (aligned.scheme, aligned.host, aligned.port) == ("https", "shop.example", 443)
    single = resolve([*chain, (b"X-Forwarded-Proto", b"https")])
    assert (single.client, single.scheme) == ("203.0.113.5", "https")
    # No X-Forwarded-For at all: the right-most entry, the one our peer set.
    assert resolve([(b"X-Forwarded-Proto", b"http, https")]).scheme == "https"


@pytest.mark.parametrize(
    ("headers", "host", "port"),
    [
        ([(b"X-Forwarded-Host", b"example.org")], "example.org", 80),
        ([(b"X-Forwarded-Host", b"example.org:8080")], "example.org", 8080),
        ([(b"X-Forwarded-Host", b"[2001:db8::1]:8443")], "[2001:db8::1]", 8443),
        ([(b"X-Forwarded-Host", b"example.org:8080"), (b"X-Forwarded-Port", b"9090")], "example.org", 9090),
        ([(b"X-Forwarded-Host", b"example.org"), (b"X-Forwarded-Proto", b"https")], "example.org", 443),
        ([(b"X-Forwarded-Host", b"example.org:")], "example.org", 80),
        ([(b"X-Forwarded-Port", b"8443")], "own.example", 8443),
        # Invalid values are ignored, each on its own.
        ([(b"X-Forwarded-Host", b"evil.example/path")], "own.example", 8000),
        ([(b"X-Forwarded-Host", b"user@evil.example")], "own.example", 8000),
        ([(b"X-Forwarded-Host", b":80")], "own.example", 8000),
        ([(b"X-Forwarded-Port", b"0x50")], "own.example", 8000),
        ([(b"X-Forwarded-Port", b"65536")], "own.example", 8000),
        ([(b"X-Forwarded-Host", b"example.org"), (b"X-Forwarded-Port", b"x")], "example.org", 80),
    ],
)
def test_host_and_port(headers: list[tuple[bytes, bytes]], host: str, port: int) -> None:
    view = resolve(headers, host="own.example", port=8000)
    assert (view.host, view.port) == (host, port)
    assert view.from_headers == ((host, port) != ("own.example", 8000))


# --- nothing raises ----------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([b"forwarded", b"x-forwarded-for", b"x-forwarded-proto",
                                           b"x-forwarded-host", b"x-forwarded-port"]),
                          st.binary(max_size=80)), max_size=4))
def test_fuzz_any_header_values_resolve_without_raising(headers: list[tuple[bytes, bytes]]) -> None:
    view = resolve_client(PROXY, headers, TRUSTED)
    assert view.scheme in ("http", "https")
    if not view.from_headers:
        assert view == own()


def test_random_chains_right_most_untrusted_wins() -> None:
    rng = random.Random(7239)
    for _ in range(200):
        untrusted = [f"203.0.113.{rng.randrange(256)}" for _ in range(rng.randrange(1, 4))]
        proxies = [f"10.{rng.randrange(256)}.0.{rng.randrange(256)}" for _ in range(rng.randrange(0, 4))]
        chain = untrusted + proxies
        xff = resolve_client(PROXY, [(b"X-Forwarded-For", ", ".join(chain).encode())], TRUSTED)
        fwd = resolve_client(PROXY, [(b"Forwarded", ", ".join(f"for={a}" for a in chain).encode())], TRUSTED)
        assert xff.client == fwd.client == untrusted[-1]
