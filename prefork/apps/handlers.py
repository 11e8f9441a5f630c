"""What the I/O layer hands to an application, and what it gets back.

Strategy: a request reaches an application only once it is complete, as a
``CompleteRequest`` with a staged, seekable body. The application answers with
a ``ResponseStream``: status and headers, the body chunks it has produced so
far, and either an iterator for the rest or a file to ``sendfile``. The I/O
layer pulls further chunks through the handler pool only when the socket has
room, so neither a slow reader nor a large body is buffered whole in RAM.

What the worker may ask of the application is declared here too, not probed
for: the loader returns a ``LoadedApp`` on which every capability (forms,
WebSocket routes, answers made on the loop thread) is always present.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any, Protocol, runtime_checkable

from prefork.protocol.http.events import Request
from prefork.protocol.http.headers import Headers
from prefork.config.logs import error_log
from prefork.apps.runtime import Runtime


@dataclass(frozen=True, slots=True)
class TlsInfo:
    """What a TLS connection negotiated, for the environ and the native ``Request``.

    Attributes:
        version: e.g. ``"TLSv1.3"``.
        cipher: the cipher suite's OpenSSL name.
        server_name: the SNI name the client asked for, or None.
        client_cert: the client's verified certificate as ``ssl.SSLSocket.getpeercert()``
            gives it, or None when the client sent none (or ``verify_client = none``).
    """

    version: str
    cipher: str
    server_name: str | None = None
    client_cert: dict[str, Any] | None = None

    def client_subject(self) -> str:
        """The client certificate's subject as ``CN=alice,O=Example`` (empty without one)."""
        if not self.client_cert:
            return ""
        return ",".join(f"{_RDN_SHORT.get(k, k)}={v}" for rdn in self.client_cert.get("subject", ())
                        for k, v in rdn)


# getpeercert() spells attribute types out; DNs are usually written with the short names.
_RDN_SHORT = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
              "countryName": "C", "stateOrProvinceName": "ST", "localityName": "L", "emailAddress": "emailAddress"}


@dataclass(slots=True)
class CompleteRequest:
    """A request whose head and body have fully arrived.

    Attributes:
        head: the parsed request head.
        body: the staged body, sealed and rewound (an empty stream when there was none).
        body_size: the true body length (chunked bodies included).
        trailers: trailer fields of a chunked body.
        peer: the client address (host, port) or a Unix socket path.
        server: the local address (host, port) the request arrived on.
        url_scheme: "https" on a TLS listener, else "http".
        form: the parsed multipart form, for routes that asked for one.
        tls: what the TLS connection negotiated, or None over plain TCP.
        resumable: for a request to the resumable-upload URL space, what its head decided
            (``prefork.staging.partial_intake.ResumableExchange``), for the endpoint in
            front of the application (``prefork.apps.resumable``).
        completed_upload: the ``UploadedFile`` of a completed resumable upload, for the
            application (``prefork.apps.resumable`` builds such requests).
    """

    head: Request
    body: IO[bytes]
    body_size: int
    trailers: Headers
    peer: tuple[str, int]
    server: tuple[str, int]
    url_scheme: str = "http"
    form: Any = None
    tls: TlsInfo | None = None
    resumable: Any = None
    completed_upload: Any = None


@dataclass(slots=True)
class FileBody:
    """A response body served from an open file with sendfile."""

    file: IO[bytes]
    offset: int
    count: int


@dataclass(slots=True)
class ResponseStream:
    """An application's answer, possibly still being produced.

    Attributes:
        status: the status code.
        reason: the reason phrase.
        headers: header fields as str pairs (no hop-by-hop framing fields).
        chunks: body bytes produced so far.
        rest: an iterator over further body chunks, or None when the body is complete.
        file: a file body for sendfile, or None.
        close_connection: the application asked for ``Connection: close``.
        on_close: called once when the response is done or abandoned.
        producer: the thread producing ``rest``, when that is not the caller's (see
            ``prefork.worker.pool.StreamProducer``); ``close()`` from elsewhere asks it to close.
    """

    status: int
    reason: str
    headers: list[tuple[str, str]]
    chunks: list[bytes] = field(default_factory=list)
    rest: Iterator[bytes] | None = None
    file: FileBody | None = None
    close_connection: bool = False
    content_length: int | None = None
    on_close: Callable[[], None] | None = None
    producer: Producer | None = None

    def pull(self, budget: int, emit: Callable[[bytes], None] | None = None) -> None:
        """Produce up to about ``budget`` more bytes from ``rest``.

        Runs in a handler thread: it calls application code. Each chunk goes to
        ``emit`` the moment it exists (PEP 3333: no block may wait for the next
        one), or into ``chunks`` when no ``emit`` is given (before the stream is
        handed to the loop). When the iterator is exhausted, ``rest`` becomes None
        and ``close()`` is called.
        """
        rest = self.rest
        if rest is None:
            return
        produced = 0
        keep = self.chunks.append if emit is None else emit
        try:
            for chunk in rest:
                if chunk:
                    keep(bytes(chunk))
                    produced += len(chunk)
                    if produced >= budget:
                        return
        except BaseException:
            self.rest = None
            self.close()
            raise
        self.rest = None
        self.close()

    def close(self) -> None:
        """Call the application's close hook once (PEP 3333: always called).

        A failing hook is logged: the response it belongs to is complete, and the
        hook may run on the event loop, which must not die of application code.
        A body produced by a thread of its own is closed on that thread, where its
        iterator ran: from any other thread this only asks the producer to stop.
        """
        if self.producer is not None and not self.producer.on_own_thread():
            self.producer.cancel()
            return
        hook, self.on_close = self.on_close, None
        if hook is not None:
            try:
                hook()
            except Exception as exc:
                error_log.error("the application's close() failed: %s", exc, exc_info=exc)


