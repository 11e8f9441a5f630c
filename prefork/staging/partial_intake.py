"""Where a request to the resumable-upload URL space starts: on the loop, at its head.

Strategy: a creation or an append must be weighed before its first content
byte is read (a wrong offset is answered 409 without taking the content, an
upload too large 413, a full partial store 507), and its content must go
straight into the upload's data file: so both are decided here, on the
worker's loop thread, the moment the head is in, and leave with a
``PartialUploadSink`` as the request's body sink. Everything else (offset
retrievals, cancellations, OPTIONS, refusals of requests without content, and
the answer once the content is in) is decided by ``prefork.apps.resumable`` on a
handler thread, where waiting for another request to let go of an upload, or
for a sync, costs no other connection anything.

The loop thread never waits here: the upload is opened with a non-blocking
lock, and one that another request holds is refused (423) after asking that
request to let go (``PartialUploadStore.preempt``), so the client's retry finds
it free.
"""

from __future__ import annotations

import errno
import time
from dataclasses import dataclass

from prefork.config.settings import ResumableSettings
from prefork.protocol.errors import BodyTooLarge
from prefork.protocol.http.events import Request
from prefork.protocol.resumable import (
    Action,
    Dialect,
    ResumableError,
    ResumableRequest,
    UploadLimits,
    check_append,
    check_size,
    classify,
    interim_response,
    wants_interim,
)
from prefork.staging.commit_queue import CommitQueue
from prefork.staging.partial_sink import PartialUploadSink
from prefork.staging.partial_uploads import PartialUpload, PartialUploadStore, UploadBusy, UploadRecord
from prefork.staging.writebehind import WriteBehindHelper

__all__ = ["ResumableExchange", "ResumableUploads"]


@dataclass(slots=True)
class ResumableExchange:
    """One request to the resumable URL space, as far as its head decided it.

    Attributes:
        request: what it asks (None when it could not even be classified).
        error: its refusal, if the head already earned one.
        sink: where its content goes (creations and appends).
        location: the upload resource's path (creations; appends: the resource's own).
        interim: the ``104`` to send before reading the content, or None.
        completes: the head says its content completes the upload (draft ``Upload-Complete:
            ?1``; tus: Content-Length reaches Upload-Length); the endpoint decides on the
            bytes that arrived (``prefork.apps.resumable``).
        length: the upload's length as far as known after this request.
    """

    request: ResumableRequest | None
    error: ResumableError | None = None
    sink: PartialUploadSink | None = None
    location: str = ""
    interim: bytes | None = None
    completes: bool = False
    length: int | None = None

    @property
    def dialect(self) -> Dialect:
        return self.request.dialect if self.request is not None else Dialect.DRAFT


