"""PEP 3333 adapter: a WSGI callable as a prefork Application.

Strategy: the request is complete before the app runs, so ``wsgi.input`` is
the staged, seekable body and ``CONTENT_LENGTH`` its true length, chunked
requests included (``wsgi.input_terminated`` is true). The adapter runs the
app until it has produced its first body chunk — by then ``start_response``
has been called — and hands the rest of the iterable to the I/O layer, which
pulls it in a handler thread as the socket drains. A ``wsgi.file_wrapper``
over a real file becomes a sendfile response.

An application that declares ``TakesStagedForms`` (the Flask and Django
adapters in ``prefork.apps.adapters``) has its ``multipart/form-data`` bodies
parsed while they arrive, as native routes do (``StagedFormBodies``): each
file part is written once, into its own staging file, and the parsed
``prefork.staging.forms.FormData`` is ``environ["prefork.form"]``. The body
itself went into the parts, so for such a request ``wsgi.input`` is a
``ParsedFormInput``: reading it raises, naming the environ key, rather than
returning an empty body that code reading it anyway would take for the
request (``CONTENT_LENGTH`` still says how long the body was). The adapters
never read it. An application that did not declare it is never given a
parsed form: its bodies stay raw, for it to parse as before.
"""

from __future__ import annotations

import io
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import IO, Any
from urllib.parse import unquote_to_bytes

from prefork.apps.handlers import CompleteRequest, FileBody, ResponseStream, TlsInfo
from prefork.apps.runtime import Runtime
from prefork.protocol.http.events import Request
from prefork.protocol.mediatype import is_form_data

#: Where an application that takes staged forms finds the parsed form
#: (``prefork.staging.forms.FormData``); the worker closes it when the request ends.
FORM_ENVIRON_KEY = "prefork.form"
#: The environ key of the client's TLS certificate (``ssl.SSLSocket.getpeercert()`` form).
CLIENT_CERT_ENVIRON_KEY = "prefork.client_cert"
#: A completed resumable upload (``prefork.staging.forms.UploadedFile``): ``save(dest)`` is a
#: link; ``wsgi.input`` reads the same file. The worker closes it when the request ends.
UPLOAD_ENVIRON_KEY = "prefork.upload"

WsgiApp = Callable[[dict[str, Any], Callable[..., Callable[[bytes], None]]], Iterable[bytes]]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]

# Framing is the server's job; an app's own copies would contradict ours (PEP 3333 §hop-by-hop).
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade",
                         "proxy-authenticate", "proxy-authorization"})


class FileWrapper:
    """``wsgi.file_wrapper``: iterates a file in blocks, or lets the server sendfile it."""

    def __init__(self, filelike: IO[bytes], block_size: int = 64 * 1024) -> None:
        self.filelike = filelike
        self.block_size = block_size
        if hasattr(filelike, "close"):
            self.close = filelike.close

    def __iter__(self) -> Iterator[bytes]:
        while chunk := self.filelike.read(self.block_size):
            yield chunk


class _StartResponse:
    """The ``start_response`` callable and what it was told."""

    def __init__(self) -> None:
        self.status: str | None = None
        self.headers: list[tuple[str, str]] = []
        self.written: list[bytes] = []
        self.headers_sent = False

    def __call__(self, status: str, headers: list[tuple[str, str]],
                 exc_info: ExcInfo | None = None) -> Callable[[bytes], None]:
        if exc_info is not None:
            try:
                if self.headers_sent:
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None
        elif self.status is not None:
            raise AssertionError("start_response called a second time without exc_info")
        _check_headers(status, headers)
        self.status, self.headers = status, list(headers)
        return self.written.append


_STATUS = re.compile(r"[1-9][0-9][0-9] [\t\x20-\x7e\x80-\xff]*")
_FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FIELD_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


# An app sends the same few status lines and header fields again and again:
# those already found valid are remembered (a bounded set of str pairs, so an
# app that varies every value just stops being cached).
_VALID_LINES: set[object] = set()
_MAX_VALID_LINES = 4096


def _check_headers(status: str, headers: list[tuple[str, str]]) -> None:
    # Checked here, in the handler thread, so that a bad header becomes a 500 for this
    # request (RFC 9110 §5.1/§5.5 grammar; latin-1 only, as PEP 3333 requires) and
    # never response splitting or an error in the event loop.
    if type(status) is not str or status not in _VALID_LINES:
        if not isinstance(status, str) or not _STATUS.fullmatch(status):
            raise ValueError(f"invalid WSGI status {status!r}: expected '200 OK' form")
        _remember_valid(status)
    for field in headers:
        if type(field) is tuple and field in _VALID_LINES:
            continue
        name, value = field
        if not isinstance(name, str) or not isinstance(value, str):
            raise TypeError(f"header {name!r}: {value!r}: names and values must be str")
        if not _FIELD_NAME.fullmatch(name) or not _FIELD_VALUE.fullmatch(value):
            raise ValueError(f"header {name!r}: {value!r}: not a valid latin-1 field line")
        if name.lower() == "content-length" and not (value.strip().isascii() and value.strip().isdigit()):
            raise ValueError(f"header {name!r}: {value!r}: Content-Length must be digits")
        if type(field) is tuple:
            _remember_valid(field)


