"""Flask: ``request.files[name].save(path)`` becomes a rename of the part prefork staged.

Usage, one line after the app is made::

    from prefork.apps.adapters.flask import staged_uploads
    app = staged_uploads(Flask(__name__))

Strategy: Werkzeug's documented hook for form parsing is the request's
``make_form_data_parser``. ``staged_uploads`` gives the app a ``Request``
subclass whose parser, when prefork parsed the form while it arrived
(``environ["prefork.form"]``), returns that form's fields and files instead of
reading ``wsgi.input``; otherwise (another server, a test client) Werkzeug
parses as always. Each file is a ``StagedFileStorage``: a ``FileStorage`` over
the part's staged file whose ``save(path)`` links it into place. As with
Werkzeug, a path that exists is replaced (a link under a temporary name, then
``os.replace``, so readers see the old or the new file, never a partial one);
saving to a file object copies, and a part on another filesystem is copied.
It also marks the app ``prefork_staged_forms`` (``TakesStagedForms``), which is
what makes the server parse its forms.
"""

from __future__ import annotations

import os
import uuid
from typing import IO, Any, TypeVar

from flask import Flask
from flask import Request
from werkzeug.datastructures import FileStorage, Headers, MultiDict
from werkzeug.formparser import FormDataParser

from prefork.apps.wsgi import FORM_ENVIRON_KEY
from prefork.staging.forms import FormData, UploadedFile

__all__ = ["StagedFileStorage", "staged_uploads"]

AppT = TypeVar("AppT", bound=Flask)


class StagedFileStorage(FileStorage):
    """A Werkzeug ``FileStorage`` over a part prefork staged in its own file."""

    def __init__(self, part: UploadedFile) -> None:
        super().__init__(stream=part.open(), filename=part.filename, name=part.name,
                         content_type=part.content_type, content_length=part.size,
                         headers=Headers([(name, value) for name, value in part.headers]))
        self.part = part

    def save(self, dst: str | os.PathLike[str] | IO[bytes], buffer_size: int = 16384) -> None:
        """Put the upload at ``dst``: a link when ``dst`` is a path, else a copy into it.

        Args:
            dst: a path (replaced if it exists, as Werkzeug does) or a writable file.
            buffer_size: for the copy into a file object, as in Werkzeug.
        """
        if not isinstance(dst, (str, os.PathLike)):
            super().save(dst, buffer_size)
            return
        path = os.fspath(dst)
        temporary = os.path.join(os.path.dirname(path) or ".", f".{os.path.basename(path)}.{uuid.uuid4().hex}.part")
        self.part.save(temporary)
        try:
            os.replace(temporary, path)
        except BaseException:
            os.unlink(temporary)
            raise


class _StagedFormParser:
    """What Werkzeug's form parsing returns, taken from prefork's parsed form."""

    def __init__(self, form: FormData, storage: type[MultiDict[str, Any]]) -> None:
        self._form = form
        self._storage = storage

    def parse(self, stream: IO[bytes], mimetype: str, content_length: int | None,
              options: dict[str, str] | None = None) -> tuple[IO[bytes], MultiDict[str, str],
                                                              MultiDict[str, FileStorage]]:
        fields = self._storage(list(self._form.fields.items()))
        files: MultiDict[str, FileStorage] = self._storage(
            [(name, StagedFileStorage(part)) for name, part in self._form.files.items()])
        return stream, fields, files


def _staged_request_class(base: type[Request]) -> type[Request]:
    class StagedRequest(base):  # type: ignore[valid-type,misc]  # a subclass of the app's own class
        """The app's request class, taking prefork's staged parts when there are some."""

        def make_form_data_parser(self) -> FormDataParser:
            form = self.environ.get(FORM_ENVIRON_KEY)
            if form is None:
                return super().make_form_data_parser()  # type: ignore[no-any-return]
            return _StagedFormParser(form, self.parameter_storage_class)  # type: ignore[return-value]

    StagedRequest.__qualname__ = StagedRequest.__name__ = f"Staged{base.__name__}"
    return StagedRequest


def staged_uploads(app: AppT) -> AppT:
    """Have ``app`` take prefork's staged form parts as ``request.files``; returns ``app``."""
    app.request_class = _staged_request_class(app.request_class)
    app.prefork_staged_forms = True  # type: ignore[attr-defined]  # TakesStagedForms
    return app
