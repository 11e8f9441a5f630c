"""Test app: native routes that read their request bodies while they arrive (``stream=True``).

- ``POST /ingest``: reads ``request.stream`` to its end; answers the byte count and SHA-256.
- ``POST /echo``: answers while the body still arrives, each piece echoed back as it comes
  (full duplex).
- ``POST /gated``: reads nothing until the file ``$STREAM_GATE`` exists, then like ``/ingest``.
- ``POST /vanish``: reads until the client goes away and writes what it saw, the exception's
  type and message, to ``$STREAM_REPORT``.
- ``POST /staged``: an ordinary route (the body is staged first), for comparison.
- ``POST /early``: answers 202 at once without reading the body.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Iterator

from prefork.apps.app import App, Request, Response

app = App()


def _drain(request: Request) -> Response:
    assert request.stream is not None
    digest, total = hashlib.sha256(), 0
    for piece in request.stream.chunks():
        digest.update(piece)
        total += len(piece)
    return Response.json({"bytes": total, "sha256": digest.hexdigest()})


@app.route("/ingest", methods=["POST"], stream=True)
def ingest(request: Request) -> Response:
    return _drain(request)


@app.route("/echo", methods=["POST"], stream=True)
def echo(request: Request) -> Response:
    stream = request.stream
    assert stream is not None

    def pieces() -> Iterator[bytes]:
        while piece := stream.read(65536):
            yield piece

    return Response(pieces(), content_type="application/octet-stream")


@app.route("/gated", methods=["POST"], stream=True)
def gated(request: Request) -> Response:
    gate = os.environ["STREAM_GATE"]
    while not os.path.exists(gate):  # the test opens the gate once it has seen the client blocked
        time.sleep(0.01)
    return _drain(request)


@app.route("/vanish", methods=["POST"], stream=True)
def vanish(request: Request) -> Response:
    assert request.stream is not None
    total = 0
    try:
        for piece in request.stream.chunks():
            total += len(piece)
        outcome = {"bytes": total, "error": None}
    except OSError as exc:
        outcome = {"bytes": total, "error": type(exc).__name__, "message": str(exc)}
    with open(os.environ["STREAM_REPORT"], "w") as report:
        json.dump(outcome, report)
    return Response.json(outcome)


@app.route("/staged", methods=["POST"])
def staged(request: Request) -> Response:
    return Response.json({"bytes": len(request.body.read()), "stream": request.stream is not None})


@app.route("/early", methods=["POST"], stream=True)
def early(request: Request) -> Response:
    """Answers at once, without reading the body (a refusal, say)."""
    return Response.json({"read": 0}, 202)
