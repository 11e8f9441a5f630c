"""An application whose import ends the worker process with exit code 7.

Not an import error (which the worker reports as such): the kind of early death a
broken native extension or an ``os._exit`` in a settings module causes.
"""

from __future__ import annotations

import os

os._exit(7)
