"""A plain Flask app (no prefork import) that reports where it thinks a request came from.

``GET /who``: Flask's ``request.scheme``, ``is_secure``, ``remote_addr``, the external URL
``url_for`` builds, and the forwarding headers as the app received them.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request, url_for

app = Flask(__name__)


@app.get("/who")
def who() -> dict[str, Any]:
    return {
        "scheme": request.scheme,
        "is_secure": request.is_secure,
        "remote_addr": request.remote_addr,
        "external_url": url_for("who", _external=True),
        "x_forwarded_for": request.headers.get("X-Forwarded-For"),
        "x_forwarded_proto": request.headers.get("X-Forwarded-Proto"),
        "forwarded": request.headers.get("Forwarded"),
    }
