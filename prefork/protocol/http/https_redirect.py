"""Where a plain-HTTP request is sent when the server wants HTTPS only (``[tls] redirect_http``).

Strategy: the ``Location`` is built from the request's own ``Host`` and target,
so a browser lands on the same page over HTTPS; the port is the HTTPS
listener's, left out when it is 443. The Host value goes into a response
header, so only a syntactically plain host (a DNS name, an IPv4 address or a
bracketed IPv6 address) is used: anything else is a bad request, never
reflected. 308 rather than 301 keeps the method and body (RFC 9110 §15.4.9),
so a redirected POST stays a POST.
"""

from __future__ import annotations

import re

from prefork.protocol.errors import BadRequest
from prefork.protocol.http.response import HeaderItem, http_date, status_line_and_headers

__all__ = ["redirect_location", "redirect_response"]

_HOST_RE = re.compile(rb"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?")


def redirect_location(host: bytes | None, target: bytes, https_port: int, fallback_host: str) -> bytes:
    """The https URL for a request.

    Args:
        host: the request's Host field value (None when it sent none: HTTP/1.0).
        target: the request target as received (origin form; an absolute form is reduced to its path).
        https_port: the port of the HTTPS listener.
        fallback_host: the host to name when the request has no Host.

    Returns:
        ``https://host[:port]/target``.

    Raises:
        BadRequest: the Host is not a plain host[:port].
    """
    if host is None:
        name = fallback_host.encode("ascii")
        if b":" in name and not name.startswith(b"["):
            name = b"[" + name + b"]"
    else:
        match = _HOST_RE.fullmatch(host.strip())
        if match is None:
            raise BadRequest(f"Host {host[:60]!r} is not host[:port]: cannot redirect it to HTTPS")
        name = match.group(1)
    if target.startswith((b"http://", b"https://")):
        slash = target.find(b"/", target.index(b"//") + 2)
        target = target[slash:] if slash >= 0 else b"/"
    if not target.startswith(b"/"):
        target = b"/"  # "*" of OPTIONS, or an authority form: the site's root
    port = b"" if https_port == 443 else b":%d" % https_port
    return b"https://" + name + port + target


def redirect_response(location: bytes) -> bytes:
    """A complete ``308 Permanent Redirect`` to ``location``, closing the connection."""
    body = b"This site is served over HTTPS: " + location + b"\n"
    headers: list[HeaderItem] = [
        (b"Location", location),
        (b"Content-Type", b"text/plain; charset=utf-8"),
        (b"Content-Length", str(len(body))),
        (b"Date", http_date()),
        (b"Connection", b"close"),
    ]
    return status_line_and_headers(308, headers) + body
