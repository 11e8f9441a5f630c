"""Form handling: multipart events -> text fields in RAM + uploads in spools.

Strategy: ``FormParser`` feeds body bytes to a ``MultipartParser`` and acts on
each event as it comes. A part with a ``filename`` parameter (even an empty
one, RFC 7578 §4.2) is a file: its bytes stream straight into their own
``BodySpool`` (RAM up to the threshold, then a staging file, written and
hashed behind the event loop), so a multi-gigabyte upload is written once and
``save()`` is a link, not a copy. The parser hands out views of its buffer,
not copies: each is written out before the next chunk is fed. SHA-256 is
computed on the way in unless ``checksum`` is off; then ``sha256`` reads the
file back on first use. Other parts are text fields held in RAM up
to ``FormLimits.max_field_size`` (413 beyond) and decoded at the end, once the
``_charset_`` field (RFC 7578 §4.6) may have told us their charset.

Any error aborts: every spool is closed, so nothing is left on disk. After
``finish()`` the spools belong to the returned ``FormData``; its ``close()``
removes every upload that was not saved.
"""

from __future__ import annotations

import codecs
import os
from collections.abc import Callable, Iterator
from typing import BinaryIO, Generic, TypeVar, cast

from prefork.protocol.errors import BodyTooLarge, MultipartError, ServiceUnavailable
from prefork.protocol.limits import FormLimits
from prefork.protocol.multipart import MultipartParser, PartData, PartEnd, PartStart, parse_boundary, parse_options_header
from prefork.staging.budget import MemoryBudget
from prefork.staging.spool import BodySpool
from prefork.staging.writebehind import WriteBehindHelper

__all__ = ["FormData", "FormParser", "FormSink", "MultiDict", "UploadedFile"]

T = TypeVar("T")


class MultiDict(Generic[T]):
    """A read-mostly mapping of names to one or more values, in arrival order.

    ``d[name]`` and ``d.get(name)`` give the first value; ``getlist`` gives all.
    """

    def __init__(self) -> None:
        self._data: dict[str, list[T]] = {}

    def add(self, name: str, value: T) -> None:
        """Append ``value`` under ``name``."""
        self._data.setdefault(name, []).append(value)

    def get(self, name: str, default: T | None = None) -> T | None:
        """Return the first value for ``name``, or ``default``."""
        values = self._data.get(name)
        return values[0] if values else default

    def getlist(self, name: str) -> list[T]:
        """Return every value for ``name`` (a new list; empty if none)."""
        return list(self._data.get(name, ()))

    def __getitem__(self, name: str) -> T:
        return self._data[name][0]

    def __contains__(self, name: object) -> bool:
        return name in self._data

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def items(self) -> Iterator[tuple[str, T]]:
        """Yield every (name, value) pair, repeated names included."""
        for name, values in self._data.items():
            for value in values:
                yield name, value

    def to_dict(self) -> dict[str, list[T]]:
        """Return a plain ``{name: [values]}`` copy."""
        return {name: list(values) for name, values in self._data.items()}


class UploadedFile:
    """A file part, staged in its own sealed ``BodySpool``.

    Attributes:
        name: the form field name.
        filename: the filename as the client sent it; never use it as a path.
        content_type: the part's Content-Type, or None.
        headers: the part headers as (lower-cased name, value) pairs.
        size: body size in bytes.
    """

    def __init__(self, start: PartStart, spool: BodySpool) -> None:
        self.name = start.name
        self.filename = start.filename
        self.content_type = start.content_type
        self.headers = start.headers
        self.size = spool.size
        self._spool = spool

    @property
    def sha256(self) -> str:
        """Hex SHA-256 of the body: computed while it arrived, unless checksums
        are off (``[uploads] checksum = none``); then read back on first use,
        which needs the upload still open."""
        return self._spool.sha256

    def open(self) -> BinaryIO:
        """Return the staged body, rewound to the start (read-only, seekable)."""
        self._spool.seek(0)
        return cast(BinaryIO, self._spool)

    def save(self, dest: str | os.PathLike[str]) -> None:
        """Move the upload to ``dest``: a link on the same filesystem, else a copy.

        Args:
            dest: destination path; an application-chosen name, not ``filename``.

        Raises:
            FileExistsError: ``dest`` exists; it is never overwritten.
            InsufficientStorage: the destination filesystem is full.
        """
        self._spool.move_to(dest)

    @property
    def in_memory(self) -> bool:
        """True when the body is held in RAM (under the staging threshold), not in a file."""
        return self._spool.in_memory

    def staged_path(self) -> str | None:
        """A path naming the staged file, for code that moves uploads by name (see
        ``BodySpool.staged_path``); None when the body is in RAM or cannot be named."""
        return self._spool.staged_path()

    def close(self) -> None:
        """Release the staged body (a saved file at its destination stays)."""
        self._spool.close()

    def __repr__(self) -> str:
        return f"<UploadedFile {self.name!r} filename={self.filename!r} size={self.size}>"


