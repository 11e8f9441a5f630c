"""Host validation and absolute-form targets (RFC 9112 §3.2, RFC 3986 §3.2), every input in every split."""

from __future__ import annotations

import pytest

from prefork.protocol.errors import BadRequest
from prefork.protocol.http.events import Request
from tests.http.test_parser import events_of, rejected


def _request(data: bytes) -> Request:
    events = events_of(data)
    assert isinstance(events[0], Request), events
    return events[0]


def _get(host: bytes, version: bytes = b"1.1") -> bytes:
    return b"GET / HTTP/" + version + b"\r\nHost: " + host + b"\r\n\r\n"


@pytest.mark.parametrize(
    "host",
    [b"example.com", b"example.com:80", b"EXAMPLE.com.", b"xn--bcher-kva.example", b"ex_am-ple~1", b"a%20b",
     b"0.0.0.0=5000", b"!$&'()*+;=", b"127.0.0.1", b"127.0.0.1:8080", b"999.1.1.1", b"[::1]", b"[::1]:443",
     b"[2001:DB8::1]", b"[::ffff:192.0.2.1]:1", b"host:0", b"host:65535", b"host:00080",
     # port = *DIGIT: an empty port is the default port (RFC 3986 §3.2.3, RFC 9110 §4.2.3).
     b"example.com:", b"[::1]:",
     # RFC 9112 §3.2: an empty Host is what a client sends when the URI has no authority.
     b""],
)
def test_valid_hosts_are_accepted(host: bytes) -> None:
    assert _request(_get(host)).headers.get(b"host") == host


@pytest.mark.parametrize(
    "host",
    [b"user@example.com", b"user:pw@example.com", b"a b", b"example.com/path", b"example.com?x", b"example.com#f",
     b"a,b", b"a, b", b",", b"example.com:65536", b"example.com:123456", b"example.com:8o", b"example.com:-1",
     b"example.com: 80", b"example.com:80:80", b"ex\xe9mple.com", b"\xff", b"%zz", b"%2", b"a\\b", b'a"b', b"a<b",
     b"[::1", b"::1", b"::1]", b"[]", b"[::1]x", b"[::1]:x", b"[1::2::3]", b"[12345::]", b"[fe80::1%25eth0]",
     b"[v1.fe]", b"[127.0.0.1]", b"a[::1]", b"a\tb"],
)
def test_invalid_hosts_are_400(host: bytes) -> None:
    rejected(_get(host), BadRequest, f"invalid Host header: {host!r}")


def test_invalid_host_is_400_in_http10_too() -> None:
    rejected(_get(b"a,b", b"1.0"), BadRequest, "invalid Host header: b'a,b'")


# --- absolute-form ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "host_field", "effective"),
    [
        (b"GET http://example.com/foo?q=1 HTTP/1.1", b"Host: other.example", b"example.com"),
        (b"GET HTTP://Example.COM HTTP/1.1", b"hOsT: example.com", b"Example.COM"),
        (b"GET https://example.com:8443/ HTTP/1.1", b"Host: ", b"example.com:8443"),
        (b"GET http://user:pw@example.com:8080/x HTTP/1.1", b"Host: example.com:8080", b"example.com:8080"),
        (b"GET http://[::1]:8080/ HTTP/1.1", b"Host: [::1]:8080", b"[::1]:8080"),
        (b"GET http://example.com:/ HTTP/1.1", b"Host: example.com", b"example.com:"),
        # The authority ends at the first "/", "?" or "#": an "@" after it is no userinfo.
        (b"GET http://[::1]:/x,y@z?a@b HTTP/1.1", b"Host: [::1]", b"[::1]:"),
        # Not an http URI: an empty authority is the URI's business (RFC 9112 §3.2.2 sends Host empty).
        (b"GET foo:///x HTTP/1.1", b"Host: h", b""),
    ],
)
def test_absolute_form_authority_replaces_host(line: bytes, host_field: bytes, effective: bytes) -> None:
    req = _request(line + b"\r\n" + host_field + b"\r\nAccept: */*\r\n\r\n")
    name = host_field.partition(b":")[0]
    assert req.headers.raw == [(name, effective), (b"Accept", b"*/*")]


def test_absolute_form_without_host_in_http10_adds_it() -> None:
    req = _request(b"GET http://example.com/x HTTP/1.0\r\nAccept: */*\r\n\r\n")
    assert req.headers.raw == [(b"Accept", b"*/*"), (b"Host", b"example.com")]


def test_absolute_form_still_needs_a_valid_host_field() -> None:
    # RFC 9112 §3.2: 400 for a 1.1 request without Host, or with an invalid one, whatever the target.
    rejected(b"GET http://example.com/ HTTP/1.1\r\n\r\n", BadRequest, "missing Host header")
    rejected(b"GET http://example.com/ HTTP/1.1\r\nHost: a b\r\n\r\n", BadRequest, "invalid Host header: b'a b'")


@pytest.mark.parametrize("target", [b"http:///foo", b"http://:80/x", b"https://?q", b"HTTP://", b"http://@/",
                                    b"http://u@:8080"])
def test_http_uri_with_empty_host_is_400(target: bytes) -> None:
    # RFC 9110 §4.2.1: a recipient MUST reject an http(s) URI with an empty host as invalid.
    rejected(b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n", BadRequest,
             f"empty host in an http(s) request target: {target!r}")


@pytest.mark.parametrize("target", [b"http://a,b/", b"http://ex:99999/", b"http://[fffff::]/", b"http://%zz@x/",
                                    b"http://x%2/", b"http://[v1.fe]/"])
def test_absolute_form_with_invalid_authority_is_400(target: bytes) -> None:
    rejected(b"GET " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n", BadRequest,
             f"invalid authority in request target: {target!r}")


@pytest.mark.parametrize("target", [b"http://a@b@c/", b"http://ex:8o/", b"http://[zz]/", b"http://[::1/"])
def test_absolute_form_of_the_wrong_shape_is_400(target: bytes) -> None:
    rejected(b"GET " + target + b" HTTP/1.1\r\nHost: c\r\n\r\n", BadRequest, f"invalid request target: {target!r}")


# --- authority-form (CONNECT) -------------------------------------------------------


@pytest.mark.parametrize("target", [b"example.com:443", b"[::1]:443", b"10.0.0.1:0"])
def test_connect_authority_form_accepted(target: bytes) -> None:
    assert _request(b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n\r\n").target == target


@pytest.mark.parametrize("target", [b"example.com:", b"example.com", b":443", b"a,b:443", b"u@h:443",
                                    b"h:65536", b"[::1]", b"[zz]:1"])
def test_connect_bad_authority_form_400(target: bytes) -> None:
    rejected(b"CONNECT " + target + b" HTTP/1.1\r\nHost: h\r\n\r\n", BadRequest,
             f"invalid request target: {target!r}")