class ResumableUploads:
    """The resumable-upload URL space of one worker: its store, limits and sinks.

    Args:
        settings: ``[resumable]``.
        write_behind: the worker's helper (appends are written and hashed on its thread).
        min_free_disk: ``[staging] min_free_disk``, kept free on the store's filesystem too.
        checksum: ``[uploads] checksum``: SHA-256 while appends arrive, across resumptions.
    """

    def __init__(self, settings: ResumableSettings, write_behind: WriteBehindHelper | None,
                 min_free_disk: int = 0, checksum: bool = True) -> None:
        self.settings = settings
        self.prefix = settings.prefix.encode("latin-1")
        self.store = PartialUploadStore(settings.dir, settings.expire_after, settings.instance)
        self.limits = UploadLimits(settings.max_size, int(settings.expire_after))
        self._write_behind = write_behind
        self._min_free_disk = min_free_disk
        self._checksum = checksum
        # Syncs on a thread of their own, not the write-behind's (``commit_queue``); inline without a helper.
        self._commits = CommitQueue() if write_behind is not None else None

    def matches(self, head: Request) -> bool:
        """Whether ``head`` is for the collection or one of its resources."""
        path = head.path
        return path.startswith(self.prefix) or path == self.prefix[:-1]

    def location(self, upload_id: str) -> str:
        return self.settings.prefix + upload_id

    def begin(self, head: Request, client: str) -> ResumableExchange:
        """Classify ``head`` and, for a creation or an append, open its upload and sink.

        Args:
            head: a request for which ``matches`` is true.
            client: the client's address (per-client limits).
        """
        rest = head.path[len(self.prefix):].decode("latin-1") if head.path.startswith(self.prefix) else ""
        try:
            request = classify(head.method, rest, head.headers, head.content_length)
        except ResumableError as exc:
            dialect = Dialect.TUS if head.headers.get(b"tus-resumable") is not None else Dialect.DRAFT
            return ResumableExchange(ResumableRequest(Action.OPTIONS, dialect), error=exc)
        exchange = ResumableExchange(request)
        try:
            if request.action is Action.CREATE:
                self._create(exchange, request, head, client)
            elif request.action is Action.APPEND:
                self._append(exchange, request)
        except ResumableError as exc:
            exchange.error = exc
        return exchange

    def _create(self, exchange: ResumableExchange, request: ResumableRequest, head: Request, client: str) -> None:
        check_size(request.length, request.content_length or 0, self.limits)
        count, held = self.store.usage(client)
        if count >= self.settings.max_uploads_per_client:
            raise ResumableError(429, f"{client} already has {count} partial uploads open; complete or "
                                      "cancel one first", headers=[("Retry-After", "60")])
        budget = self.settings.max_partial_bytes
        if budget is not None and held + (request.length or request.content_length or 0) > budget:
            raise ResumableError(507, "the partial-upload store is full")
        disposition = head.headers.get(b"content-disposition")
        content_type = head.headers.get(b"content-type")
        record = UploadRecord(
            id="", dialect=request.dialect.value, length=request.length, client=client,
            target=head.target.decode("latin-1"),
            content_type=content_type.decode("latin-1") if content_type and request.dialect is Dialect.DRAFT else None,
            content_disposition=disposition.decode("latin-1") if disposition else None,
            metadata=request.metadata, raw_metadata=request.raw_metadata, interop_version=request.interop_version)
        try:
            upload = self.store.create(record)
        except OSError as exc:
            raise ResumableError(507 if exc.errno in (errno.ENOSPC, errno.EDQUOT) else 500,
                                 f"cannot create the upload: {exc.strerror}") from exc
        exchange.location = self.location(upload.id)
        exchange.length = request.length
        exchange.completes = self._completes(request, 0, request.length)
        try:
            exchange.sink = self._sink(upload, request.length)
        except BaseException:
            upload.delete()
            raise
        if wants_interim(request) and head.http_version == b"1.1":
            exchange.interim = interim_response(exchange.location, self.limits, request.interop_version)

    def _append(self, exchange: ResumableExchange, request: ResumableRequest) -> None:
        assert request.upload_id is not None
        try:
            upload = self.store.open(request.upload_id)
        except UploadBusy:
            self.store.preempt(request.upload_id)
            raise ResumableError(423, "another request is appending to this upload; it has been asked to "
                                      "stop: retry in a moment", headers=[("Retry-After", "1")]) from None
        if upload is None:
            record = self.store.read(request.upload_id)
            if record is not None and record.complete:  # its data went to the app; its record stays
                check_append(request, record.state, self.limits)  # raises: already completed
            raise ResumableError(404, "no such upload (it may have expired or been cancelled)")
        try:
            budget = self.settings.max_partial_bytes
            if budget is not None and self.store.usage("")[1] + (request.content_length or 0) > budget:
                raise ResumableError(507, "the partial-upload store is full")
            length = check_append(request, upload.record.state, self.limits)
            if request.dialect.value != upload.record.dialect and request.dialect is Dialect.TUS:
                raise ResumableError(400, "this upload was created with the resumable-upload draft, not tus")
        except ResumableError:
            upload.close()
            raise
        exchange.location = self.location(upload.id)
        exchange.length = length
        exchange.completes = self._completes(request, upload.record.offset, length)
        try:
            exchange.sink = self._sink(upload, length)
        except BaseException:
            upload.close()
            raise

    @staticmethod
    def _completes(request: ResumableRequest, offset: int, length: int | None) -> bool:
        """Whether the request's content, once all in, completes the upload."""
        if request.dialect is Dialect.DRAFT:
            return bool(request.complete)
        return length is not None and request.content_length is not None and offset + request.content_length == length

    def _sink(self, upload: PartialUpload, length: int | None) -> PartialUploadSink:
        limits = self.limits
        max_size = limits.max_size

        def too_long(reach: int) -> Exception:
            if length is not None and reach > length:
                return ResumableError(400, f"the content goes past the upload length {length}",
                                      problem="inconsistent-upload-length")
            return BodyTooLarge(f"the upload would reach {reach} bytes, over the limit of {max_size}")

        limit = length if length is not None else max_size
        return PartialUploadSink(upload, limit=limit, too_long=too_long, write_behind=self._write_behind,
                                 checkpoint=self.settings.checkpoint, min_free_disk=self._min_free_disk,
                                 checkpoint_interval=self.settings.checkpoint_interval,
                                 commits=self._commits, checksum=self._checksum)

    def flush(self, timeout: float) -> bool:
        """Wait (at most ``timeout`` s) until the writes and commits queued so far are done: a
        worker that exits must not take its uploads' last commits with it. False on timeout."""
        deadline = time.monotonic() + timeout
        if self._write_behind is not None and not self._write_behind.wait_idle(timeout):
            return False
        if self._commits is None:
            return True
        return self._commits.submit(lambda: None).wait(max(0.0, deadline - time.monotonic()))

    def sweep(self) -> int:
        """Remove expired partial uploads (the worker's periodic sweep); the number removed.

        Raises:
            OSError: the store's directory failed.
        """
        return self.store.sweep()