class FormData:
    """The parsed form: text fields and uploaded files, both multi-valued."""

    def __init__(self, fields: MultiDict[str], files: MultiDict[UploadedFile]) -> None:
        self.fields = fields
        self.files = files

    def close(self) -> None:
        """Close every upload; unsaved staging files disappear."""
        for _, upload in self.files.items():
            upload.close()

    def __enter__(self) -> FormData:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class FormParser:
    """Bridges body bytes -> ``MultipartParser`` -> ``FormData``.

    Args:
        boundary: the multipart boundary (``parse_boundary``).
        limits: part, header and field limits.
        spool_threshold: bytes of one file kept in RAM before it goes to disk.
        spool_dir: directory for staging files (None: the system temp dir).
        max_file_size: largest accepted file part; None means unlimited (413).
        charset: default charset of text fields (RFC 7578 §5.1.2: UTF-8).
        budget: the worker's global RAM budget, handed to each spool.
        on_disk_bytes: staging-bytes accounting callback, handed to each spool.
        checksum: compute each file's SHA-256 while it arrives.
        min_free_disk: bytes that must stay free in ``spool_dir`` while files grow there (507).
        write_behind: the worker's write-behind helper, handed to each file's spool
            (its disk writes and hashing then run on the helper's thread); None: inline.
    """

    def __init__(
        self,
        boundary: bytes,
        *,
        limits: FormLimits,
        spool_threshold: int,
        spool_dir: str | None,
        max_file_size: int | None = None,
        charset: str = "utf-8",
        budget: MemoryBudget | None = None,
        on_disk_bytes: Callable[[int], None] | None = None,
        checksum: bool = True,
        min_free_disk: int = 0,
        write_behind: WriteBehindHelper | None = None,
    ) -> None:
        self._parser = MultipartParser(boundary, limits, zero_copy=True)
        self._write_behind = write_behind
        self._limits = limits
        self._spool_args = (spool_threshold, max_file_size, spool_dir, budget, on_disk_bytes, min_free_disk)
        self._checksum = checksum
        self._charset = charset
        self._raw_fields: list[tuple[str, bytearray, str | None]] = []
        self._files: MultiDict[UploadedFile] = MultiDict()
        self._start: PartStart | None = None
        self._field: bytearray | None = None
        self._spool: BodySpool | None = None
        self._done = False
        self._fields_size = 0  # bytes of every text field so far, reserved from the RAM budget

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Feed body bytes; ``b""`` marks the end of the body.

        Raises:
            MultipartError, BodyTooLarge, HeadersTooLarge, InsufficientStorage:
                after ``abort()`` has removed every spool.
        """
        try:
            for event in self._parser.feed(data):
                self._handle(event)
        except BaseException:
            self.abort()
            raise

    def finish(self) -> FormData:
        """Return the form once the whole body was fed.

        Raises:
            MultipartError: the body was incomplete (every spool is removed).
        """
        if not self._parser.complete:
            self.abort()
            raise MultipartError("multipart body ended before the closing delimiter")
        self._parser.close()
        fields = self._decode_fields()
        self._done = True
        return FormData(fields, self._files)

    def abort(self) -> None:
        """Remove every spool (client gone, 413, 507, malformed body); idempotent."""
        if self._spool is not None:
            self._spool.close()
            self._spool = None
        if not self._done:
            for _, upload in self._files.items():
                upload.close()
            self._files = MultiDict()
        self._raw_fields.clear()
        self._field = None
        self.release()

    def release(self) -> None:
        """Give the text fields' share of the RAM budget back (the request is over); idempotent."""
        budget = self._spool_args[3]
        if self._fields_size and budget is not None:
            budget.release(self._fields_size)
        self._fields_size = 0

    def _handle(self, event: PartStart | PartData | PartEnd) -> None:
        if type(event) is PartData:
            self._on_data(event.data)  # a view: used up here, before the next feed
        elif type(event) is PartStart:
            self._on_start(event)
        else:
            self._on_end()

    def _on_start(self, start: PartStart) -> None:
        self._start = start
        if start.filename is None:
            self._field = bytearray()
            return
        threshold, max_size, spool_dir, budget, on_disk, min_free_disk = self._spool_args
        self._spool = BodySpool(threshold, max_size=max_size, dir=spool_dir, budget=budget,
                                on_disk_bytes=on_disk, checksum=self._checksum, min_free_disk=min_free_disk,
                                write_behind=self._write_behind)

    def _on_data(self, data: bytes | memoryview) -> None:
        if self._spool is not None:
            self._spool.write(data)
            return
        assert self._field is not None and self._start is not None
        limits = self._limits
        if len(self._field) + len(data) > limits.max_field_size:
            raise BodyTooLarge(f"form field {self._start.name!r} exceeds limit of {limits.max_field_size} bytes")
        if self._fields_size + len(data) > limits.max_fields_total:
            raise BodyTooLarge(f"form text fields exceed the limit of {limits.max_fields_total} bytes in total")
        # Text fields stay in RAM until the request ends, so they count in the shared budget.
        budget = self._spool_args[3]
        if budget is not None and not budget.try_reserve(len(data)):
            raise ServiceUnavailable("the staging memory budget is taken: form text fields cannot be held")
        self._fields_size += len(data)
        self._field += data

    def _on_end(self) -> None:
        assert self._start is not None
        if self._spool is not None:
            self._spool.seal()
            self._files.add(self._start.name, UploadedFile(self._start, self._spool))
            self._spool = None
        else:
            assert self._field is not None
            self._raw_fields.append((self._start.name, self._field, self._start.content_type))
            self._field = None
        self._start = None

    def _decode_fields(self) -> MultiDict[str]:
        """Decode text fields: part charset, else ``_charset_`` (RFC 7578 §4.6), else default."""
        default = self._charset
        for name, raw, _ in self._raw_fields:
            if name == "_charset_":
                default = _known_charset(raw.decode("ascii", "replace").strip(), default)
        fields: MultiDict[str] = MultiDict()
        for name, raw, content_type in self._raw_fields:
            charset = default
            if content_type is not None:
                charset = _known_charset(parse_options_header(content_type)[1].get("charset", ""), default)
            try:
                text = raw.decode(charset, "replace")
            except (ValueError, LookupError):  # codecs such as idna do not support "replace"
                text = raw.decode(self._charset, "replace")
            fields.add(name, text)
        return fields


