"""The resumable-upload endpoint: answers on a handler thread, and the completed upload to the app.

Strategy: the worker's loop decided, at the head, what a request to the
resumable URL space is and where its content goes
(``prefork.staging.partial_intake``); everything that may wait is done here, on
the handler thread that request is dispatched to, in front of the
application (``wrap``, like the status page): an offset retrieval preempts an
append still in flight and waits (bounded) for it to commit, so the offset it
reports is the one a resumed append must use (draft §4.6); a cancellation does
the same before it deletes; an append or creation commits its content (the
fdatasync happens before any answer names the new offset).

When an upload completes, the application is called as if the whole file had
come in one request: a ``POST`` to the creation request's target, with the
file's Content-Type, the upload as an ``UploadedFile`` (``request.upload``
and ``request.files["file"]`` natively; ``environ["prefork.upload"]`` and a
``wsgi.input`` that reads the file for WSGI) and tus metadata as form fields.
``save()`` is then the same link as for a form upload. A draft client gets the
application's response with ``Upload-Complete: ?1`` (§4.4.2); a tus client,
which expects tus's own answer, gets 204 (201 for a creation) unless the
application refused the file, whose answer it then gets as is.
"""

from __future__ import annotations

import dataclasses
import email.utils
import re
import time
from http import HTTPStatus
from collections.abc import Callable
from typing import IO, cast

from prefork.apps.handlers import Application, CompleteRequest, LoadedApp, ResponseStream
from prefork.config.logs import error_log
from prefork.protocol.http.events import Request
from prefork.protocol.http.headers import Headers
from prefork.protocol.mediatype import parse_options_header
from prefork.protocol.multipart import PartStart
from prefork.protocol.resumable import (
    Action,
    Dialect,
    ResumableError,
    append_headers,
    creation_headers,
    dialect_headers,
    offset_headers,
    options_headers,
)
from prefork.staging.forms import FormData, MultiDict, UploadedFile
from prefork.staging.partial_intake import ResumableExchange, ResumableUploads
from prefork.staging.partial_sink import PartialUploadSink
from prefork.staging.partial_uploads import PartialUpload, UploadBusy, UploadRecord
from prefork.staging.spool import BodySpool
from prefork.staging.stagingfile import DISK_FULL

__all__ = ["ResumableEndpoint", "UPLOAD_FIELD"]

# A header field value prefork will put in the head it builds: visible Latin-1 and spaces.
_FIELD_VALUE = re.compile(r"[\x20-\x7e\xa0-\xff]{1,200}")
#: The name a completed upload has in ``request.files``.
UPLOAD_FIELD = "file"
# How long an offset retrieval or a cancellation waits for an append in flight to let go.
LOCK_WAIT = 5.0
# The upload's framing fields: the application sees the representation, not the protocol.
_PROTOCOL_FIELDS = frozenset({b"upload-offset", b"upload-complete", b"upload-length", b"upload-metadata",
                              b"upload-defer-length", b"upload-draft-interop-version", b"tus-resumable",
                              b"content-type", b"content-length", b"transfer-encoding",
                              b"x-http-method-override", b"content-disposition"})


def _response(status: int, headers: list[tuple[str, str]], body: bytes = b"") -> ResponseStream:
    return ResponseStream(status, HTTPStatus(status).phrase, headers, [body] if body else [])


