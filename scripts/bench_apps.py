"""The applications that ``scripts/bench.py`` serves, identical for every server.

Strategy: plain WSGI callables with no dependency beyond the standard library,
so prefork and gunicorn (and any later peer) run byte-for-byte the same code.
Served as ``bench_apps:NAME`` with ``scripts/`` as the working directory (or on
PYTHONPATH). The upload apps write into ``$BENCH_UPLOAD_DIR`` (default: the
system temp directory) and delete the file before answering, so a run leaves
nothing behind.

Apps:
    hello         any request -> 200 with a 100-byte body.
    upload        reads ``wsgi.input`` in 1 MiB pieces into a file, answers the byte count.
    upload_move   prefork's zero-copy path when ``wsgi.input`` has ``move_to`` (the staged
                  body is linked into place), else the same as ``upload``.
    flask_hello   the hello app as a Flask view (None when Flask is not installed).
    flask_upload  Flask: ``POST /form`` saves ``request.files["upload"]`` with ``.save(path)``
                  (Werkzeug spools the part to a temporary file, ``save`` copies it), answers
                  the file size; any GET answers the hello body (readiness probe).
    flask_upload_staged  ``flask_upload`` plus the one line ``staged_uploads(app)``
                  (``prefork.apps.adapters.flask``): under prefork the part was staged while
                  it streamed in and ``save`` links it into place; under any other server
                  Werkzeug parses as in ``flask_upload`` (None without Flask or prefork).
    django_upload a minimal Django project: ``POST /form`` saves ``request.FILES["upload"]``
                  with ``FileSystemStorage`` (Django's parser writes a temporary file, the
                  save renames it); any GET answers the hello body. Built on first access
                  (PEP 562 ``__getattr__``), so no other app configures Django.
    django_upload_staged  ``django_upload`` served by prefork's ``get_wsgi_application``
                  (``prefork.apps.adapters.django``): the staged part is renamed into place.
    download      ``GET /download`` sends ``$BENCH_DOWNLOAD_FILE`` through ``wsgi.file_wrapper``
                  (a server's sendfile path; 1 MiB reads where there is none); any other
                  request answers the hello body (readiness probe).
    native_app    a ``prefork.App``: ``GET /`` hello; ``POST /upload`` links the staged raw
                  body into place with ``request.body.move_to(path)``; ``POST /form`` saves
                  ``request.files["upload"]`` with ``.save(path)`` (a rename of the part that
                  was staged while it streamed in). Both answer the saved file's size.

Every upload app answers ``b"%d\n" % size`` as text/plain, so one client checks them all.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Iterable
from typing import Any

HELLO_BODY = (b"Hello from the prefork benchmark. " * 3)[:99] + b"\n"
assert len(HELLO_BODY) == 100
PIECE = 1 << 20

StartResponse = Callable[..., Any]


def hello(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """200 with a 100-byte text body, whatever the request."""
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(HELLO_BODY)))])
    return [HELLO_BODY]


def _upload_path() -> str:
    directory = os.environ.get("BENCH_UPLOAD_DIR") or tempfile.gettempdir()
    return os.path.join(directory, f"upload-{os.getpid()}-{uuid.uuid4().hex}.bin")


def _saved_size(save: Callable[[str], Any]) -> int:
    """Run ``save(path)`` for a fresh path, measure the file, then delete it: the
    benchmark counts the bytes saved, and the disk must not fill up across runs."""
    path = _upload_path()
    try:
        save(path)
        return os.path.getsize(path)
    finally:
        if os.path.exists(path):
            os.unlink(path)


def _copy_input(environ: dict[str, Any], path: str) -> int:
    stream = environ["wsgi.input"]
    remaining = int(environ.get("CONTENT_LENGTH") or 0)
    total = 0
    with open(path, "wb") as out:
        while remaining > 0:
            chunk = stream.read(min(PIECE, remaining))
            if not chunk:
                break
            out.write(chunk)
            total += len(chunk)
            remaining -= len(chunk)
    return total


def _answer(start_response: StartResponse, total: int) -> list[bytes]:
    body = b"%d\n" % total
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


def upload(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Save the request body to a file in 1 MiB reads, delete it, answer the byte count.

    A request without a body (the readiness probe) is answered at once.
    """
    if environ.get("REQUEST_METHOD") != "POST":
        return _answer(start_response, 0)
    return _answer(start_response, _saved_size(lambda path: _copy_input(environ, path)))


