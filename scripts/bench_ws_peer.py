"""The peer for ``scripts/bench.py ws``: the ``websockets`` library's asyncio echo server.

Strategy: the library's documented echo handler (``async for message in ws:
await ws.send(message)``) in ONE process and one event loop, as the library is
normally deployed; prefork runs several workers, so its figures are per
machine, not per core. Compression is off (the benchmark client does not offer
it either), keep-alive pings are off and ``max_size`` is 64 MiB like prefork's
default ``max_message_size``. A plain GET (the benchmark's readiness probe) is
answered 200 by ``process_request``.

Usage: python scripts/bench_ws_peer.py --port PORT
"""

from __future__ import annotations

import argparse
import asyncio
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

MAX_SIZE = 64 * 1024 * 1024


async def echo(ws: ServerConnection) -> None:
    """Send every message straight back."""
    async for message in ws:
        await ws.send(message)


def health(conn: ServerConnection, request: Any) -> Any:
    """200 for a request that is not a WebSocket handshake (readiness probe)."""
    if "upgrade" not in request.headers.get("Connection", "").lower():
        return conn.respond(HTTPStatus.OK, "ok\n")
    return None


async def main(port: int) -> None:
    async with serve(echo, "127.0.0.1", port, compression=None, ping_interval=None, max_size=MAX_SIZE,
                     process_request=health) as server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(main(parser.parse_args().port))
