"""The built-in demo application, served when no app is named.

Strategy: one native ``App`` that shows what prefork is for. ``/`` is a page
with an upload form (posted by JavaScript with a live progress bar, or as a
plain HTML form that answers 303 back to the page), a gallery of committed
uploads (images inline, other files as downloads) and a chat over
``/ws/chat``. Uploads are parsed while they stream in and committed by
``UploadStore`` (a link, not a copy); every file served comes from the store
by its generated name, never by a client-chosen path. Chat messages go out
with ``app.broadcast`` so clients on every worker see them (on every server,
with ``[websocket] broadcast = redis``); ``app.keep_history`` keeps the last
``HISTORY`` of them (in Redis, the same for every worker and server; with the
local hub, what each worker saw) and a client that joins is sent them. The uploads directory is read from ``app.runtime`` when a
request needs it, never at import (the app is bound to its worker's
``Runtime`` after it is imported). User text is only ever inserted into the page with
``textContent`` (and escaped in the server-rendered gallery), under a strict
Content-Security-Policy with no inline script.
"""

from __future__ import annotations

import html
import json
import re
import secrets
import threading
import time
import unicodedata
from functools import lru_cache
from importlib import resources
from typing import Any
from urllib.parse import unquote

from prefork.apps.app import App, HTTPError, Request, Response
from prefork.config.logs import error_log
from prefork.apps.static import content_disposition, serve_file
from prefork.apps.uploads import StoredFile, UploadStore

__all__ = ["app"]

#: Chat messages a joining client is shown.
HISTORY = 50
#: Longest chat message and nickname (characters); longer ones are cut.
MAX_MESSAGE = 2000
MAX_NICK = 40
#: Entries shown in the gallery.
GALLERY_SIZE = 200
CHAT, GALLERY = "chat", "gallery"

ASSETS = resources.files(__name__) / "static"
PAGE_CSP = ("default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
            "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
            "frame-ancestors 'none'")
# Uploaded files are served from our origin: never let one run script if opened directly.
FILE_CSP = "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; sandbox"

app = App()
_pruned = threading.Event()


@lru_cache(maxsize=4)
def _store_in(directory: str) -> UploadStore:
    return UploadStore(directory)


def _store() -> UploadStore:
    """The upload store of the deployment this app is bound to."""
    return _store_in(app.runtime.uploads_dir)


def _prune_once() -> None:
    """Remove what a crashed worker left uncommitted, once per worker, on first use
    (not at import: importing the demo touches no files)."""
    if not _pruned.is_set():
        _pruned.set()
        try:
            _store().remove_orphans()
        except OSError:
            pass


# --- page ---------------------------------------------------------------------------
def _size(n: int) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} bytes"


def _gallery_item(entry: StoredFile) -> str:
    name = html.escape(entry.name, quote=True)
    label = html.escape(entry.filename, quote=True)
    caption = f'<span class="caption">{label}</span> <span class="size">{_size(entry.size)}</span>'
    if entry.image:
        return (f'<li class="item image" data-name="{name}"><a href="/files/{name}">'
                f'<img src="/files/{name}" alt="{label}" loading="lazy"></a>{caption}</li>')
    return (f'<li class="item file" data-name="{name}"><a href="/files/{name}" download="{label}">'
            f'{label}</a> <span class="size">{_size(entry.size)}</span></li>')


def _page() -> str:
    _prune_once()
    template = (ASSETS / "index.html").read_text("utf-8")
    items = "\n".join(_gallery_item(entry) for entry in _store().list(GALLERY_SIZE))
    return template.replace("<!--GALLERY-->", items)


@app.route("/")
def index(request: Request) -> Response:
    """The demo page, with the gallery rendered on the server (works without JS)."""
    return Response(_page(), headers=[("Content-Security-Policy", PAGE_CSP),
                                      ("X-Content-Type-Options", "nosniff"),
                                      ("Referrer-Policy", "no-referrer"),
                                      ("Cache-Control", "no-store")])


app.static("/static", str(ASSETS))


# --- uploads --------------------------------------------------------------------------
def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept")


def _announce(entries: list[StoredFile]) -> None:
    for entry in entries:
        try:
            app.broadcast(GALLERY, json.dumps({"type": "upload", "file": entry.to_dict()}))
        except RuntimeError:
            return  # not inside a server (unit tests): nobody to tell


@app.route("/upload", methods=["POST", "PUT"])
def upload(request: Request) -> Response:
    """Commit uploaded files: multipart field(s) from the page, or a raw body.

    A raw body (``PUT``, or ``POST`` that is not a form) is named by ``?filename=``
    or a percent-encoded ``X-Filename`` header. Answers 201 with JSON for scripts
    and ``Accept: application/json``; a plain HTML form gets 303 back to ``/``.
    """
    if request.is_form:
        parts = [f for _, f in request.files.items() if f.filename or f.size]
        if not parts:
            raise HTTPError(400, "no file in the form")
        store = _store()
        saved = [store.save(part) for part in parts]
    else:
        if request.content_length == 0 and request.method == "POST":
            raise HTTPError(400, "empty body")
        filename = request.args.get("filename") or unquote(request.headers.get("x-filename"))
        saved = [_store().save_stream(request.body, filename, request.headers.get("content-type"))]
    _announce(saved)
    if request.is_form and not _wants_json(request):
        return Response.redirect("/", 303)
    return Response.json({"files": [entry.to_dict() for entry in saved]}, 201)