def upload_move(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Like ``upload``, but through ``wsgi.input.move_to`` when the server offers it."""
    stream = environ["wsgi.input"]
    if environ.get("REQUEST_METHOD") != "POST" or not hasattr(stream, "move_to"):
        return upload(environ, start_response)
    return _answer(start_response, _saved_size(stream.move_to))


def stream_ingest(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """Read ``wsgi.input`` to its end in 1 MiB pieces, counting (``bench_streaming``; prefork
    streams it under ``[streaming] paths``, gunicorn always does)."""
    stream, total = environ["wsgi.input"], 0
    while piece := stream.read(1 << 20):
        total += len(piece)
    return _answer(start_response, total)


def download(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
    """The file named by ``$BENCH_DOWNLOAD_FILE`` at ``/download``, else the hello body."""
    if environ.get("PATH_INFO") != "/download":
        return hello(environ, start_response)
    path = os.environ["BENCH_DOWNLOAD_FILE"]
    start_response("200 OK", [("Content-Type", "application/octet-stream"),
                              ("Content-Length", str(os.path.getsize(path)))])
    stream = open(path, "rb")
    wrapper = environ.get("wsgi.file_wrapper")
    if wrapper is not None:
        wrapped: Iterable[bytes] = wrapper(stream, PIECE)
        return wrapped
    return _read_pieces(stream)


def _read_pieces(stream: Any) -> Iterable[bytes]:
    with stream:
        while piece := stream.read(PIECE):
            yield piece


def _add_flask_hello(flask_app: Any) -> None:
    """Answer every GET with the hello body (shared by the Flask benchmark apps)."""
    from flask import Response

    @flask_app.route("/", defaults={"path": ""})
    @flask_app.route("/<path:path>")
    def index(path: str) -> Response:
        return Response(HELLO_BODY, mimetype="text/plain")


def _make_flask_hello() -> Any:
    try:
        from flask import Flask
    except ImportError:
        return None
    flask_app = Flask("bench_apps")
    _add_flask_hello(flask_app)
    return flask_app


flask_hello = _make_flask_hello()


def _make_flask_upload() -> Any:
    try:
        from flask import Flask, Response, request
    except ImportError:
        return None
    flask_app = Flask("bench_apps_upload")

    @flask_app.route("/form", methods=["POST"])
    def form() -> Response:
        return Response(b"%d\n" % _saved_size(request.files["upload"].save), mimetype="text/plain")

    _add_flask_hello(flask_app)
    return flask_app


flask_upload = _make_flask_upload()


def _make_flask_upload_staged() -> Any:
    try:
        from prefork.apps.adapters.flask import staged_uploads
    except ImportError:  # no Flask, or a peer's interpreter without prefork
        return None
    flask_app = _make_flask_upload()
    return None if flask_app is None else staged_uploads(flask_app)


flask_upload_staged = _make_flask_upload_staged()


def _make_django_upload(staged: bool) -> Any:
    """The Django project of ``django_upload`` (settings, one view, its WSGI callable)."""
    try:
        import django
        from django.conf import settings
    except ImportError:
        return None
    if not settings.configured:
        settings.configure(DEBUG=False, SECRET_KEY="bench", ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__,
                           MIDDLEWARE=[], INSTALLED_APPS=[], DATABASES={})
        django.setup()
    from django.core.files.storage import FileSystemStorage
    from django.http import HttpResponse
    from django.urls import path, re_path

    def form(request: Any) -> Any:
        if request.method != "POST":
            return HttpResponse(HELLO_BODY, content_type="text/plain")
        storage = FileSystemStorage(location=os.path.dirname(_upload_path()))

        def save(dest: str) -> None:
            storage.save(os.path.basename(dest), request.FILES["upload"])

        return HttpResponse(b"%d\n" % _saved_size(save), content_type="text/plain")

    def index(request: Any) -> Any:
        return HttpResponse(HELLO_BODY, content_type="text/plain")

    globals()["urlpatterns"] = [path("form", form), re_path(r"^.*$", index)]
    if staged:
        try:
            from prefork.apps.adapters.django import get_wsgi_application
        except ImportError:  # a peer's interpreter without prefork: Django's own
            from django.core.wsgi import get_wsgi_application
    else:
        from django.core.wsgi import get_wsgi_application
    return get_wsgi_application()


def __getattr__(name: str) -> Any:
    # Django is configured once per process: only when a Django app is asked for.
    if name in ("django_upload", "django_upload_staged"):
        app = _make_django_upload(staged=name == "django_upload_staged")
        globals()[name] = app
        return app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _make_native_app() -> Any:
    try:
        from prefork import App, Response as NativeResponse
    except ImportError:  # the peers' interpreters need not have prefork importable
        return None
    app = App()

    def answer(size: int) -> Any:
        return NativeResponse(b"%d\n" % size, content_type="text/plain")

    @app.route("/")
    def index(request: Any) -> Any:
        return NativeResponse(HELLO_BODY, content_type="text/plain")

    @app.route("/upload", methods=["POST"])
    def upload_raw(request: Any) -> Any:
        return answer(_saved_size(request.body.move_to))

    @app.route("/form", methods=["POST"])
    def upload_form(request: Any) -> Any:
        return answer(_saved_size(request.files["upload"].save))

    @app.route("/resumable/", methods=["POST"])
    def upload_resumable(request: Any) -> Any:  # a completed resumable upload (bench_resumable)
        return answer(_saved_size(request.upload.save))

    @app.route("/ingest", methods=["POST"], stream=True)
    def ingest(request: Any) -> Any:  # a streamed body, read as it arrives (bench_streaming)
        total = 0
        for piece in request.stream.chunks(1 << 20):
            total += len(piece)
        return answer(total)

    return app


native_app = _make_native_app()


def _make_broadcast_app() -> Any:
    """``broadcast_app`` (``bench_broadcast``): a ``prefork.App`` that measures the broadcast
    transport, not an application. ``GET /`` hello (the readiness probe); ``/ws/fan``
    subscribes to channel ``fan`` on open and broadcasts every message it receives to
    ``fan`` verbatim; ``/ws/pub`` does the same without subscribing (a sender that is not
    itself a receiver). No JSON, no history, no validation."""
    try:
        from prefork import App, Response as NativeResponse
    except ImportError:
        return None
    app = App()

    @app.route("/")
    def index(request: Any) -> Any:
        return NativeResponse(HELLO_BODY, content_type="text/plain")

    @app.websocket("/ws/fan")
    class Fan:
        def on_open(self, ws: Any) -> None:
            ws.subscribe("fan")

        def on_message(self, ws: Any, message: Any) -> None:
            app.broadcast("fan", message)

        def on_close(self, ws: Any, code: int, reason: str) -> None:
            pass

    @app.websocket("/ws/pub")
    class Pub:
        def on_open(self, ws: Any) -> None:
            pass

        def on_message(self, ws: Any, message: Any) -> None:
            app.broadcast("fan", message)

        def on_close(self, ws: Any, code: int, reason: str) -> None:
            pass

    return app


broadcast_app = _make_broadcast_app()
