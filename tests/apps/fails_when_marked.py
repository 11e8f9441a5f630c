"""A WSGI app whose import fails while the file named by $PREFORK_TEST_FAIL_IMPORT exists.

Lets a test break the application between start-up and a reload (HUP).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

_MARKER = os.environ.get("PREFORK_TEST_FAIL_IMPORT", "")
if _MARKER and os.path.exists(_MARKER):
    raise ImportError("deliberately broken for the reload test")


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Answer with the worker's pid."""
    body = str(os.getpid()).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