class Producer(Protocol):
    """The thread producing a streamed body, as a response sees it."""

    def on_own_thread(self) -> bool:
        """Whether the caller is the producing thread."""
        ...

    def request(self, budget: int) -> None:
        """Ask for about ``budget`` more bytes of the body."""
        ...

    def cancel(self) -> None:
        """Stop producing; the producing thread closes the body."""
        ...


class Application(Protocol):
    """What the worker calls, in a handler thread, for each complete request."""

    def __call__(self, request: CompleteRequest) -> ResponseStream:
        """Handle one request and return its response stream."""
        ...


#: A WebSocket route's handler class (None: no route) and the values its path captured.
WebSocketRoute = tuple[type | None, dict[str, Any]]


class FormAware(Protocol):
    """An application that has multipart bodies parsed while they arrive (native routes)."""

    def wants_form(self, head: Request) -> bool:
        """Whether this request's ``multipart/form-data`` body is parsed into a form."""
        ...


class WebSocketApp(Protocol):
    """An application with WebSocket routes."""

    def websocket_handler(self, path: bytes) -> WebSocketRoute:
        """The handler class for an upgrade request to ``path``, and its path parameters."""
        ...


class StreamAware(Protocol):
    """An application with routes that read their bodies while they arrive (``stream=True``)."""

    def wants_stream(self, head: Request) -> bool:
        """Whether this request's handler is called at its head and reads the body as it comes."""
        ...


class NativeAdapter(Application, FormAware, WebSocketApp, StreamAware, Protocol):
    """A native application's adapter: the call, forms, WebSocket and streaming routes."""


@runtime_checkable
class ServesNatively(Protocol):
    """An object the loader serves natively (``prefork.App``) rather than as WSGI."""

    def prefork_application(self, runtime: Runtime) -> NativeAdapter:
        """Bind to the worker's ``runtime`` and return the adapter the worker calls."""
        ...


@runtime_checkable
class TakesStagedForms(Protocol):
    """A WSGI application that reads ``multipart/form-data`` bodies from prefork's
    parsed form (``environ["prefork.form"]``) instead of re-parsing ``wsgi.input``.

    Declared by the adapters in ``prefork.apps.adapters`` (``staged_uploads`` for
    Flask, ``get_wsgi_application`` for Django) with a true ``prefork_staged_forms``,
    never assumed: an application that did not say so gets every body raw.
    """

    prefork_staged_forms: bool


class LoopAnswer(Protocol):
    """Something that answers a few requests itself, without application code (the
    status page): quick enough for the event loop, and needing no handler thread."""

    def answer(self, request: CompleteRequest) -> ResponseStream | None:
        """The response for ``request``, or None when it is the application's."""
        ...


_NO_ROUTE: WebSocketRoute = (None, {})


@dataclass(frozen=True, slots=True, eq=False)
class LoadedApp:
    """The application a worker serves, with every capability stated, none probed for.

    The loader builds it: a WSGI application is only ``call``; a native one is
    its own ``forms`` and ``websockets`` too; a WSGI application that declared
    ``TakesStagedForms`` has ``forms`` as well (``prefork.apps.wsgi.StagedFormBodies``). ``prefork.process.status.StatusPage.wrap``
    adds the status page to ``on_loop``. Calling it calls the application
    only: the worker asks ``answer_on_loop`` first, on its loop thread.

    Attributes:
        call: what runs in a handler thread for each complete request.
        forms: decides which multipart bodies are parsed while they arrive; None: none are.
        websockets: routes upgrade requests to handler classes; None: no WebSocket routes.
        on_loop: answer some requests on the loop thread before the application is asked.
        streams: decides which routes read their bodies while they arrive; None: none do
            (WSGI apps stream through ``[streaming] paths``, which the worker checks).
    """

    call: Application
    forms: FormAware | None = None
    websockets: WebSocketApp | None = None
    on_loop: tuple[LoopAnswer, ...] = ()
    streams: StreamAware | None = None

    def __call__(self, request: CompleteRequest) -> ResponseStream:
        """Run the application (in a handler thread)."""
        return self.call(request)

    def wants_form(self, head: Request) -> bool:
        """Whether this request's multipart body is parsed while it arrives (for WSGI:
        only in an application that declared ``TakesStagedForms``)."""
        return self.forms is not None and self.forms.wants_form(head)

    def wants_stream(self, head: Request) -> bool:
        """Whether this request's handler reads its body while it arrives (native ``stream=True``)."""
        return self.streams is not None and self.streams.wants_stream(head)

    @property
    def serves_websockets(self) -> bool:
        """Whether upgrade requests may be for the application (it has WebSocket routes)."""
        return self.websockets is not None

    def websocket_handler(self, path: bytes) -> WebSocketRoute:
        """The handler class and path parameters for ``path``; ``(None, {})`` without a route."""
        if self.websockets is None:
            return _NO_ROUTE
        return self.websockets.websocket_handler(path)

    def answer_on_loop(self, request: CompleteRequest) -> ResponseStream | None:
        """The response a server page makes for ``request`` (on the loop thread), or None:
        then the request goes to ``call`` in a handler thread."""
        for page in self.on_loop:
            response = page.answer(request)
            if response is not None:
                return response
        return None
