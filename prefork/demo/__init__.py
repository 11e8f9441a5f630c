"""The built-in demo application served when no app is named.

Strategy: a placeholder WSGI page until the native demo (upload form, gallery,
chat) lands; it proves the server runs without any user code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

_PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>prefork</title></head>
<body><h1>prefork is running</h1>
<p>Serve your own WSGI app with <code>prefork-serve -c conf/server.ini myapp:app</code>.</p>
</body></html>
"""


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Answer every request with the placeholder page."""
    start_response("200 OK", [("Content-Type", "text/html; charset=utf-8"),
                              ("Content-Length", str(len(_PAGE)))])
    return [_PAGE]
