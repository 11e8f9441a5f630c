"""The exit codes of ``prefork-serve``, defined once (the README's "Exit codes").

Strategy: the command line, the configuration check, the master and a worker
that cannot boot all end with one of these, so they live below all of them.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_BIND = 1  # a listening socket could not be created (port taken, no permission)
EXIT_CONFIG = 2  # bad configuration or usage
# Workers cannot start: the application cannot be imported (a worker exits with this,
# and the master stops instead of respawning), or workers keep dying while starting.
EXIT_BOOT = 3