def _remember_valid(line: object) -> None:
    if len(_VALID_LINES) < _MAX_VALID_LINES:
        _VALID_LINES.add(line)


class _ErrorStream(io.TextIOBase):
    """``wsgi.errors``: writes go to the server's error stream (stderr or the error log)."""

    def write(self, text: str) -> int:
        sys.stderr.write(text)
        return len(text)

    def flush(self) -> None:
        sys.stderr.flush()


_ERRORS = _ErrorStream()


class StagedFormBodies:
    """The form decision for a WSGI application that takes staged forms (``FormAware``):
    every ``multipart/form-data`` body is parsed while it arrives, whatever the route,
    since a WSGI application's routes are its own business."""

    def wants_form(self, head: Request) -> bool:
        """Whether ``head`` announces a form body (``mediatype.is_form_data``)."""
        return is_form_data(head.headers.get(b"content-type"))


class ParsedFormInput(io.RawIOBase):
    """``wsgi.input`` of a request whose form was parsed as it arrived.

    Readable, so that code checking for a stream finds one, but every read raises
    ``io.UnsupportedOperation`` with the reason: the bytes are in the parts of
    ``environ["prefork.form"]``, and an empty read would silently look like an
    empty body.
    """

    MESSAGE = ("prefork parsed this multipart/form-data body while it arrived: its fields and "
               f"files are in environ[{FORM_ENVIRON_KEY!r}], not in wsgi.input (the application "
               "declared staged forms; serve it without the prefork adapter to read the raw body)")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise io.UnsupportedOperation(self.MESSAGE)


class WsgiApplication:
    """Adapts a WSGI callable to the prefork Application protocol.

    Args:
        app: the WSGI application.
        multithread: whether handlers run in several threads (``wsgi.multithread``).
        runtime: the deployment facts, passed to the app as ``environ["prefork.apps.runtime"]``.
    """

    def __init__(self, app: WsgiApp, *, multithread: bool = True, runtime: Runtime | None = None) -> None:
        self.app = app
        self.multithread = multithread
        self.runtime = runtime if runtime is not None else Runtime()

    def __call__(self, request: CompleteRequest) -> ResponseStream:
        environ = build_environ(request, multithread=self.multithread)
        environ["prefork.apps.runtime"] = self.runtime
        start = _StartResponse()
        result = self.app(environ, start)
        try:
            return self._stream(result, start)
        except BaseException:
            close = getattr(result, "close", None)
            if close is not None:
                close()
            raise

    def _stream(self, result: Iterable[bytes], start: _StartResponse) -> ResponseStream:
        file_body = _file_body(result, start)
        chunks: list[bytes] = []
        rest: Iterator[bytes] | None = None
        if file_body is None and isinstance(result, (list, tuple)):
            # A sequence is all there: take it whole, so the response gets a Content-Length.
            chunks = [bytes(chunk) for chunk in result if chunk]
        elif file_body is None:
            # Otherwise only the first block: it must not wait for the next (PEP 3333).
            rest = iter(result)
            for chunk in rest:
                if chunk:
                    chunks.append(bytes(chunk))
                    break
            else:
                rest = None
        if start.status is None:
            raise RuntimeError("WSGI app returned without calling start_response")
        start.headers_sent = True
        response = _response_from(start, chunks, rest, file_body)
        response.on_close = getattr(result, "close", None)
        if rest is None and file_body is None:
            response.close()
        return response


def _response_from(start: _StartResponse, chunks: list[bytes], rest: Iterator[bytes] | None,
                   file_body: FileBody | None) -> ResponseStream:
    assert start.status is not None
    headers: list[tuple[str, str]] = []
    close = False
    length: int | None = None
    for name, value in start.headers:
        lower = name.lower()
        if lower in _HOP_BY_HOP:
            close = close or (lower == "connection" and "close" in value.lower())
            continue
        if lower == "content-length":
            if length is not None and length != int(value):
                raise ValueError(f"conflicting Content-Length headers: {length} and {value.strip()}")
            if length is not None:
                continue
            length = int(value)
        headers.append((name, value))
    code, _, reason = start.status.partition(" ")
    return ResponseStream(int(code), reason.strip(), headers, start.written + chunks, rest, file_body,
                          close, length)


