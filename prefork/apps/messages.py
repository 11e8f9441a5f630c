"""What a native handler receives and returns: ``Request``, ``Response``, ``HTTPError``.

Strategy: these are the plain values of the native API, kept apart from the
router (``prefork.apps.app``) so that helpers which build responses, such as
``prefork.apps.static``, depend on them and not on the router, and the router
depends on those helpers: the imports go one way. A ``Request`` wraps a
``CompleteRequest`` (the body already staged, a form already parsed); a
``Response`` turns into the I/O layer's ``ResponseStream`` in ``to_stream``,
where its header fields are checked (a handler that puts user input into a
header must never be able to split the response).
"""

from __future__ import annotations

import json as jsonlib
import os
import re
from collections.abc import Iterable
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from typing import IO, Any
from urllib.parse import parse_qsl, quote, unquote

from prefork.staging.body_stream import BodyStream
from prefork.staging.forms import FormData, MultiDict, UploadedFile
from prefork.apps.handlers import CompleteRequest, FileBody, ResponseStream
from prefork.protocol.mediatype import essence, is_form_data

__all__ = ["HTTPError", "MAX_MEMORY_BODY", "Request", "Response", "decode_path", "reason_phrase"]

# field-name = token (RFC 9110 §5.1); a value must not hold CR, LF or NUL (§5.5): a handler
# that puts user input into a header must never be able to split the response.
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Anything but HTAB, visible ASCII and obs-text (latin-1) would break the head or its encoding.
_BAD_VALUE = re.compile(r"[^\t\x20-\x7e\x80-\xff]")
#: Largest body ``Request.json()`` and a urlencoded ``Request.form`` read into RAM (413
#: beyond): both are parsed whole, and 16 MiB is far above any sane form or JSON document.
MAX_MEMORY_BODY = 16 * 1024 * 1024


class HTTPError(Exception):
    """Raise from a handler to answer with ``status`` (and an optional message).

    Args:
        status: the HTTP status code.
        message: shown in the default error page; the reason phrase if empty.
        headers: extra header fields for the error response (e.g. ``WWW-Authenticate``).
    """

    def __init__(self, status: int, message: str = "",
                 headers: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message or reason_phrase(status))
        self.status = status
        self.headers = list(headers or [])


class Request:
    """A complete request as a native handler sees it.

    Attributes:
        method: the method, e.g. "GET".
        path: the percent-decoded path.
        query_string: the raw query string.
        args: query parameters (MultiDict of str).
        headers: case-insensitive lookups via ``headers.get(name)``.
        body: the staged body stream (seekable).
        content_length: the true body length (chunked bodies included).
        path_params: values captured by ``<name>`` segments of the route.
        remote_addr: the client address.
        scheme: "https" over TLS, else "http".
        tls: what the TLS connection negotiated (``TlsInfo``: version, cipher, SNI name,
            client certificate), or None over plain TCP.
        error: in an error handler, the HTTPError or exception being answered.
    """

    def __init__(self, complete: CompleteRequest, path_params: dict[str, Any]) -> None:
        head = complete.head
        self._complete = complete
        self.method = head.method.decode("latin-1")
        self.path = decode_path(head.path)
        self.query_string = head.query.decode("latin-1")
        self.args: MultiDict[str] = MultiDict()
        for name, value in parse_qsl(self.query_string, keep_blank_values=True):
            self.args.add(name, value)
        self.headers = _Headers(head.headers.raw)
        self.body: IO[bytes] = complete.body
        self.content_length = complete.body_size
        self.path_params = path_params
        self.remote_addr = complete.peer[0]
        self.scheme = complete.url_scheme
        self.tls = complete.tls
        self._form: FormData | None = complete.form
        #: A completed resumable upload (``prefork.apps.resumable``): the whole file as an
        #: ``UploadedFile``, also ``files["file"]``; None for any other request.
        self.upload: UploadedFile | None = complete.completed_upload
        #: A streamed body (``@app.route(..., stream=True)``): a blocking reader of the body as
        #: it arrives (``read``, ``readinto``, ``readline``, ``chunks()``); None otherwise.
        self.stream: BodyStream | None = complete.body if isinstance(complete.body, BodyStream) else None
        self._urlencoded: MultiDict[str] | None = None
        self.error: BaseException | None = None

    @property
    def cookies(self) -> dict[str, str]:
        """Cookies sent with the request (a malformed Cookie header gives none)."""
        jar: SimpleCookie = SimpleCookie()
        for value in self.headers.get_all("cookie"):
            try:
                jar.load(value)
            except CookieError:
                continue
        return {name: morsel.value for name, morsel in jar.items()}

    @property
    def content_type(self) -> str:
        """The media type of the body, lower-cased, without parameters."""
        return essence(self.headers.get("content-type"))

    @property
    def is_form(self) -> bool:
        """Whether the body is ``multipart/form-data``: then it was parsed into ``form``
        and ``files`` while it arrived, and ``body`` is empty (``prefork.protocol.mediatype``)."""
        return is_form_data(self.headers.get("content-type"))

    def _read_small_body(self) -> bytes:
        if self.content_length > MAX_MEMORY_BODY:
            raise HTTPError(413, f"a body parsed in memory may have at most {MAX_MEMORY_BODY} bytes")
        self.body.seek(0)
        return self.body.read()

    def json(self) -> Any:
        """The body parsed as JSON.

        Raises:
            HTTPError: 400 when it is not valid JSON, 413 when over ``MAX_MEMORY_BODY``.
        """
        try:
            return jsonlib.loads(self._read_small_body() or b"null")
        except ValueError as exc:
            raise HTTPError(400, f"request body is not valid JSON: {exc}") from None

    @property
    def form(self) -> MultiDict[str]:
        """Text fields of a multipart or urlencoded form (empty for other bodies)."""
        if self._form is not None:
            return self._form.fields
        if self._urlencoded is None:
            fields: MultiDict[str] = MultiDict()
            if self.content_type == "application/x-www-form-urlencoded":
                text = self._read_small_body().decode("utf-8", "replace")
                for name, value in parse_qsl(text, keep_blank_values=True):
                    fields.add(name, value)
            self._urlencoded = fields
        return self._urlencoded

    @property
    def files(self) -> MultiDict[UploadedFile]:
        """Uploaded files of a multipart form, already staged on disk."""
        return self._form.files if self._form is not None else MultiDict()


