"""Test app: ``tests.apps.native`` plus an ``<int:n>`` route, ``/items/<int:n>`` (its value as JSON)."""

from __future__ import annotations

from typing import Any

from prefork.apps.app import Request
from tests.apps.native import app

__all__ = ["app"]


@app.route("/items/<int:n>")
def item(request: Request) -> dict[str, Any]:
    return {"n": request.path_params["n"]}
