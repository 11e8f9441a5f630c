"""Who sent a request and how, once trusted proxies have had their say.

Strategy: a connection knows its direct peer and whether TLS carries it; behind
a proxy neither is the client's. The peer's trust is decided once per
connection (``[proxy] trusted``), so a request from an untrusted peer costs one
attribute read; a trusted peer's forwarding headers are read per request by the
sans-IO ``prefork.protocol.forwarded``. The result feeds everything that
names the client: ``REMOTE_ADDR``, ``wsgi.url_scheme``, ``SERVER_NAME`` /
``SERVER_PORT``, the native ``Request``, the access log, the status page's
allow list and the WebSocket session. The headers themselves reach the app
unchanged either way.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefork.config.settings import ConnectionSettings
from prefork.protocol.forwarded import resolve_client
from prefork.protocol.http.events import Request

__all__ = ["FORWARDING_FIELDS", "RequestOrigin", "direct_origin", "request_origin"]

#: The fields ``prefork.protocol.forwarded`` reads (lowercase); a request with none is its connection's.
FORWARDING_FIELDS = frozenset({b"forwarded", b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                               b"x-forwarded-port"})


@dataclass(frozen=True, slots=True)
class RequestOrigin:
    """The client and the URL it used.

    Attributes:
        client: the client's (address, port); port 0 when a proxy did not say.
        scheme: ``"http"`` or ``"https"``.
        server: the (host, port) the client addressed: the listener's own, or
            what a trusted proxy said.
        forwarded_authority: ``host:port`` the client addressed when a trusted
            proxy named the host (``Forwarded: host=`` or ``X-Forwarded-Host``), else
            None: the request's own Host is then the one to compare an Origin with.
    """

    client: tuple[str, int]
    scheme: str
    server: tuple[str, int]
    forwarded_authority: str | None = None


def direct_origin(peer: tuple[str, int], server: tuple[str, int], secure: bool) -> RequestOrigin:
    """The origin of a request that no trusted proxy vouches for: the connection's own."""
    return RequestOrigin(peer, "https" if secure else "http", server)


def request_origin(direct: RequestOrigin, head: Request, settings: ConnectionSettings) -> RequestOrigin:
    """The origin after the forwarding headers of a trusted peer (call only for one).

    Args:
        direct: the connection's own origin.
        head: the request head.
        settings: ``trusted_proxies`` and ``forwarded_headers``.

    Returns:
        ``direct`` when the headers say nothing usable, else the forwarded view.
    """
    if not any(name.lower() in FORWARDING_FIELDS for name, _ in head.headers.raw):
        return direct  # the common case, even behind a proxy: a few µs of parsing saved
    peer, server = direct.client, direct.server
    view = resolve_client(peer[0], head.headers.raw, settings.trusted_proxies, peer_port=peer[1],
                          scheme=direct.scheme, host=None, port=server[1],
                          source=settings.forwarded_headers)
    if not view.from_headers:
        return direct
    port = view.port or server[1]
    return RequestOrigin((view.client, view.client_port or 0), view.scheme, (view.host or server[0], port),
                         f"{view.host}:{port}" if view.host else None)
