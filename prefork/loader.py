"""Find the application a worker serves, from a ``module:callable`` spec.

Strategy: an object with the native ``prefork_application`` hook (``prefork.App``)
is served natively; any other callable is treated as WSGI. An empty spec
serves the built-in demo app. Import errors propagate with their traceback so
the worker can report them and the master can stop instead of respawning.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Any

from prefork.handlers import Application
from prefork.wsgi import WsgiApplication

DEFAULT_APP = "prefork.demo:app"


class AppLoadError(Exception):
    """The spec names something that cannot be served."""


def import_object(spec: str) -> Any:
    """Import ``module:attribute.path``.

    Args:
        spec: the dotted module, a colon, and an attribute path.

    Returns:
        The object.

    Raises:
        AppLoadError: the spec is malformed or the attribute does not exist.
        ImportError: the module cannot be imported (with its traceback).
    """
    module_name, sep, attr_path = spec.partition(":")
    if not sep or not module_name or not attr_path:
        raise AppLoadError(f"application {spec!r}: expected module:callable, e.g. myapp:app")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # like gunicorn: apps next to where we were started
    obj: Any = importlib.import_module(module_name)
    for name in attr_path.split("."):
        try:
            obj = getattr(obj, name)
        except AttributeError:
            raise AppLoadError(f"application {spec!r}: module {module_name!r} has no attribute "
                               f"{attr_path!r}") from None
    return obj


def load_application(spec: str, *, threads: int) -> Application:
    """Import the app named by ``spec`` and wrap it as a prefork Application.

    Args:
        spec: ``module:callable``, or empty for the demo app.
        threads: handler threads (for ``wsgi.multithread``).

    Returns:
        Something the worker can call with a CompleteRequest.
    """
    obj = import_object(spec or DEFAULT_APP)
    native = getattr(obj, "prefork_application", None)
    if native is not None:
        return native()  # type: ignore[no-any-return]
    if not callable(obj):
        raise AppLoadError(f"application {spec!r} is a {type(obj).__name__}, not a callable")
    return WsgiApplication(obj, multithread=threads > 1)
