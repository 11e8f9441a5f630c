"""An app whose import kills its process (SIGSEGV) while the file ``$PREFORK_TEST_CRASH_MARKER`` exists.

It stands for a worker that dies at boot by a signal (a segfaulting extension,
the OOM killer) after the server has been running fine.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from typing import Any

_marker = os.environ.get("PREFORK_TEST_CRASH_MARKER", "")
if _marker and os.path.exists(_marker):
    os.kill(os.getpid(), signal.SIGSEGV)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
    """Answers ok."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\n"]
