"""The upload test app, but its import takes ``$PREFORK_TEST_IMPORT_SECONDS`` (default 1.5 s).

Keeps a new worker in its booting state long enough for a test to signal the master.
"""

from __future__ import annotations

import os
import time

from tests.apps.upload import app

time.sleep(float(os.environ.get("PREFORK_TEST_IMPORT_SECONDS", "1.5")))

__all__ = ["app"]
