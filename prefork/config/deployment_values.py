"""Values of the settings for running beside other servers: a server's name, a Redis URL.

Strategy: like ``prefork.config.values``, each parser takes the stripped INI text and
raises ValueError stating the allowed form; a Redis URL may carry a password, so it is
shown with the password redacted wherever the configuration is printed.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit, urlunsplit

from prefork.config.values import ValueType


def parse_instance_name(text: str) -> str:
    """Validate a short name for this server among several (empty is allowed).

    Raises:
        ValueError: anything but 1 to 16 letters and digits.
    """
    entry = text.strip()
    if entry and not re.fullmatch(r"[A-Za-z0-9]{1,16}", entry):
        raise ValueError("expected 1 to 16 letters and digits (e.g. app1), or empty")
    return entry


def parse_redis_url(text: str) -> str:
    """Validate a Redis URL: ``redis://host:port/db``, ``rediss://`` (TLS) or ``unix:///path``.

    Raises:
        ValueError: another scheme, or no host (no path for ``unix://``).
    """
    entry = text.strip()
    scheme, _, rest = entry.partition("://")
    if scheme not in ("redis", "rediss", "unix") or not rest or rest.startswith("?"):
        raise ValueError("expected redis://host:port/db, rediss://host:port/db (TLS) or unix:///path/to/socket")
    if scheme == "unix" and not rest.startswith("/"):
        raise ValueError("expected unix:///absolute/path/to/redis.sock")
    return entry


def redact_url(url: str) -> str:
    """``url`` with any password (``user:password@`` or ``?password=``) shown as ``***``."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        host = netloc.rpartition("@")[2]
        netloc = (f"{parts.username}:***@" if parts.username else ":***@") + host
    query = "&".join("password=***" if pair.split("=", 1)[0].lower() == "password" else pair
                     for pair in parts.query.split("&")) if parts.query else ""
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def redis_url_value() -> ValueType[str]:
    """A Redis URL (``parse_redis_url``), shown with its password redacted."""
    return ValueType(parse_redis_url, redact_url)