#: Longest charset name looked up: IANA registers names of at most 40 characters (RFC 2978 §2.3).
MAX_CHARSET_NAME = 40


def _known_charset(name: str, default: str) -> str:
    """Return ``name`` if it is a text encoding Python knows, else ``default``.

    An unknown or malformed name (too long, a NUL that ``codecs.lookup`` refuses
    with ValueError) is ignored, not an error: RFC 7578 §4.6 makes ``_charset_``
    and a part's ``charset`` hints, and §5.1.2 gives UTF-8 as the default.
    """
    if not name or len(name) > MAX_CHARSET_NAME:
        return default
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError):
        return default
    # Bytes-to-bytes codecs ("hex", "zlib") are not text encodings.
    return info.name if getattr(info, "_is_text_encoding", True) else default


class FormSink:
    """A request-body sink that parses ``multipart/form-data`` while it arrives.

    The connection writes body bytes into it exactly as into a ``BodySpool``;
    ``seal()`` returns the finished ``FormData``. Used for native routes, so that
    each file part is written to disk once, as it streams in.

    Args:
        content_type: the request's Content-Type (carries the boundary).
        limits: part, header and field limits.
        spool_threshold: bytes of one file kept in RAM before it goes to disk.
        spool_dir: directory for staging files.
        max_size: the largest accepted body; None means unlimited (413).
        max_file_size: the largest accepted file part; None means unlimited (413).
        budget: the worker's global RAM budget.
        on_disk_bytes: staging-bytes accounting callback.
        checksum: compute each file's SHA-256 while it arrives.
        min_free_disk: bytes that must stay free in ``spool_dir`` while files grow there (507).
        write_behind: the worker's write-behind helper for the files' spools; None: inline.
    """

    def __init__(self, content_type: bytes, *, limits: FormLimits, spool_threshold: int,
                 spool_dir: str | None, max_size: int | None = None, max_file_size: int | None = None,
                 budget: MemoryBudget | None = None, on_disk_bytes: Callable[[int], None] | None = None,
                 checksum: bool = True, min_free_disk: int = 0,
                 write_behind: WriteBehindHelper | None = None) -> None:
        self._parser = FormParser(parse_boundary(content_type), limits=limits,
                                  spool_threshold=spool_threshold, spool_dir=spool_dir,
                                  max_file_size=max_file_size, budget=budget, on_disk_bytes=on_disk_bytes,
                                  checksum=checksum, min_free_disk=min_free_disk, write_behind=write_behind)
        self._max_size = max_size
        self.size = 0
        self.form: FormData | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Parse more body bytes (raises the parser's errors, 413 past ``max_size``)."""
        self.size += len(data)
        if self._max_size is not None and self.size > self._max_size:
            self._parser.abort()
            raise BodyTooLarge(f"request body exceeds the limit of {self._max_size} bytes")
        self._parser.feed(data)
        return len(data)

    def seal(self) -> FormData:
        """End of body: the parsed form (raises MultipartError if it was incomplete)."""
        self.form = self._parser.finish()
        return self.form

    def close(self) -> None:
        """Remove every upload that was not saved."""
        if self.form is not None:
            self.form.close()
            self._parser.release()
        else:
            self._parser.abort()