def decode_path(raw: bytes) -> str:
    """Percent-decode a request path as UTF-8 (invalid UTF-8 becomes U+FFFD)."""
    return unquote(raw.decode("latin-1"), errors="replace") if b"%" in raw else raw.decode("latin-1")


class _Headers:
    """Read-only, case-insensitive view of the request's header fields."""

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.raw = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in raw]

    def get(self, name: str, default: str = "") -> str:
        """The first value of ``name``."""
        name = name.lower()
        for key, value in self.raw:
            if key.lower() == name:
                return value
        return default

    def get_all(self, name: str) -> list[str]:
        """Every value of ``name``, in order."""
        name = name.lower()
        return [value for key, value in self.raw if key.lower() == name]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and any(k.lower() == name.lower() for k, _ in self.raw)


class Response:
    """An HTTP response from a native handler.

    Args:
        body: str (UTF-8), bytes, an iterable of bytes, or a binary file object. A real
            file is sent with sendfile from its current position: ``count`` bytes, or
            up to its end.
        status: the status code.
        headers: extra header fields.
        content_type: the Content-Type (default text/html for str, octet-stream otherwise).
        count: for a file body, how many bytes to send (None: to the end of the file).
    """

    def __init__(self, body: str | bytes | Iterable[bytes] | IO[bytes] = b"", status: int = 200,
                 headers: dict[str, str] | list[tuple[str, str]] | None = None,
                 content_type: str | None = None, count: int | None = None) -> None:
        self.status = status
        self.headers: list[tuple[str, str]] = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        if isinstance(body, str):
            body = body.encode("utf-8")
            content_type = content_type or "text/html; charset=utf-8"
        self.body = body
        self.count = count
        if content_type is None and not self._has("content-type"):
            content_type = "application/octet-stream" if body else None
        if content_type:
            self.headers.append(("Content-Type", content_type))

    def _has(self, name: str) -> bool:
        return any(k.lower() == name for k, _ in self.headers)

    @classmethod
    def json(cls, data: Any, status: int = 200) -> Response:
        """A JSON response (UTF-8, no ASCII escaping needed by clients)."""
        return cls(jsonlib.dumps(data).encode("utf-8"), status, content_type="application/json")

    @classmethod
    def redirect(cls, location: str, status: int = 303) -> Response:
        """A redirect to ``location`` (303 by default: "see other", GET after a POST)."""
        return cls(b"", status, [("Location", quote(location, safe="/:?=&#%;@+,~!$'()*[]"))])

    def set_cookie(self, name: str, value: str, *, path: str = "/", max_age: int | None = None,
                   http_only: bool = True, same_site: str = "Lax", secure: bool = False) -> None:
        """Add a Set-Cookie header (RFC 6265; HttpOnly and SameSite=Lax by default)."""
        cookie: SimpleCookie = SimpleCookie()
        cookie[name] = value
        morsel = cookie[name]
        morsel["path"] = path
        morsel["samesite"] = same_site
        if max_age is not None:
            morsel["max-age"] = max_age
        if http_only:
            morsel["httponly"] = True
        if secure:
            morsel["secure"] = True
        self.headers.append(("Set-Cookie", morsel.OutputString()))

    def delete_cookie(self, name: str, *, path: str = "/") -> None:
        """Tell the client to drop cookie ``name``."""
        self.set_cookie(name, "", path=path, max_age=0)

    def to_stream(self) -> ResponseStream:
        """Convert to the I/O layer's ResponseStream.

        Raises:
            ValueError: a header name is not a token, or a value holds a control or non-latin-1 character.
        """
        for name, value in self.headers:
            if not _TOKEN.fullmatch(name) or _BAD_VALUE.search(value):
                raise ValueError(f"invalid response header {name!r}: {value[:80]!r}")
        reason = reason_phrase(self.status)
        body = self.body
        if isinstance(body, (bytes, bytearray)):
            return ResponseStream(self.status, reason, self.headers, [bytes(body)] if body else [])
        if hasattr(body, "read"):
            return _file_stream(self.status, reason, self.headers, body, self.count)  # type: ignore[arg-type]
        iterator = iter(body)
        close = getattr(body, "close", None)
        return ResponseStream(self.status, reason, self.headers, [], iterator, on_close=close)


def _file_stream(status: int, reason: str, headers: list[tuple[str, str]], handle: IO[bytes],
                 count: int | None) -> ResponseStream:
    """A sendfile body from ``handle``'s position: ``count`` bytes, or to its end."""
    try:
        fd = handle.fileno()
        offset = handle.tell()
        available = max(0, os.fstat(fd).st_size - offset)
    except (OSError, AttributeError, ValueError):
        data = handle.read() if count is None else handle.read(count)
        handle.close()
        return ResponseStream(status, reason, headers, [data])
    length = available if count is None else min(count, available)
    return ResponseStream(status, reason, headers, file=FileBody(handle, offset, length), on_close=handle.close)


def reason_phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Unknown"
