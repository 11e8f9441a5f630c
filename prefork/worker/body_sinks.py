"""Where a request body is staged: a spool for raw bodies, a form sink for parsed forms.

Strategy: both sinks take their limits from the connection settings; a body
whose declared length would leave less than ``min_free_disk`` is refused
before its first byte is read (bodies of unknown length are checked as they
grow, in the spool). ``RequestBody`` is one connection's current body on its
way into its sink: the byte count, the rate window ``body_min_rate`` is
checked over, and the upload's progress in the scoreboard for the status
page. One is made per connection and reused for every request. A form's
file parts are written through the worker's write-behind helper.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import IO, Any

from prefork.staging.diskspace import check_free_disk, storage_error
from prefork.protocol.errors import ProtocolError, RequestTimeout
from prefork.staging.forms import FormSink
from prefork.protocol.http.events import Request
from prefork.config.logs import error_log
from prefork.process.scoreboard import WorkerSlot
from prefork.config.settings import ConnectionSettings
from prefork.staging.body_stream import BodyStream
from prefork.staging.partial_sink import PartialUploadSink
from prefork.staging.spool import BodySpool
from prefork.staging.writebehind import WriteBehindHelper


def open_sink(head: Request, settings: ConnectionSettings, slot: WorkerSlot | None,
              parse_form: bool, write_behind: WriteBehindHelper) -> BodySpool | FormSink:
    """A sink for ``head``'s body.

    Args:
        head: the request.
        settings: the connection settings (thresholds, limits, staging directory).
        slot: the worker's scoreboard slot (RAM budget, bytes on disk), or None.
        parse_form: parse ``multipart/form-data`` as it arrives, each file to its own spool.
        write_behind: the worker's write-behind helper, for a form's files.

    Raises:
        ProtocolError: 507 when the declared body would leave too little free disk.
    """
    declared = head.content_length
    if declared is not None and declared > settings.memory_threshold and settings.min_free_disk:
        check_free_disk(settings.staging_dir, declared, settings.min_free_disk)
    on_disk = slot.add_staged_disk if slot is not None else None
    if parse_form:
        return FormSink(head.headers.get(b"content-type") or b"", limits=settings.form_limits,
                        spool_threshold=settings.memory_threshold, spool_dir=settings.staging_dir,
                        max_size=settings.http_limits.max_body_size, max_file_size=settings.max_file_size,
                        budget=slot, on_disk_bytes=on_disk, checksum=settings.checksum,
                        min_free_disk=settings.min_free_disk,
                        write_behind=write_behind)
    return BodySpool(settings.memory_threshold, max_size=settings.http_limits.max_body_size,
                     dir=settings.staging_dir, budget=slot, on_disk_bytes=on_disk,
                     min_free_disk=settings.min_free_disk)


class StreamSink:
    """The sink of a streamed body: its bytes go to the application's ``BodyStream``."""

    def __init__(self, stream: BodyStream) -> None:
        self.stream = stream

    def write(self, data: bytes | memoryview) -> None:
        self.stream.feed(data)

    def seal(self) -> None:
        self.stream.end()

    def close(self) -> None:
        """The request is over: a reader still waiting for more learns that none will come."""
        self.stream.abort(f"the connection closed after {self.stream.received} body bytes")


def staging_failed(exc: OSError) -> ProtocolError:
    """Log a failure to stage a body (missing directory, EMFILE, EIO, ...) and give its answer."""
    error_log.error("staging a request body failed: %s", exc)
    return storage_error(exc)


