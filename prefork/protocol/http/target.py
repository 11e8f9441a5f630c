"""The request line, its target, and the Host it names.

Strategy: the parser hands over one complete request line; it is matched by
one regex (``abnf.REQUEST_LINE``) and the target's form decided with a byte
compare or two, in the order RFC 9112 §3.2 lists the forms. The host a request
is for is then checked against one strict grammar, ``uri-host [":" port]``,
whether it arrives as the Host field or as the authority of an absolute-form
target (where it replaces Host, RFC 9112 §3.2.2): anything a front end and the
application might read differently -- userinfo, a comma (a list of hosts), a
slash, a bad port -- is a 400 before the application sees it.
"""

from __future__ import annotations

import ipaddress
import re

from prefork.protocol.errors import BadRequest, VersionNotSupported, describe
from prefork.protocol.http.abnf import ABSOLUTE_FORM, HTTP_VERSION, REQUEST_LINE

__all__ = ["check_host", "parse_request_line", "with_host"]

Pair = tuple[bytes, bytes]
RequestLine = tuple[bytes, bytes, bytes, bytes | None]  # method, target, version, target's host

_VERSIONS = {b"HTTP/1.1": b"1.1", b"HTTP/1.0": b"1.0"}

# Host = uri-host [ ":" port ]                                  (RFC 9112 §3.2)
# uri-host = IP-literal / IPv4address / reg-name                (RFC 3986 §3.2.2)
# reg-name = *( unreserved / pct-encoded / sub-delims )
# unreserved = ALPHA / DIGIT / "-" / "." / "_" / "~"
# sub-delims = "!" / "$" / "&" / "'" / "(" / ")" / "*" / "+" / "," / ";" / "="
# We leave the comma out: RFC 9110 §7.2 makes Host a single value, and a comma
# is how a field becomes a list -- one hop might route on "a" of "a,b" and the
# next on "b". IPv4address needs no branch of its own: every dotted quad is
# also a reg-name (RFC 3986 §3.2.2 "first-match-wins" only names it).
# Written as runs of plain characters between pct-encodings ("unrolled"), which
# the regex engine matches several times faster than a per-byte alternation.
_REG_CHARS = rb"[A-Za-z0-9\-._~!$&'()*+;=]*"
_REG_NAME = _REG_CHARS + rb"(?:%[0-9A-Fa-f]{2}" + _REG_CHARS + rb")*"
# IP-literal = "[" ( IPv6address / IPvFuture ) "]". The bracket's content is
# checked by ``ipaddress``; IPvFuture ("v1.x") is refused, as RFC 3986 §3.2.2
# lets an application that knows no such version do. No zone identifier ("%"):
# RFC 9844 removed them from URIs.
# port = *DIGIT (RFC 3986 §3.2.3): an empty port is allowed by the grammar and
# means the scheme's default (RFC 9110 §4.2.3 "an empty port component is
# equivalent to the default port"), so "example.com:" is accepted; a port of
# more than 5 digits or above 65535 names no TCP port and is refused.
_HOST = re.compile(rb"(?:\[([0-9A-Fa-f:.]+)\]|" + _REG_NAME + rb")(?::([0-9]{0,5}))?")
# authority = [ userinfo "@" ] host [ ":" port ]                (RFC 3986 §3.2)
# userinfo = *( unreserved / pct-encoded / sub-delims / ":" ); it holds no "@",
# so the authority splits unambiguously at the only "@" it may have.
_USERINFO = re.compile(rb"(?:[A-Za-z0-9\-._~!$&'()*+,;=:]|%[0-9A-Fa-f]{2})*")
_AUTHORITY_END = re.compile(rb"[/?#]")
_HTTP_SCHEMES = (b"http", b"https")


def _valid_host(value: bytes, *, need_port: bool = False) -> bool:
    m = _HOST.fullmatch(value)
    if m is None:
        return False
    literal, port = m.groups()
    if literal is not None:
        try:
            ipaddress.IPv6Address(literal.decode("ascii"))
        except ValueError:
            return False
    if not port:  # none, or empty (the default port)
        return not need_port
    return len(port) < 5 or int(port) <= 65535