def _file_body(result: Iterable[bytes], start: _StartResponse) -> FileBody | None:
    if not isinstance(result, FileWrapper) or start.written:
        return None
    try:
        fd = result.filelike.fileno()
        offset = result.filelike.tell()
        size = os.fstat(fd).st_size
    except (AttributeError, OSError, io.UnsupportedOperation):
        return None
    count = size - offset
    for name, value in start.headers:
        if name.lower() == "content-length":
            count = min(count, int(value))
    return FileBody(result.filelike, offset, max(count, 0))


def build_environ(request: CompleteRequest, *, multithread: bool = True) -> dict[str, Any]:
    """Build the PEP 3333 environ for a complete request.

    Args:
        request: the complete request.
        multithread: the value of ``wsgi.multithread``.

    Returns:
        The environ dict. Besides the PEP 3333 keys it carries ``RAW_URI`` /
        ``REQUEST_URI`` (the target as received), ``prefork.raw_headers`` (every field
        line in order, duplicates kept), ``prefork.trailers``, and ``prefork.form`` when
        the form was parsed as it arrived (``wsgi.input`` is then a ``ParsedFormInput``),
        ``prefork.upload`` for a completed resumable upload (``wsgi.input`` reads it);
        over TLS, ``HTTPS=on`` and mod_ssl's ``SSL_PROTOCOL``, ``SSL_CIPHER``,
        ``SSL_TLS_SNI``, ``SSL_CLIENT_VERIFY``, ``SSL_CLIENT_S_DN`` and
        ``prefork.client_cert``; ``WsgiApplication`` adds
        ``prefork.apps.runtime`` (the ``prefork.apps.runtime.Runtime`` the server runs with).
    """
    head = request.head
    raw_headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in head.headers.raw]
    environ: dict[str, Any] = {
        "REQUEST_METHOD": head.method.decode("latin-1"),
        "SCRIPT_NAME": "",
        "PATH_INFO": unquote_to_bytes(head.path).decode("latin-1"),
        "QUERY_STRING": head.query.decode("latin-1"),
        "RAW_URI": head.target.decode("latin-1"),
        "REQUEST_URI": head.target.decode("latin-1"),
        "SERVER_NAME": request.server[0],
        "SERVER_PORT": str(request.server[1]),
        "SERVER_PROTOCOL": "HTTP/" + head.http_version.decode("latin-1"),
        "SERVER_SOFTWARE": "prefork",
        "REMOTE_ADDR": request.peer[0],
        "REMOTE_PORT": str(request.peer[1]),
        "CONTENT_LENGTH": str(request.body_size) if request.body_size >= 0 else "",  # a chunked stream: unknown
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": request.url_scheme,
        "wsgi.input": request.body if request.form is None or request.completed_upload else ParsedFormInput(),
        "wsgi.errors": _ERRORS,
        "wsgi.multithread": multithread,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
        "wsgi.input_terminated": True,
        "wsgi.file_wrapper": FileWrapper,
        "prefork.raw_headers": raw_headers,
        "prefork.trailers": [(n.decode("latin-1"), v.decode("latin-1")) for n, v in request.trailers.raw]
        if request.trailers else [],
    }
    if request.form is not None:
        environ[FORM_ENVIRON_KEY] = request.form
    if request.completed_upload is not None:
        environ[UPLOAD_ENVIRON_KEY] = request.completed_upload
    if request.tls is not None:
        _add_tls(environ, request.tls)
    for name, value in raw_headers:
        key = name.upper()
        if "_" in key:
            continue  # would alias a dashed name in HTTP_*; dropped like gunicorn and nginx do
        key = key.replace("-", "_")
        if key == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = value
            continue
        if key in ("CONTENT_LENGTH", "TRANSFER_ENCODING"):
            continue  # framing is the server's: CONTENT_LENGTH is the staged body's size
        key = "HTTP_" + key
        if key in environ:
            environ[key] += ("; " if key == "HTTP_COOKIE" else ", ") + value
        else:
            environ[key] = value
    return environ


def _add_tls(environ: dict[str, Any], tls: TlsInfo) -> None:
    """The TLS variables under the names Apache's mod_ssl gave them, which CGI-era apps read."""
    environ["HTTPS"] = "on"
    environ["SSL_PROTOCOL"] = tls.version
    environ["SSL_CIPHER"] = tls.cipher
    if tls.server_name:
        environ["SSL_TLS_SNI"] = tls.server_name
    environ["SSL_CLIENT_VERIFY"] = "SUCCESS" if tls.client_cert else "NONE"
    if tls.client_cert:
        environ["SSL_CLIENT_S_DN"] = tls.client_subject()
        environ[CLIENT_CERT_ENVIRON_KEY] = tls.client_cert