class ResumableEndpoint:
    """The resumable URL space in front of an application.

    Args:
        uploads: the worker's resumable uploads (store and limits).
        app: the application completed uploads are handed to (``wrap`` sets it).
    """

    def __init__(self, uploads: ResumableUploads, app: Application | None = None) -> None:
        self.uploads = uploads
        self.store = uploads.store
        self.limits = uploads.limits
        self._app = app

    def wrap(self, app: LoadedApp) -> LoadedApp:
        """``app`` with the endpoint in front of its call."""
        return dataclasses.replace(app, call=ResumableEndpoint(self.uploads, app.call))

    def __call__(self, request: CompleteRequest) -> ResponseStream:
        exchange = request.resumable
        assert self._app is not None
        if exchange is None:
            return self._app(request)
        if exchange.error is not None:
            return self._refusal(exchange, exchange.error)
        try:
            return self._answer(request, exchange)
        except ResumableError as exc:
            return self._refusal(exchange, exc)

    def _refusal(self, exchange: ResumableExchange, error: ResumableError) -> ResponseStream:
        content_type, body = error.body()
        headers = [("Content-Type", content_type), *error.headers, *self._dialect(exchange)]
        return _response(error.status, headers, body)

    @staticmethod
    def _dialect(exchange: ResumableExchange) -> list[tuple[str, str]]:
        request = exchange.request
        return dialect_headers(exchange.dialect, request.interop_version if request is not None else None)

    def _answer(self, request: CompleteRequest, exchange: ResumableExchange) -> ResponseStream:
        asked = exchange.request
        assert asked is not None
        if asked.action is Action.OPTIONS:
            return _response(204, options_headers(self.limits))
        if asked.action is Action.OFFSET:
            return self._offset(exchange)
        if asked.action is Action.CANCEL:
            return self._cancel(exchange)
        return self._content_in(request, exchange)

    # --- offset retrieval and cancellation -------------------------------------------------
    def _wait_open(self, upload_id: str) -> PartialUpload | None:
        try:
            return self.store.wait_open(upload_id, LOCK_WAIT)
        except UploadBusy:
            raise ResumableError(423, "another request holds this upload and did not let go; retry",
                                 headers=[("Retry-After", "1")]) from None

    def _offset(self, exchange: ResumableExchange) -> ResponseStream:
        asked = exchange.request
        assert asked is not None and asked.upload_id is not None
        record = self.store.read(asked.upload_id)
        if record is None or not record.complete:  # a complete upload's record changes no more
            upload = self._wait_open(asked.upload_id)
            record = upload.record if upload is not None else self.store.read(asked.upload_id)
            if upload is not None:
                upload.close()
        if record is None:
            raise ResumableError(404, "no such upload (it may have expired or been cancelled)")
        remaining = int(record.expires - time.time())
        headers = offset_headers(asked, record.state, self.limits, _http_date(record.expires), remaining,
                                 record.raw_metadata)
        return _response(200 if asked.dialect is Dialect.TUS else 204, headers)

    def _cancel(self, exchange: ResumableExchange) -> ResponseStream:
        asked = exchange.request
        assert asked is not None and asked.upload_id is not None
        upload = self._wait_open(asked.upload_id)
        if upload is None:
            raise ResumableError(404, "no such upload (it may have expired or been cancelled)")
        upload.delete()
        error_log.info("resumable upload %s cancelled at %d bytes", asked.upload_id, upload.record.offset)
        return _response(204, self._dialect(exchange))

    # --- creations and appends --------------------------------------------------------------
    def _content_in(self, request: CompleteRequest, exchange: ResumableExchange) -> ResponseStream:
        asked, sink = exchange.request, exchange.sink
        assert asked is not None and sink is not None
        # Decided on the bytes that arrived, not on the head: a chunked append may reach the length.
        if asked.dialect is Dialect.TUS:
            completes = exchange.length is not None and sink.size == exchange.length
        else:
            completes = exchange.completes and exchange.length in (None, sink.size)
        short = asked.dialect is Dialect.DRAFT and exchange.completes and not completes
        length = exchange.length if exchange.length is not None else (sink.size if completes else None)
        try:
            sha256 = sink.finish(complete=completes, length=length)
        except OSError as exc:  # the sync or the record failed: the upload stays at its last durable offset
            error_log.error("committing resumable upload %s failed: %s", sink.upload.id, exc)
            raise ResumableError(507 if exc.errno in DISK_FULL else 500,
                                 f"the upload could not be stored: {exc.strerror or exc}") from exc
        record = sink.upload.record
        expires = _http_date(record.expires)
        if short:
            raise ResumableError(400, f"Upload-Complete: ?1, but the content ends at {sink.size} of "
                                      f"{exchange.length} bytes", problem="inconsistent-upload-length")
        if not completes:
            if asked.action is Action.CREATE:
                headers = creation_headers(asked, exchange.location, record.state, self.limits, expires,
                                           int(record.expires - time.time()))
                return _response(201, headers)
            return _response(204, append_headers(asked, record.state, expires))
        error_log.info("resumable upload %s complete: %d bytes", record.id, sink.size)
        response = self._hand_to_app(request, sink, sha256)
        if asked.dialect is Dialect.DRAFT:
            response.headers += [("Upload-Complete", "?1"), *self._dialect(exchange)]
            return response
        if response.status >= 400:
            response.headers += self._dialect(exchange)
            return response
        response.close()
        if asked.action is Action.CREATE:
            return _response(201, creation_headers(asked, exchange.location, record.state, self.limits,
                                                            expires, int(record.expires - time.time())))
        return _response(204, append_headers(asked, record.state, expires))

    def _hand_to_app(self, request: CompleteRequest, sink: PartialUploadSink, sha256: str | None) -> ResponseStream:
        """Call the application with the completed upload as if it had arrived in one request.

        The record says complete only once the application has answered: if it raised, the
        upload's data went with its ``UploadedFile`` and a client that asks starts over."""
        upload, size = sink.upload, sink.size
        record = upload.record
        assert upload.fd is not None and self._app is not None
        spool = BodySpool.adopt(upload.fd, upload.data_path, size, sha256)
        upload.forget_data()  # the spool owns the data file (and its lock) now
        content_type, filename = _representation(record)
        part = PartStart(UPLOAD_FIELD, filename, content_type,
                         [("content-type", content_type)] if content_type else [])
        file = UploadedFile(part, spool)
        fields: MultiDict[str] = MultiDict()
        for key, value in record.metadata.items():
            fields.add(key, value or "")
        files: MultiDict[UploadedFile] = MultiDict()
        files.add(UPLOAD_FIELD, file)
        form = FormData(fields, files)
        try:
            head = _completed_head(request.head, record, content_type, size)
            completed = dataclasses.replace(request, head=head, body=cast(IO[bytes], spool), body_size=size,
                                            form=form, resumable=None, completed_upload=file)
            response = self._app(completed)
        except BaseException:
            form.close()
            raise
        _close_after(response, form.close)
        try:
            sink.record_complete(size, sha256)
        except OSError as exc:  # the app has the file; a client that asks again starts over
            error_log.error("recording resumable upload %s as complete failed: %s", record.id, exc)
        return response


