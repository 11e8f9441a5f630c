"""prefork: a pre-fork HTTP/1.1 + WebSocket server for Python.

Version and re-exports only; importing this package has no side effects.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["App", "ClientDisconnected", "HTTPError", "Request", "Response", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy so that importing prefork (e.g. for __version__) loads no server code.
    if name in ("App", "HTTPError", "Request", "Response"):
        from prefork.apps import app

        return getattr(app, name)
    if name == "ClientDisconnected":  # what a streamed body's reader raises when its client went away
        from prefork.staging.body_stream import ClientDisconnected

        return ClientDisconnected
    raise AttributeError(f"module 'prefork' has no attribute {name!r}")
