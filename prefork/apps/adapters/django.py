"""Django uploads staged by prefork: saving an uploaded file is a rename.

Strategy: one line in the project's ``wsgi.py``, importing
``get_wsgi_application`` from here instead of from ``django.core.wsgi``,
serves the project with a ``WSGIHandler`` that declares
``prefork_staged_forms`` (prefork's ``TakesStagedForms``), so prefork parses
its ``multipart/form-data`` bodies while they arrive, each file part into
its own staging file. Its request class puts ``StagedFormHandler`` first in
``request.upload_handlers`` when ``environ["prefork.form"]`` is there; the
handler's ``handle_raw_input`` (Django's documented way for an upload handler
to take over the whole body) returns ``request.POST`` and ``request.FILES``
built from the staged form, so Django's ``MultiPartParser`` never reads the
body. Code that parses through ``request.upload_handlers`` itself (Django
REST framework's ``MultiPartParser``) goes the same way.

A file part staged on disk becomes a ``StagedTemporaryFile`` whose
``temporary_file_path()`` names the staged file, so ``FileSystemStorage``
(and with it a model ``FileField``) moves it into place with
``file_move_safe``, an ``os.rename``. A part small enough to have stayed in
RAM (prefork's ``[staging] memory_threshold``, in the role of Django's
``FILE_UPLOAD_MAX_MEMORY_SIZE``) is an ``InMemoryUploadedFile``, as Django
makes for small files. What Django's parser checks is checked here too:
``DATA_UPLOAD_MAX_NUMBER_FIELDS``, ``DATA_UPLOAD_MAX_MEMORY_SIZE`` (text
fields) and ``DATA_UPLOAD_MAX_NUMBER_FILES``; file names are sanitized, a
part whose ``filename`` is empty (an empty file input) is a text field and
one whose name sanitizes to nothing is skipped, as in Django's parser. The worker removes every
staged file that was not moved when the request ends.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from typing import Any

import django  # type: ignore[import-untyped]
from django.conf import settings  # type: ignore[import-untyped]
from django.core.exceptions import (  # type: ignore[import-untyped]
    RequestDataTooBig, TooManyFieldsSent, TooManyFilesSent)
from django.core.files.uploadedfile import InMemoryUploadedFile  # type: ignore[import-untyped]
from django.core.files.uploadedfile import UploadedFile as DjangoUploadedFile
from django.core.files.uploadhandler import FileUploadHandler  # type: ignore[import-untyped]
from django.core.handlers.wsgi import WSGIHandler, WSGIRequest  # type: ignore[import-untyped]
from django.http import QueryDict  # type: ignore[import-untyped]
from django.utils.datastructures import MultiValueDict  # type: ignore[import-untyped]

from prefork.apps.wsgi import FORM_ENVIRON_KEY
from prefork.protocol.mediatype import parse_options_header
from prefork.staging.forms import FormData, UploadedFile

__all__ = ["StagedFormHandler", "StagedFormsRequest", "StagedFormsWSGIHandler", "StagedTemporaryFile",
           "get_wsgi_application"]


def get_wsgi_application() -> StagedFormsWSGIHandler:
    """``django.core.wsgi.get_wsgi_application``, with uploads taken from prefork's staged parts.

    Returns:
        The project's WSGI callable (Django set up, as Django's own function does).
    """
    django.setup(set_prefix=False)
    return StagedFormsWSGIHandler()


class StagedFormHandler(FileUploadHandler):  # type: ignore[misc]  # Django is untyped
    """An upload handler that answers with the form prefork staged, if there is one.

    Returns None from ``handle_raw_input`` otherwise, and the next handlers (Django's
    own) parse the body as usual.
    """

    def handle_raw_input(self, input_data: Any, META: dict[str, Any], content_length: int,
                         boundary: bytes, encoding: str | None = None) -> tuple[Any, Any] | None:
        """``(POST, FILES)`` from ``META["prefork.form"]``, or None to let Django parse.

        Raises:
            TooManyFieldsSent, RequestDataTooBig, TooManyFilesSent: over Django's
                ``DATA_UPLOAD_*`` settings (400 from Django).
        """
        staged = META.get(FORM_ENVIRON_KEY)
        if not isinstance(staged, FormData):
            return None
        return post_from(staged, encoding or settings.DEFAULT_CHARSET), files_from(staged)

    def receive_data_chunk(self, raw_data: bytes, start: int) -> bytes:
        """Not reached for a staged form; otherwise pass the data on to the next handler."""
        return raw_data

    def file_complete(self, file_size: int) -> None:
        """Not reached for a staged form; otherwise leave the file to the next handler."""
        return None


class StagedFormsRequest(WSGIRequest):  # type: ignore[misc]  # Django is untyped
    """A ``WSGIRequest`` that reads a staged form through ``StagedFormHandler``."""

    def __init__(self, environ: dict[str, Any]) -> None:
        super().__init__(environ)
        if FORM_ENVIRON_KEY in environ:
            # Django documents inserting into request.upload_handlers before POST is read.
            self.upload_handlers.insert(0, StagedFormHandler(self))


class StagedFormsWSGIHandler(WSGIHandler):  # type: ignore[misc]  # Django is untyped
    """Django's WSGI handler, declaring ``TakesStagedForms`` to prefork."""

    request_class = StagedFormsRequest
    prefork_staged_forms = True


