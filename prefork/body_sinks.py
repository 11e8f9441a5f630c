"""Where a request body is staged: a spool for raw bodies, a form sink for parsed forms.

Both take their limits from the connection settings; a body whose declared
length would leave less than ``min_free_disk`` is refused before its first
byte is read (bodies of unknown length are checked as they grow, in the spool).
A form's file parts are written through the worker's write-behind helper.
"""

from __future__ import annotations

from prefork.diskspace import check_free_disk
from prefork.forms import FormSink
from prefork.http.events import Request
from prefork.scoreboard import WorkerSlot
from prefork.settings import ConnectionSettings
from prefork.spool import BodySpool
from prefork.writebehind import WriteBehindHelper


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