@app.route("/resumable/", methods=["POST"])
def resumable_complete(request: Request) -> Response:
    """A resumable upload (IETF draft or tus, ``[resumable] path``) has completed: into the
    gallery, as a form upload would go (``save()`` is a link of its data file)."""
    if request.upload is None:
        raise HTTPError(400, "create resumable uploads with the draft's or tus's headers")
    saved = [_store().save(request.upload)]
    _announce(saved)
    return Response.json({"files": [entry.to_dict() for entry in saved]}, 201)


@app.route("/api/files")
def list_files(request: Request) -> Response:
    """The gallery as JSON, newest first."""
    return Response.json({"files": [entry.to_dict() for entry in _store().list(GALLERY_SIZE)]})


@app.route("/files/<name>")
def get_file(request: Request) -> Response:
    """A committed upload: images inline, anything else as a download under its display name."""
    store = _store()
    entry = store.get(request.path_params["name"])
    path = store.path(entry.name) if entry is not None else None
    if entry is None or path is None:
        raise HTTPError(404)
    response = serve_file(request, path, content_type=entry.content_type,
                          download_name=None if entry.image else entry.filename)
    if entry.image:
        response.headers.append(("Content-Disposition", content_disposition(entry.filename, inline=True)))
    response.headers.append(("Content-Security-Policy", FILE_CSP))
    return response


# --- chat -------------------------------------------------------------------------------
#: Longest chat frame taken from a client (characters or bytes): the page sends one
#: message of at most MAX_MESSAGE characters (cut here anyway), JSON-escaped; 32x that
#: is room for any paste, and bounds what one frame costs to parse -> close 1009.
MAX_CHAT_FRAME = 64 * 1024
#: Deepest JSON nesting taken (the page sends a flat object). json.loads recurses per
#: level, so ~1,000 levels raised RecursionError: a traceback and close 1011 -> close 1003.
MAX_JSON_DEPTH = 32
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"')
_JSON_BRACKET = re.compile(r"[\[\]{}]")


def _refusal(message: str | bytes) -> tuple[int, str] | None:
    """Why a chat frame is not even parsed, as (close code, reason), or None to parse it.

    Too large: 1009 (RFC 6455 §7.4.1, "too big to process"). Nested deeper than
    MAX_JSON_DEPTH: 1003, data this endpoint cannot accept (it is valid UTF-8 and
    may be valid JSON, so 1007 would be wrong).
    """
    if len(message) > MAX_CHAT_FRAME:
        return 1009, f"chat message over {MAX_CHAT_FRAME} characters"
    # Bytes are read as json.loads would read them (UTF-8, or UTF-16/32 by their first bytes).
    text = message if isinstance(message, str) else message.decode(json.detect_encoding(message), "replace")
    if text.lstrip()[:1] not in ("[", "{"):
        return None  # no nesting: plain text, or a JSON scalar
    depth = 0
    for bracket in _JSON_BRACKET.finditer(_JSON_STRING.sub("", text)):
        depth += 1 if bracket.group() in "[{" else -1
        if depth > MAX_JSON_DEPTH:
            return 1003, f"JSON nested deeper than {MAX_JSON_DEPTH} levels"
    return None


app.keep_history(CHAT, HISTORY)


def _history() -> list[dict[str, Any]]:
    """The chat's kept messages, oldest first (may ask Redis: handler threads only)."""
    messages = []
    for message in app.history(CHAT):
        try:
            data = json.loads(message)
        except ValueError:
            continue
        if isinstance(data, dict) and data.get("type") == "message":
            messages.append(data)
    return messages


def _after_subscribing(ws: Any) -> None:
    """Wait until the subscriptions ``ws`` asked for are in effect on the loop.

    Then a history read afterwards can miss no message: one delivered in between is in
    both, and the page drops the duplicate by id. Handlers that run on the loop itself
    (``[server] threads = 0``) cannot wait for it and read at once.
    """
    if threading.current_thread() is threading.main_thread():
        return
    subscribed = threading.Event()
    ws.call_soon(subscribed.set)
    subscribed.wait(5.0)


def _clean(text: str, limit: int, keep: str = "") -> str:
    """Drop control/format characters (bidi overrides included), trim, cut to ``limit``."""
    text = "".join(ch for ch in text[:limit * 2] if ch in keep or unicodedata.category(ch)[0] != "C")
    return text.strip()[:limit]


class Chat:
    """One chat connection: history on join, then every message from every worker."""

    def on_open(self, ws: Any) -> None:
        """Subscribe, then send the history (after the subscription is in effect)."""
        ws.subscribe(CHAT)
        ws.subscribe(GALLERY)
        _after_subscribing(ws)
        ws.send(json.dumps({"type": "history", "messages": _history()}))

    def on_message(self, ws: Any, message: str | bytes) -> None:
        """Validate a message from the page and broadcast it."""
        refusal = _refusal(message)
        if refusal is not None:
            code, reason = refusal
            error_log.info("demo chat %s: %s; closing %d", ws.remote_addr, reason, code)
            ws.close(code, reason)
            return
        try:
            data = json.loads(message)
        except ValueError:
            data = {"text": message if isinstance(message, str) else ""}
        if not isinstance(data, dict):
            return
        text = _clean(str(data.get("text", "")), MAX_MESSAGE, keep="\n")
        if not text:
            return
        nick = _clean(str(data.get("name", "")), MAX_NICK) or "anonymous"
        app.broadcast(CHAT, json.dumps({
            "type": "message", "id": secrets.token_hex(8), "name": nick, "text": text, "ts": time.time(),
        }))

    def on_close(self, ws: Any, code: int, reason: str) -> None:
        """Nothing to clean up: the worker drops the subscriptions."""


app.websocket("/ws/chat")(Chat)
