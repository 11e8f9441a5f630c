"""Flask uploads staged by prefork: ``request.files[...].save(path)`` is a rename.

Strategy: one line, ``staged_uploads(app)``, makes the app's request class
take forms from ``environ["prefork.form"]`` (the parts prefork staged while
they arrived) instead of parsing ``wsgi.input`` again, and declares
``prefork_staged_forms`` so that prefork's loader (``TakesStagedForms``)
parses this app's ``multipart/form-data`` bodies as they arrive. Outside
prefork, or for any other request, Werkzeug's own parser runs as before.

Werkzeug's hook is the request's ``make_form_data_parser``: the parser it
returns here builds ``request.form`` from the text fields and
``request.files`` from ``StagedFileStorage`` objects over the staged parts
(seekable streams, the part's own headers, ``content_length`` its true
size), and enforces Flask's ``MAX_FORM_PARTS`` and ``MAX_FORM_MEMORY_SIZE``
as Werkzeug's parser would (``MAX_CONTENT_LENGTH`` is checked by Werkzeug
itself, before the parser runs). As after Werkzeug's own parse,
``request.stream`` is used up afterwards (``get_data()`` is empty).

``StagedFileStorage.save(path)`` links the staged file into place (a copy
only across filesystems) and keeps Werkzeug's semantics: an existing file is
replaced (atomically: linked next to it, then ``os.replace``), and the file
gets the mode a newly created file would (``0o666`` less the umask), not the
staging file's ``0o600``. ``save`` to a file object, or a second ``save``,
copies from the stream, as Werkzeug does.
"""

from __future__ import annotations

import contextlib
import io
import os
import secrets
from typing import IO, Any, cast

from flask import Flask
from werkzeug.datastructures import FileStorage, Headers, MultiDict
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser
from werkzeug.wrappers.request import Request

from prefork.apps.wsgi import FORM_ENVIRON_KEY
from prefork.staging.forms import FormData, UploadedFile

__all__ = ["StagedFileStorage", "StagedFormDataParser", "StagedFormsRequest", "staged_uploads"]

#: What ``FormDataParser.parse`` returns: the rest of the stream, the fields, the files.
ParseResult = tuple[IO[bytes], MultiDict[str, str], MultiDict[str, FileStorage]]

#: The mode ``open(path, "w")`` creates a file with, before the umask.
_NEW_FILE_MODE = 0o666


def staged_uploads(app: Flask) -> Flask:
    """Serve ``app``'s uploads from prefork's staged parts: ``save()`` becomes a rename.

    Call it once, after creating the app; it changes ``app.request_class`` to a
    subclass of the current one and declares ``TakesStagedForms`` on ``app``.

    Args:
        app: the Flask application.

    Returns:
        ``app`` itself, so ``app = staged_uploads(Flask(__name__))`` works too.
    """
    if not issubclass(app.request_class, StagedFormsRequest):
        base = app.request_class
        app.request_class = cast(type[Any], type(f"Staged{base.__name__}", (StagedFormsRequest, base), {}))
    app.prefork_staged_forms = True  # type: ignore[attr-defined]  # declares TakesStagedForms to prefork
    return app


class StagedFormsRequest(Request):
    """A request whose staged form, when prefork parsed one, is ``form`` and ``files``.

    ``staged_uploads`` puts it in front of the app's own request class, so its
    other overrides stay in force.
    """

    def make_form_data_parser(self) -> FormDataParser:
        """Werkzeug's parser, or one over ``environ["prefork.form"]`` when prefork staged it."""
        staged = self.environ.get(FORM_ENVIRON_KEY)
        if not isinstance(staged, FormData):
            return super().make_form_data_parser()
        return StagedFormDataParser(staged, stream_factory=self._get_file_stream,
                                    max_form_memory_size=self.max_form_memory_size,
                                    max_content_length=self.max_content_length,
                                    max_form_parts=self.max_form_parts, cls=self.parameter_storage_class)


class StagedFormDataParser(FormDataParser):
    """A ``FormDataParser`` whose multipart result is a form prefork already parsed.

    Args:
        staged: the parsed form (its uploads stay the worker's: it closes them).
        **kwargs: ``FormDataParser``'s arguments (limits, the MultiDict class).
    """

    def __init__(self, staged: FormData, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.staged = staged

    def parse(self, stream: IO[bytes], mimetype: str, content_length: int | None,
              options: dict[str, str] | None = None) -> ParseResult:
        """``(stream, form, files)`` from the staged form; other media types as Werkzeug does.

        Raises:
            RequestEntityTooLarge: more parts than ``max_form_parts``, or a text field
                larger than ``max_form_memory_size`` (Werkzeug's own limits).
        """
        if mimetype != "multipart/form-data":
            return super().parse(stream, mimetype, content_length, options)
        fields = list(self.staged.fields.items())
        uploads = list(self.staged.files.items())
        if self.max_form_parts is not None and len(fields) + len(uploads) > self.max_form_parts:
            raise RequestEntityTooLarge()
        if self.max_form_memory_size is not None and any(
                len(value.encode()) > self.max_form_memory_size for _, value in fields):
            raise RequestEntityTooLarge()
        files: MultiDict[str, FileStorage] = MultiDict(
            [(name, StagedFileStorage(upload)) for name, upload in uploads])
        # The body is in the parts, as after Werkzeug's own parse: nothing is left to read.
        return io.BytesIO(), self.cls(fields), files


class StagedFileStorage(FileStorage):
    """A ``FileStorage`` over a part prefork staged; ``save(path)`` links it into place.

    Args:
        upload: the staged part.
    """

    def __init__(self, upload: UploadedFile) -> None:
        # content_type None: like Werkzeug's, it comes from the part's own headers.
        super().__init__(upload.open(), upload.filename, upload.name, None, upload.size,
                         Headers(upload.headers))
        self.upload = upload
        self._linked = False

    def save(self, dst: str | os.PathLike[str] | IO[bytes], buffer_size: int = 16384) -> None:
        """Save to a path (a rename of the staged file, replacing ``dst``) or a file object (a copy).

        Args:
            dst: a path, or an open file object (copied into from the stream's position).
            buffer_size: the copy's block size, for a file object.

        Raises:
            OSError: ``dst`` cannot be written (a directory, a missing parent, ...).
            prefork.protocol.errors.InsufficientStorage: the destination filesystem is full.
        """
        if isinstance(dst, os.PathLike):
            dst = os.fspath(dst)
        if not isinstance(dst, str) or self._linked:
            super().save(dst, buffer_size)  # a file object, or the staged file is taken: copy
            return
        self._linked = True
        save_replacing(self.upload, dst)
        os.chmod(dst, _NEW_FILE_MODE & ~_umask())


def save_replacing(upload: UploadedFile, dest: str) -> None:
    """``upload.save(dest)``, but replacing an existing ``dest`` as ``open(dest, "wb")`` would.

    The staged file is linked under a fresh name next to ``dest`` and renamed over
    it, so ``dest`` is never partial and never missing.
    """
    try:
        upload.save(dest)
        return
    except FileExistsError:
        pass
    head, tail = os.path.split(dest)
    temporary = os.path.join(head, f".{tail}.{secrets.token_hex(6)}.part")
    upload.save(temporary)
    try:
        os.replace(temporary, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def _umask() -> int:
    """The process umask, read without changing it (``os.umask`` sets it, racing other threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022
