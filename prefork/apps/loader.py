"""Find the application a worker serves, from a ``module:callable`` spec.

Strategy: an object with the native ``prefork_application`` hook (``prefork.App``,
declared as ``prefork.apps.handlers.ServesNatively``) is served natively; any other
callable is treated as WSGI. An empty spec serves the built-in demo app. The
result is a ``LoadedApp`` that states every capability the worker may use (a
WSGI app has no WebSocket routes, and has its forms parsed while they arrive
only when it declares ``TakesStagedForms``, as the Flask and Django adapters
in ``prefork.apps.adapters`` do), and the app is handed
the worker's ``Runtime`` (native: ``App.bind``; WSGI: ``environ["prefork.apps.runtime"]``).
The ``AppWrapper``s given by the worker (its resumable-upload endpoint and ``StatusPage``) are wrapped around it here, where the app
is assembled. Import errors propagate with their traceback so
the worker can report them and the master can stop instead of respawning;
except under ``--reload``, where the worker serves a 500 page naming the error
and watches the files involved, so fixing a syntax error brings the app back
(gunicorn does the same for syntax errors; here any import failure counts).
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Protocol

from prefork.apps import reloader
from prefork.apps.handlers import LoadedApp, ServesNatively, TakesStagedForms
from prefork.config.logs import error_log
from prefork.apps.runtime import Runtime
from prefork.apps.wsgi import StagedFormBodies, WsgiApplication

DEFAULT_APP = "prefork.apps.demo:app"


class AppWrapper(Protocol):
    """Something put in front of the loaded app by the worker (the status page, resumable uploads)."""

    def wrap(self, app: LoadedApp) -> LoadedApp:
        """``app`` with the wrapper in front of it."""


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


def load_application(spec: str, *, threads: int, reload: bool = False, runtime: Runtime | None = None,
                     wrappers: Sequence[AppWrapper] = ()) -> LoadedApp:
    """Import the app named by ``spec`` and assemble what the worker serves.

    Args:
        spec: ``module:callable``, or empty for the demo app.
        threads: handler threads (for ``wsgi.multithread``).
        reload: ``--reload`` is on: an app that fails to load is logged and
            replaced by a 500 page, and the files of the failure are watched.
        runtime: the deployment facts handed to the app (None: ``Runtime()``'s defaults,
            no broadcast transport: outside a worker).
        wrappers: what the worker puts in front of the app, innermost first (the
            resumable-upload endpoint, the status page).

    Returns:
        The app with its capabilities stated; calling it handles a CompleteRequest.

    Raises:
        AppLoadError, ImportError or whatever the module raised, unless ``reload``.
    """
    loaded = _load_or_fail(spec, threads, reload, runtime if runtime is not None else Runtime())
    for wrapper in wrappers:
        loaded = wrapper.wrap(loaded)
    return loaded


def _load_or_fail(spec: str, threads: int, reload: bool, runtime: Runtime) -> LoadedApp:
    if not reload:
        return _load(spec, threads, runtime)
    # Bytecode caches are checked against the source's mtime in whole seconds and its
    # size: an edit within the second that keeps the size would import stale code.
    sys.dont_write_bytecode = True
    try:
        return _load(spec, threads, runtime)
    except Exception as exc:
        error_log.error("worker %d failed to load the application %r; serving a 500 page until a "
                        "watched file changes: %s", os.getpid(), spec or "(demo)", exc, exc_info=exc)
        for path in failure_files(exc):
            reloader.watch_file(path)
        return LoadedApp(WsgiApplication(failure_app(spec, exc), multithread=threads > 1, runtime=runtime))


def _load(spec: str, threads: int, runtime: Runtime) -> LoadedApp:
    obj = import_object(spec or DEFAULT_APP)
    if isinstance(obj, ServesNatively):
        native = obj.prefork_application(runtime)
        return LoadedApp(native, forms=native, websockets=native, streams=native)
    if not callable(obj):
        raise AppLoadError(f"application {spec!r} is a {type(obj).__name__}, not a callable")
    wsgi = WsgiApplication(obj, multithread=threads > 1, runtime=runtime)
    if isinstance(obj, TakesStagedForms) and obj.prefork_staged_forms is True:
        return LoadedApp(wsgi, forms=StagedFormBodies())
    return LoadedApp(wsgi)


def failure_files(exc: BaseException) -> list[str]:
    """The source files a failed import went through (and a SyntaxError's own file)."""
    files = [frame.filename for frame in traceback.extract_tb(exc.__traceback__)]
    if isinstance(exc, SyntaxError) and exc.filename:
        files.append(exc.filename)
    return [path for path in files if os.path.isfile(path)]


def failure_app(spec: str, exc: BaseException) -> Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]:
    """A WSGI app answering every request with 500 and the load error (``--reload`` only).

    The traceback goes to the client, which is acceptable only because ``--reload``
    is for development, and is what the developer needs to see.
    """
    text = (f"prefork: the application {spec or DEFAULT_APP!r} could not be loaded.\n"
            "Fix it and save: the worker restarts when a watched file changes.\n\n"
            + "".join(traceback.format_exception(exc)))
    body = text.encode("utf-8", "replace")

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        start_response("500 Internal Server Error", [("Content-Type", "text/plain; charset=utf-8"),
                                                     ("Content-Length", str(len(body)))])
        return [body]

    return app
