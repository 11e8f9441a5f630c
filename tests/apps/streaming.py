"""Test apps whose streamed responses depend on the thread that called them.

Every body is ``CHUNKS`` lines ``<n> <thread id> <value>`` of ``CHUNK_BYTES``
each (large enough that the server asks for the body in several batches), so
a client can tell which thread produced each chunk and whether the request's
state was still there.

- ``flask_app``: ``GET /stream?tag=`` streams with ``stream_with_context``,
  reading ``request.args`` in every chunk (Flask's request context lives in a
  ``contextvars`` context of the thread that called the app).
- ``django_app``: ``GET /stream?tag=`` answers a ``StreamingHttpResponse``.
- ``contextvar_app``: a plain WSGI app whose iterator reads a ``ContextVar``
  and a ``threading.local`` set by the call.
"""

from __future__ import annotations

import contextvars
import threading
from collections.abc import Callable, Iterator
from typing import Any

CHUNKS = 8
CHUNK_BYTES = 128 * 1024


def _line(n: int, value: str) -> bytes:
    head = f"{n} {threading.get_ident()} {value} ".encode()
    return head + b"." * (CHUNK_BYTES - len(head) - 1) + b"\n"


def _make_flask_app() -> Any:
    from flask import Flask, request, stream_with_context

    app = Flask(__name__)

    @app.route("/stream")
    def stream() -> Any:
        def generate() -> Iterator[bytes]:
            for n in range(CHUNKS):
                yield _line(n, request.args.get("tag", "-"))  # needs the request context

        return app.response_class(stream_with_context(generate()), mimetype="text/plain")

    return app


flask_app = _make_flask_app()


def _make_django_app() -> Any:
    import django
    from django.conf import settings

    if not settings.configured:
        settings.configure(DEBUG=False, SECRET_KEY="tests-only", ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__,
                           MIDDLEWARE=[], INSTALLED_APPS=[], USE_TZ=True)
        django.setup()
    from django.core.wsgi import get_wsgi_application

    return get_wsgi_application()


def _django_stream(request: Any) -> Any:
    from django.http import StreamingHttpResponse

    tag = request.GET.get("tag", "-")
    return StreamingHttpResponse((_line(n, tag) for n in range(CHUNKS)), content_type="text/plain")


def _django_urls() -> list[Any]:
    from django.urls import path

    return [path("stream", _django_stream)]


def __getattr__(name: str) -> Any:
    # ``django_app`` is built when first asked for (by the server that serves it), not at
    # import: importing this module for its constants must not configure Django for the
    # whole test process (tests.apps.django_staged configures it its own way).
    if name == "django_app":
        app = _make_django_app()
        globals()["django_app"] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
urlpatterns = _django_urls()

_tag: contextvars.ContextVar[str] = contextvars.ContextVar("tag")
_local = threading.local()


def contextvar_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterator[bytes]:
    """Streams lines whose value comes from a ContextVar and a thread local set by this call."""
    tag = environ.get("QUERY_STRING", "").partition("tag=")[2] or "-"
    _tag.set(tag)
    _local.tag = tag
    start_response("200 OK", [("Content-Type", "text/plain")])
    return _contextvar_body()


def _contextvar_body() -> Iterator[bytes]:
    for n in range(CHUNKS):
        yield _line(n, f"{_tag.get()}/{getattr(_local, 'tag', 'MISSING')}")


class _EndlessBody:
    """An iterator with close(): records which threads iterated it and which closed it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.threads: set[int] = set()

    def __iter__(self) -> Iterator[bytes]:
        n = 0
        while True:
            self.threads.add(threading.get_ident())
            yield _line(n, "endless")
            n += 1

    def close(self) -> None:
        with open(self.marker, "w", encoding="ascii") as handle:
            handle.write(f"{sorted(self.threads)} {threading.get_ident()}")


def endless_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> _EndlessBody:
    """``GET /?marker=PATH``: an endless body; close() writes "[iterating threads] closing thread"."""
    start_response("200 OK", [("Content-Type", "text/plain")])
    return _EndlessBody(environ["QUERY_STRING"].partition("marker=")[2])