def _empty_host(value: bytes) -> bool:
    # For a value that passed _valid_host: the host before any ":port" is empty.
    return not value or value[0] == 0x3A  # ":"


def check_host(value: bytes) -> None:
    """Validate a Host field value: ``uri-host [":" port]`` or empty (RFC 9112 §3.2).

    An empty value is what a client sends when the target URI has no authority
    (RFC 9112 §3.2), so it is allowed.

    Args:
        value: the field value, OWS already trimmed.

    Raises:
        BadRequest: anything else (RFC 9112 §3.2: MUST respond 400).
    """
    if value and not _valid_host(value):
        raise BadRequest(f"invalid Host header: {describe(value)}")


def parse_request_line(line: bytes) -> RequestLine:
    """Validate ``method SP request-target SP HTTP-version CRLF`` (RFC 9112 §3).

    Args:
        line: the complete line with its CRLF and no other LF.

    Returns:
        ``(method, target, version, host)``: version is ``b"1.1"`` or
        ``b"1.0"``; host is the absolute-form target's authority without
        userinfo (which replaces the Host field, RFC 9112 §3.2.2), else None.

    Raises:
        BadRequest: a malformed line, target or target authority.
        VersionNotSupported: a well-formed version other than 1.0 and 1.1.
    """
    m = REQUEST_LINE.fullmatch(line)
    if m is None:
        raise BadRequest(f"invalid request line: {describe(line[:-2])}")
    method, target, version = m.groups()
    short = _VERSIONS.get(version)
    if short is None:
        if HTTP_VERSION.fullmatch(version):
            raise VersionNotSupported(f"unsupported HTTP version: {describe(version)}")
        raise BadRequest(f"invalid HTTP version: {describe(version)}")
    if target[0] == 0x2F:  # "/": origin-form, by far the commonest
        return method, target, short, None
    # RFC 9112 §3.2: absolute-form for any method, authority-form only for
    # CONNECT (§3.2.3), asterisk-form only for OPTIONS (§3.2.4).
    if target == b"*" and method == b"OPTIONS":
        return method, target, short, None
    if ABSOLUTE_FORM.fullmatch(target):
        return method, target, short, _target_host(target)
    if method == b"CONNECT" and _valid_host(target, need_port=True) and not _empty_host(target):
        return method, target, short, None
    raise BadRequest(f"invalid request target: {describe(target)}")


def _target_host(target: bytes) -> bytes:
    # ABSOLUTE_FORM matched: the authority follows "://" up to "/", "?", "#" or the end.
    scheme, _, rest = target.partition(b"://")
    authority = _AUTHORITY_END.split(rest, maxsplit=1)[0]
    userinfo, at, host = authority.rpartition(b"@")
    if (at and not _USERINFO.fullmatch(userinfo)) or not _valid_host(host):
        raise BadRequest(f"invalid authority in request target: {describe(target)}")
    if _empty_host(host) and scheme.lower() in _HTTP_SCHEMES:
        # RFC 9110 §4.2.1: an http(s) URI with an empty host MUST be rejected.
        raise BadRequest(f"empty host in an http(s) request target: {describe(target)}")
    return host


def with_host(pairs: list[Pair], host: bytes) -> list[Pair]:
    """Return the fields with Host set to ``host`` (added if absent).

    RFC 9112 §3.2.2: a server receiving an absolute-form target MUST ignore the
    Host field and use the target's host instead. Rewriting the field makes the
    WSGI environ, native requests and WebSocket origin checks all see it.

    Args:
        pairs: the validated header fields (at most one Host among them).
        host: the target's host.

    Returns:
        A new list; the Host field keeps its name and position.
    """
    out = [(name, host) if name.lower() == b"host" else (name, value) for name, value in pairs]
    if not any(name.lower() == b"host" for name, _ in pairs):
        out.append((b"Host", host))
    return out