class RequestBody:
    """The current request's body on one connection, from its head to the handler.

    Args:
        settings: the connection settings.
        slot: the worker's scoreboard slot, or None.
        parse_form: asked, only for a request with a body, whether to parse it as a form.
        write_behind: the worker's write-behind helper, for a form's files.

    Attributes:
        sink: where the body goes; None when the request has none (or it was let go).
        received: body bytes received so far.
    """

    __slots__ = ("_settings", "_slot", "_parse_form", "_write_behind", "sink", "received", "_uploading",
                 "_window_start", "_window_bytes")

    def __init__(self, settings: ConnectionSettings, slot: WorkerSlot | None,
                 parse_form: Callable[[Request], bool], write_behind: WriteBehindHelper) -> None:
        self._settings = settings
        self._slot = slot
        self._parse_form = parse_form
        self._write_behind = write_behind
        self.sink: BodySpool | FormSink | PartialUploadSink | StreamSink | None = None
        self.received = 0
        self._uploading = False
        self._window_start = 0.0
        self._window_bytes = 0

    def start(self, head: Request, now: float, sink: PartialUploadSink | StreamSink | None = None) -> None:
        """A request head arrived: open a sink when it announces a body.

        Args:
            head: the request.
            now: when the head arrived (the first rate window starts then).
            sink: the sink already chosen for it (an append to a resumable upload, a
                streamed body), if any.

        Raises:
            ProtocolError: 507, too little free disk for the declared body.
            OSError: the staging directory failed.
        """
        self.received = 0
        self._window_start, self._window_bytes = now, 0
        declared = head.content_length
        if sink is not None:
            self.sink = sink
        elif head.chunked or declared:
            self.sink = open_sink(head, self._settings, self._slot, self._parse_form(head), self._write_behind)
        if self.sink is not None:
            if (declared is None or declared > self._settings.memory_threshold) and self._slot is not None:
                # Large or unknown: worth a row in the status page's uploads in progress.
                self._uploading = True
                self._slot.upload_started(id(self), head.target.decode("latin-1"), declared)

    def write(self, data: bytes | memoryview) -> None:
        """Stage body bytes.

        Raises:
            ProtocolError: the body is over a limit (413), or staging failed (507, 500).
        """
        assert self.sink is not None
        try:
            self.sink.write(data)
        except OSError as exc:
            raise staging_failed(exc) from exc
        self.received += len(data)
        self._window_bytes += len(data)
        if self._uploading and self._slot is not None:
            self._slot.upload_progress(id(self), self.received)

    def check_rate(self, now: float) -> None:
        """The rate window is over: check ``body_min_rate`` and start the next window.

        Raises:
            RequestTimeout: the body arrived slower than ``body_min_rate`` (408).
        """
        window = now - self._window_start
        rate = self._window_bytes / window if window > 0 else 0.0
        min_rate = self._settings.body_min_rate
        if min_rate and rate < min_rate:
            raise RequestTimeout(f"request body arrived at {rate:.0f} bytes/s over {window:.1f} s, "
                                 f"below the minimum of {min_rate} bytes/s")
        self._window_start, self._window_bytes = now, 0

    def restart_window(self, now: float) -> None:
        """Start the next rate window without checking this one (the server was not reading)."""
        self._window_start, self._window_bytes = now, 0

    def seal(self) -> tuple[IO[bytes], Any]:
        """The body is complete: the seekable body and the parsed form (or None) for the handler."""
        self.end_upload()
        sink = self.sink
        if isinstance(sink, FormSink):
            return io.BytesIO(), sink.seal()
        if sink is None:
            return io.BytesIO(), None
        if isinstance(sink, (PartialUploadSink, StreamSink)):  # the upload's content, or the app has it
            sink.seal()
            return io.BytesIO(), None
        sink.seal()
        return sink, None  # type: ignore[return-value]  # a RawIOBase with IO[bytes]'s file API

    def let_go(self) -> Callable[[], None] | None:
        """Forget the sink without closing it; returns its ``close`` (None: no sink).

        For a handler that timed out while a thread may still read the body: that
        thread's end releases it, not the connection.
        """
        sink, self.sink = self.sink, None
        return sink.close if sink is not None else None

    def preempted(self) -> bool:
        """Whether a newer request asked the resumable upload this body appends to to let go."""
        sink = self.sink
        return isinstance(sink, PartialUploadSink) and sink.preempted()

    def end_upload(self) -> None:
        """The upload is no longer in progress (complete, aborted or refused)."""
        if self._uploading and self._slot is not None:
            self._slot.upload_finished(id(self))
        self._uploading = False

    def discard(self) -> None:
        """The request is over: close the sink (its staging files go with it)."""
        self.end_upload()
        if self.sink is not None:
            self.sink.close()
            self.sink = None
