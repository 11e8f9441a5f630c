"""What a running worker tells the application about its deployment.

Strategy: applications sometimes need a fact of the server they run in: where
uploads go, and how a message reaches the WebSocket clients of every worker.
The worker builds one ``Runtime`` before it loads the application and the
loader hands it over: a native ``App`` receives it in ``App.bind`` (and reads
it as ``app.runtime`` while it handles a request), a WSGI application finds it
in ``environ["prefork.apps.runtime"]``. It is passed in, never read from a module
global, so two applications in one process (tests) each see their own.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefork.apps.broadcast import Subscribers, Transport


@dataclass(slots=True)
class Runtime:
    """Deployment facts for the application.

    Attributes:
        uploads_dir: where uploaded files are committed (``[uploads] dir``).
        staging_dir: where bodies are staged (``[staging] dir``; "" = system temp).
        workers: the configured number of worker processes.
        transport: how ``App.broadcast`` reaches every worker; None outside a server.
        subscribers: this worker's broadcast registry, where an application's
            observers are registered when it is bound; None outside a server.
    """

    uploads_dir: str = "uploads"
    staging_dir: str = ""
    workers: int = 1
    transport: Transport | None = None
    subscribers: Subscribers | None = None
