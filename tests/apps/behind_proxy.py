"""Test app for prefork behind nginx and haproxy: who the client is, an upload, and a chat.

- ``/env``: JSON of the client address and scheme the native ``Request`` has.
- ``POST /upload``: the body's size and SHA-256.
- WebSocket ``/chat``: says ``hello <client address>`` on open, then broadcasts
  every message to all connections of every worker.
"""

from __future__ import annotations

import hashlib
from typing import Any

from prefork.apps.app import App, Request

app = App()


@app.route("/env")
def env(request: Request) -> dict[str, Any]:
    return {"remote_addr": request.remote_addr, "scheme": request.scheme}


@app.route("/upload", methods=["POST"])
def upload(request: Request) -> dict[str, Any]:
    digest, size = hashlib.sha256(), 0
    while block := request.body.read(1 << 20):
        digest.update(block)
        size += len(block)
    return {"size": size, "sha256": digest.hexdigest()}


class Chat:
    """Greets with the client's address, then relays."""

    def on_open(self, ws: Any) -> None:
        ws.subscribe("chat")
        ws.send(f"hello {ws.remote_addr}")

    def on_message(self, ws: Any, message: str | bytes) -> None:
        app.broadcast("chat", message)


app.websocket("/chat")(Chat)
