"""The native application API: ``prefork.App``.

Strategy: a small router in the Flask mould — ``@app.route(path, methods)``
for HTTP handlers that take a ``Request`` and return a ``Response`` (or str,
bytes, dict), ``@app.websocket(path)`` for WebSocket handler classes, and
``app.broadcast`` to reach subscribers on every worker. What sets it apart
from WSGI is the body: a native route's ``multipart/form-data`` body is parsed
while it arrives, so ``request.files[name]`` is an ``UploadedFile`` already on
disk and ``save()`` is a rename. The loader serves an ``App`` natively through
its ``prefork_application`` hook (``prefork.apps.handlers.ServesNatively``), which
binds it to the worker's ``Runtime``: ``app.runtime`` holds the deployment's
facts, ``app.broadcast`` uses its transport, and the ``app.observe`` callbacks
go into its subscriber registry. Nothing is read from a module global.

Routes match the percent-decoded path; captured values are not decoded a
second time (``/a%2541`` captures ``a%41``, never ``aA``). A path that matches
a route but not its methods answers 405 with ``Allow``; no match answers 404.
Both, and any ``HTTPError``, go through ``@app.errorhandler(status)`` when one
is registered. An unexpected exception is the I/O layer's 500 unless a 500
handler is registered, in which case it is logged and that handler answers.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from prefork.apps.broadcast import Deliver
from prefork.apps.handlers import CompleteRequest, ResponseStream
from prefork.protocol.http.events import Request as RequestHead
from prefork.protocol.mediatype import is_form_data
from prefork.apps.messages import MAX_MEMORY_BODY, HTTPError, Request, Response, decode_path, reason_phrase
from prefork.apps.runtime import Runtime
from prefork.apps.static import safe_join, serve_file

__all__ = ["App", "HTTPError", "NativeApplication", "Request", "Response", "MAX_MEMORY_BODY"]

Handler = Callable[["Request"], Any]
_PARAM = re.compile(r"<(?:(?P<kind>path|int):)?(?P<name>[A-Za-z_][A-Za-z0-9_]*)>")


@dataclass(frozen=True, slots=True)
class Route:
    """One compiled route."""

    pattern: re.Pattern[str]
    methods: frozenset[str]
    handler: Any
    converters: tuple[tuple[str, str], ...]
    template: str
    stream: bool = False


def _compile(template: str) -> tuple[re.Pattern[str], tuple[tuple[str, str], ...]]:
    regex, converters, position = "", [], 0
    for match in _PARAM.finditer(template):
        regex += re.escape(template[position:match.start()])
        kind = match["kind"] or "str"
        regex += {"path": f"(?P<{match['name']}>.+)", "int": f"(?P<{match['name']}>[0-9]+)"}.get(
            kind, f"(?P<{match['name']}>[^/]+)")
        converters.append((match["name"], kind))
        position = match.end()
    regex += re.escape(template[position:])
    return re.compile(f"^{regex}$"), tuple(converters)


class App:
    """A native prefork application.

    Example::

        app = App()

        @app.route("/hello/<name>")
        def hello(request):
            return f"hello {request.path_params['name']}"
    """

    def __init__(self) -> None:
        self.routes: list[Route] = []
        self.ws_routes: list[Route] = []
        self.error_handlers: dict[int, Handler] = {}
        self._runtime = Runtime()
        self._observers: list[tuple[str, Deliver]] = []
        self._retained: dict[str, int] = {}

    # --- the server it runs in ----------------------------------------------------
    @property
    def runtime(self) -> Runtime:
        """The deployment this app is bound to (``Runtime()`` defaults until it is bound)."""
        return self._runtime

    def bind(self, runtime: Runtime) -> None:
        """Run in ``runtime``: the loader calls this before the first request.

        The callbacks registered with ``observe`` go into its subscriber registry.
        """
        self._runtime = runtime
        if runtime.subscribers is not None:
            for channel, callback in self._observers:
                runtime.subscribers.observe(channel, callback)
        for channel, count in self._retained.items():
            self._retain(channel, count)

    def route(self, path: str, methods: Iterable[str] = ("GET",), *, stream: bool = False
              ) -> Callable[[Handler], Handler]:
        """Register an HTTP handler for ``path`` (``<name>``, ``<int:n>``, ``<path:p>`` capture).

        A route that allows GET also answers HEAD (the body is not sent). With ``stream``
        the handler is called as soon as the request head is in, and reads the body as it
        arrives from ``request.stream`` (``[streaming]`` in the README); every other route
        is called once the body is staged.
        """
        def register(handler: Handler) -> Handler:
            pattern, converters = _compile(path)
            allowed = frozenset(m.upper() for m in methods)
            if "GET" in allowed:
                allowed |= {"HEAD"}
            self.routes.append(Route(pattern, allowed, handler, converters, path, stream))
            return handler
        return register

    def static(self, url_prefix: str, directory: str | os.PathLike[str], *,
               cache_control: str = "no-cache") -> None:
        """Serve the files under ``directory`` at ``url_prefix/<path>`` (GET and HEAD).

        Paths that leave ``directory`` (``..``, absolute paths, symlinks pointing out,
        NUL bytes) and dot-files answer 404; see ``prefork.apps.static``.
        """
        root = os.fspath(directory)
        prefix = url_prefix.rstrip("/")

        def serve(request: Request) -> Response:
            path = safe_join(root, request.path_params["path"])
            if path is None:
                raise HTTPError(404)
            return serve_file(request, path, cache_control=cache_control)

        self.route(f"{prefix}/<path:path>")(serve)

    def websocket(self, path: str) -> Callable[[type], type]:
        """Register a WebSocket handler class: one instance per connection, with
        ``on_open(ws)``, ``on_message(ws, message)`` and ``on_close(ws, code, reason)``."""
        def register(handler: type) -> type:
            pattern, converters = _compile(path)
            self.ws_routes.append(Route(pattern, frozenset({"GET"}), handler, converters, path))
            return handler
        return register

    def errorhandler(self, status: int) -> Callable[[Handler], Handler]:
        """Register a handler for responses with ``status`` (404, 405, 500, ...).

        It is called with the request and may read ``request.error`` (the HTTPError or
        exception); its result gets ``status`` whatever status it set.
        """
        def register(handler: Handler) -> Handler:
            self.error_handlers[status] = handler
            return handler
        return register

    def broadcast(self, channel: str, message: str | bytes) -> None:
        """Send ``message`` to every WebSocket subscribed to ``channel``, on every worker.

        Thread-safe. Raises RuntimeError outside a server (no transport in ``runtime``).
        """
        transport = self._runtime.transport
        if transport is None:
            raise RuntimeError("broadcast needs a running prefork worker (no transport installed)")
        transport.publish(channel, message)

    def observe(self, channel: str, callback: Deliver) -> Deliver:
        """Call ``callback(channel, message)`` for every message on ``channel`` that
        reaches this worker, subscribers or not (e.g. to keep a chat history).

        Callbacks run on the worker's loop thread and must be quick. May be used as
        ``app.observe("chat", remember)`` at import time: it takes effect when bound.
        """
        self._observers.append((channel, callback))
        if self._runtime.subscribers is not None:
            self._runtime.subscribers.observe(channel, callback)
        return callback

    def keep_history(self, channel: str, count: int) -> None:
        """Keep the last ``count`` messages broadcast on ``channel`` for ``history``.

        With ``[websocket] broadcast = redis`` they are kept in Redis, the same for every
        worker of every server; with the local hub each worker keeps what reached it
        since it started. May be called at import time: it takes effect when bound.
        """
        if count < 1:
            raise ValueError("keep_history needs a count of at least 1")
        self._retained[channel] = count
        self._retain(channel, count)

    def _retain(self, channel: str, count: int) -> None:
        if self._runtime.subscribers is not None:
            self._runtime.subscribers.retain(channel, count)
        if self._runtime.transport is not None:
            self._runtime.transport.retain(channel, count)

    def history(self, channel: str) -> list[str | bytes]:
        """The last messages of a ``keep_history`` channel, oldest first.

        May wait for a round trip to Redis: call it from a handler, never from a
        ``call_soon`` callback. While Redis is away it answers with what this worker
        recorded itself.
        """
        transport = self._runtime.transport
        kept = transport.history(channel) if transport is not None else None
        if kept is not None:
            return kept
        subscribers = self._runtime.subscribers
        return subscribers.recent(channel) if subscribers is not None else []

    # --- dispatch ---------------------------------------------------------------
    def match(self, path: str, method: str) -> tuple[Route | None, dict[str, Any], list[str]]:
        """Find the route for a path and method; returns (route, params, allowed methods)."""
        allowed: list[str] = []
        for route in self.routes:
            found = route.pattern.match(path)
            params = _convert(found, route.converters) if found is not None else None
            if params is None:
                continue
            if method in route.methods:
                return route, params, []
            allowed.extend(route.methods)
        return None, {}, allowed

    def match_websocket(self, path: str) -> tuple[type | None, dict[str, Any]]:
        """The WebSocket handler class for ``path``, if any, and its path parameters."""
        for route in self.ws_routes:
            found = route.pattern.match(path)
            params = _convert(found, route.converters) if found is not None else None
            if params is not None:
                return route.handler, params
        return None, {}

    def prefork_application(self, runtime: Runtime | None = None) -> NativeApplication:
        """The adapter the worker calls (``prefork.apps.handlers.ServesNatively``), after
        binding to ``runtime`` when one is given."""
        if runtime is not None:
            self.bind(runtime)
        return NativeApplication(self)


def _convert(found: re.Match[str], converters: tuple[tuple[str, str], ...]) -> dict[str, Any] | None:
    """The captured values, converted; None when an ``int`` value has more digits than
    ``int()`` accepts (4,300 by default): the path then does not match this route (404)."""
    # The path was percent-decoded once before matching; decoding again would turn
    # "%2541" into "A" and let "%252e%252e" become "..".
    try:
        return {name: int(found[name]) if kind == "int" else found[name] for name, kind in converters}
    except ValueError:
        return None


class NativeApplication:
    """Adapts an ``App`` to the worker's Application protocol."""

    def __init__(self, app: App) -> None:
        self.app = app

    def wants_form(self, head: RequestHead) -> bool:
        """Whether this request's multipart body should be parsed while it arrives."""
        if not is_form_data(head.headers.get(b"content-type")):
            return False
        route, _, _ = self.app.match(decode_path(head.path), head.method.decode("latin-1"))
        return route is not None

    def wants_stream(self, head: RequestHead) -> bool:
        """Whether this request's route reads its body while it arrives (``stream=True``)."""
        route, _, _ = self.app.match(decode_path(head.path), head.method.decode("latin-1"))
        return route is not None and route.stream

    def websocket_handler(self, path: bytes) -> tuple[type | None, dict[str, Any]]:
        """The WebSocket handler class for a request path."""
        return self.app.match_websocket(decode_path(path))

    def __call__(self, complete: CompleteRequest) -> ResponseStream:
        method = complete.head.method.decode("latin-1")
        route, params, allowed = self.app.match(decode_path(complete.head.path), method)
        request = Request(complete, params)
        try:
            if route is None:
                if allowed:
                    raise HTTPError(405, headers=[("Allow", ", ".join(sorted(set(allowed))))])
                raise HTTPError(404)
            response = _to_response(route.handler(request))
        except HTTPError as exc:
            response = self._error(request, exc.status, exc)
            response.headers.extend(exc.headers)
        except Exception as exc:
            if 500 not in self.app.error_handlers:
                raise  # the I/O layer logs it and answers a bare 500
            from prefork.config.logs import error_log

            error_log.error("error handling %s %s: %s", method, request.path, exc, exc_info=exc)
            response = self._error(request, 500, exc)
        return response.to_stream()

    def _error(self, request: Request, status: int, error: BaseException) -> Response:
        handler = self.app.error_handlers.get(status)
        if handler is not None:
            request.error = error
            response = _to_response(handler(request))
            response.status = status
            return response
        phrase = reason_phrase(status)
        message = str(error) if isinstance(error, HTTPError) else phrase
        text = f"{status} {phrase}\n" if message == phrase else f"{status} {phrase}: {message}\n"
        return Response(text, status, content_type="text/plain; charset=utf-8")


def _to_response(result: Any) -> Response:
    if isinstance(result, Response):
        return result
    if isinstance(result, (str, bytes)):
        return Response(result)
    if isinstance(result, (dict, list)):
        return Response.json(result)
    if isinstance(result, tuple) and len(result) == 2:
        response = _to_response(result[0])
        response.status = int(result[1])
        return response
    if result is None:
        return Response(b"", 204)
    if isinstance(result, Iterator):
        return Response(result)
    raise TypeError(f"handler returned {type(result).__name__}; expected Response, str, bytes or dict")
