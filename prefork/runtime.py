"""What a running worker tells the application about its deployment.

Strategy: applications (the demo, user apps) sometimes need a setting of the
server they run in — chiefly where uploads go. The worker fills these in
before it imports the application; outside a server they keep their defaults.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Runtime:
    """Deployment facts for the application.

    Attributes:
        uploads_dir: where uploaded files are committed (``[uploads] dir``).
        staging_dir: where bodies are staged (``[staging] dir``; "" = system temp).
        workers: the configured number of worker processes.
    """

    uploads_dir: str = "uploads"
    staging_dir: str = ""
    workers: int = 1


current = Runtime()
