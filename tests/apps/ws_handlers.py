"""WebSocket handlers for where application code runs and what its failures give.

``/thread`` reports the threads its ``select_subprotocol`` and its constructor
ran on; ``/open`` raises in ``on_open``; ``/message`` echoes until a message
says "raise", then raises; ``/soon`` hands ``call_soon`` a function that
raises; ``/badclose`` and ``/badsend`` misuse their WebSocket (close code
5000, a message that is an int); ``/init`` cannot even be constructed.
"""

from __future__ import annotations

import threading
from typing import Any

from prefork import App

app = App()


class ReportsThreads:
    """Sends the names of the threads its handshake code ran on."""

    chosen_on = ""

    @classmethod
    def select_subprotocol(cls, offered: list[str]) -> str | None:
        """Take the first offer, noting the thread."""
        cls.chosen_on = threading.current_thread().name
        return offered[0]

    def __init__(self) -> None:
        self.made_on = threading.current_thread().name

    def on_open(self, ws: Any) -> None:
        """Report."""
        ws.send(f"{ReportsThreads.chosen_on} {self.made_on} {ws.subprotocol}")


class FailsOnOpen:
    """Raises as soon as the connection is open."""

    def on_open(self, ws: Any) -> None:
        """Fail."""
        raise RuntimeError("on_open failed on purpose")

    def on_message(self, ws: Any, message: str | bytes) -> None:
        """Never reached in a passing run."""
        ws.send(message)


class FailsOnMessage:
    """Echoes, and raises on the message "raise"."""

    def on_message(self, ws: Any, message: str | bytes) -> None:
        """Echo, or fail."""
        if message == "raise":
            raise RuntimeError("on_message failed on purpose")
        ws.send(message)


class FailsSoon:
    """Gives ``call_soon`` a function that raises."""

    def on_open(self, ws: Any) -> None:
        """Schedule the failure on the loop thread."""
        ws.call_soon(self.fail)

    def fail(self) -> None:
        """Fail."""
        raise RuntimeError("call_soon failed on purpose")


class ClosesWithABadCode:
    """Closes with a code that must not be sent."""

    def on_open(self, ws: Any) -> None:
        """Misuse ``close``."""
        ws.close(5000)


class SendsAnInt:
    """Sends something that is neither str nor bytes."""

    def on_open(self, ws: Any) -> None:
        """Misuse ``send``."""
        ws.send(42)


class FailsToStart:
    """Its constructor raises."""

    def __init__(self) -> None:
        raise RuntimeError("the constructor failed on purpose")


app.websocket("/thread")(ReportsThreads)
app.websocket("/open")(FailsOnOpen)
app.websocket("/message")(FailsOnMessage)
app.websocket("/soon")(FailsSoon)
app.websocket("/badclose")(ClosesWithABadCode)
app.websocket("/badsend")(SendsAnInt)
app.websocket("/init")(FailsToStart)


@app.route("/")
def index(request: Any) -> str:
    """A page for readiness checks."""
    return "ws handlers"
