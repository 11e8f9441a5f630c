"""WebSocket echo at every path (the Autobahn conformance target), plus a chat channel.

``/chat`` subscribes each connection to the ``chat`` channel and broadcasts every
message it receives, so clients on different workers see each other.
"""

from __future__ import annotations

from typing import Any

from prefork import App

app = App()


class Echo:
    """Sends every message straight back."""

    def on_message(self, ws: Any, message: str | bytes) -> None:
        """Echo."""
        ws.send(message)


class Chat:
    """Broadcasts every message to everyone on the ``chat`` channel."""

    def on_open(self, ws: Any) -> None:
        """Join the channel."""
        ws.subscribe("chat")

    def on_message(self, ws: Any, message: str | bytes) -> None:
        """Publish to every worker."""
        app.broadcast("chat", message)


app.websocket("/chat")(Chat)
app.websocket("/")(Echo)
app.websocket("/<path:rest>")(Echo)


@app.route("/")
def index(request: Any) -> str:
    """A page for readiness checks."""
    return "ws echo"