class StagedTemporaryFile(DjangoUploadedFile):  # type: ignore[misc]  # Django is untyped
    """A ``TemporaryUploadedFile``-like file whose temporary file is prefork's staged one.

    Args:
        upload: the staged part, on disk.
        path: the name it was given (``UploadedFile.staged_path``).
        name: the sanitized file name.
        content_type: the part's media type.
        charset: the part's charset parameter, or None (bytes, as from Django's parser).
        extra: the part's Content-Type parameters (``content_type_extra``, values as bytes).
    """

    def __init__(self, upload: UploadedFile, path: str, name: str, content_type: str,
                 charset: bytes | None, extra: dict[str, bytes]) -> None:
        super().__init__(upload.open(), name, content_type, upload.size, charset, extra)
        self.field_name = upload.name
        self._path = path

    def temporary_file_path(self) -> str:
        """The staged file's path: ``file_move_safe`` renames it into place."""
        return self._path


def post_from(staged: FormData, encoding: str) -> Any:
    """``request.POST`` (an immutable ``QueryDict``) from the staged text fields."""
    post = QueryDict(mutable=True, encoding=encoding)
    count = size = 0
    for name, value in _text_parts(staged, encoding):
        count += 1
        size += len(value.encode(encoding, "replace")) + len(name) + 2  # Django counts "&=" too
        if settings.DATA_UPLOAD_MAX_NUMBER_FIELDS is not None and count > settings.DATA_UPLOAD_MAX_NUMBER_FIELDS:
            raise TooManyFieldsSent("The number of GET/POST parameters exceeded "
                                    "settings.DATA_UPLOAD_MAX_NUMBER_FIELDS.")
        if settings.DATA_UPLOAD_MAX_MEMORY_SIZE is not None and size > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
            raise RequestDataTooBig("Request body exceeded settings.DATA_UPLOAD_MAX_MEMORY_SIZE.")
        post.appendlist(name, value)
    post._mutable = False  # as Django's MultiPartParser leaves it
    return post


def _text_parts(staged: FormData, encoding: str) -> Iterator[tuple[str, str]]:
    """The text fields, then the file parts with an empty ``filename``: Django's parser
    takes those (an empty file input, as browsers send it) for text fields."""
    yield from staged.fields.items()
    for name, upload in staged.files.items():
        if not upload.filename:
            yield name, upload.open().read().decode(encoding, "replace")


def files_from(staged: FormData) -> Any:
    """``request.FILES`` (a ``MultiValueDict``) from the staged file parts."""
    files = MultiValueDict()
    count = 0
    for field, upload in staged.files.items():
        if not upload.filename:
            continue  # a text field to Django (``_text_parts``)
        count += 1
        if settings.DATA_UPLOAD_MAX_NUMBER_FILES is not None and count > settings.DATA_UPLOAD_MAX_NUMBER_FILES:
            raise TooManyFilesSent("The number of files exceeded settings.DATA_UPLOAD_MAX_NUMBER_FILES.")
        name = sanitize_file_name(upload.filename or "")
        if name is not None:
            files.appendlist(field, django_file(upload, name))
    return files


def django_file(upload: UploadedFile, name: str) -> Any:
    """The Django file for a staged part: movable by path when it is in a file."""
    content_type, params = parse_options_header(upload.content_type or "")
    # Django's parser hands the parameters over as bytes, the charset among them.
    extra = {key: value.encode() for key, value in params.items()}
    charset = extra.get("charset")
    if upload.in_memory:  # small: Django would have kept it in RAM too
        return InMemoryUploadedFile(upload.open(), upload.name, name, content_type, upload.size, charset, extra)
    path = upload.staged_path()
    if path is None:  # a staged file that cannot be named here: Django reads it to save it
        return DjangoUploadedFile(upload.open(), name, content_type, upload.size, charset, extra)
    return StagedTemporaryFile(upload, path, name, content_type, charset, extra)


def sanitize_file_name(name: str) -> str | None:
    """Django's ``MultiPartParser.sanitize_file_name``: the last path component, printable
    characters only; None for a name that leaves nothing (the part is then skipped)."""
    name = html.unescape(name).rsplit("/")[-1].rsplit("\\")[-1]
    name = "".join(char for char in name if char.isprintable())
    return None if name in {"", ".", ".."} else name