def _close_after(response: ResponseStream, close: Callable[[], None]) -> None:
    """Close the completed upload (unless saved) once the response is done."""
    previous = response.on_close

    def on_close() -> None:
        try:
            if previous is not None:
                previous()
        finally:
            close()

    response.on_close = on_close


def _representation(record: UploadRecord) -> tuple[str | None, str | None]:
    """The completed upload's Content-Type and filename: the draft creation request's own
    fields; tus metadata (``filetype``, ``filename`` or ``name``, as tus-js-client and Uppy send)."""
    filename = None
    if record.content_disposition:
        _, params = parse_options_header(record.content_disposition)
        filename = params.get("filename")
    if record.dialect == Dialect.TUS.value:
        meta = record.metadata
        content_type = meta.get("filetype") or meta.get("type") or None
        if content_type is not None and not _FIELD_VALUE.fullmatch(content_type):
            content_type = None  # not something a header field can carry: the app sees none
        return content_type, meta.get("filename") or meta.get("name") or filename
    return record.content_type, filename


def _completed_head(final: Request, record: UploadRecord, content_type: str | None, size: int) -> Request:
    """The head the application sees: POST to the creation target, the client's own fields
    (cookies, authorization) without the upload protocol's, the file's type and length."""
    fields = [(name, value) for name, value in final.headers.raw if name.lower() not in _PROTOCOL_FIELDS]
    if content_type:
        fields.append((b"content-type", content_type.encode("latin-1")))
    if record.content_disposition:
        fields.append((b"content-disposition", record.content_disposition.encode("latin-1")))
    fields.append((b"content-length", str(size).encode()))
    return dataclasses.replace(final, method=b"POST", target=record.target.encode("latin-1"), headers=Headers(fields),
                               content_length=size, chunked=False, expects_continue=False, upgrade=None)


def _http_date(when: float) -> str:
    return email.utils.formatdate(when, usegmt=True)
