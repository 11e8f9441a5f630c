"""A minimal Django project served with and without prefork's one line (its ``wsgi.py``).

``app`` is what the project's ``wsgi.py`` gives after importing ``get_wsgi_application``
from ``prefork.apps.adapters.django``; ``plain`` is Django's own. ``POST /upload`` saves
every uploaded file through ``FileSystemStorage`` (one per field via a model
``FileField``'s ``save``, the rest with ``storage.save``) under
``$PREFORK_TEST_UPLOADS`` and reports, per file, its class, size, the saved file's
hash, and whether the saved file is the inode of the file's ``temporary_file_path()``
(a rename, not a copy); plus the text fields. ``POST /raw`` hashes ``request.body``.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import django
from django.conf import settings

UPLOAD_DIR = os.environ.get("PREFORK_TEST_UPLOADS", "uploads")

settings.configure(
    DEBUG=False,
    SECRET_KEY="prefork-tests",
    ALLOWED_HOSTS=["*"],
    ROOT_URLCONF=__name__,
    MIDDLEWARE=[],
    INSTALLED_APPS=[],
    DATABASES={},
    MEDIA_ROOT=UPLOAD_DIR,
    DATA_UPLOAD_MAX_NUMBER_FIELDS=int(os.environ.get("PREFORK_TEST_MAX_FIELDS", "1000")),
)
django.setup()

from django.core.files.storage import FileSystemStorage  # noqa: E402  (after settings)
from django.core.wsgi import get_wsgi_application as django_wsgi_application  # noqa: E402
from django.db import models  # noqa: E402
from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.urls import path  # noqa: E402

from prefork.apps.adapters.django import get_wsgi_application  # noqa: E402

storage = FileSystemStorage(location=UPLOAD_DIR)


class Document(models.Model):
    """Only its FileField is used: ``save=False`` never touches a database."""

    upload = models.FileField(storage=storage, upload_to="docs")

    class Meta:
        app_label = "prefork_tests"


def _file_report(field: str, upload: Any, first: bool) -> dict[str, Any]:
    temporary = upload.temporary_file_path() if hasattr(upload, "temporary_file_path") else None
    inode = os.stat(temporary).st_ino if temporary else None
    head = upload.read(16)  # the file reads before it is saved, and the save still takes all of it
    upload.seek(0)
    if first:
        document = Document()
        document.upload.save(upload.name, upload, save=False)
        name = document.upload.name
    else:
        name = storage.save(upload.name, upload)
    dest = storage.path(name)
    with open(dest, "rb") as handle:
        digest = hashlib.sha256(handle.read()).hexdigest()
    return {"field": field, "name": upload.name, "class": type(upload).__name__,
            "content_type": upload.content_type, "charset": upload.charset.decode() if upload.charset else None,
            "extra": {k: v.decode() for k, v in upload.content_type_extra.items()}, "size": upload.size,
            "saved_size": os.path.getsize(dest), "sha256": digest, "head": head.hex(),
            "same_inode": inode is not None and os.stat(dest).st_ino == inode,
            "temporary_in_staging": bool(temporary) and "staging" in temporary, "path": dest}


def upload(request: HttpRequest) -> JsonResponse:
    files = []
    for field in request.FILES:
        for index, item in enumerate(request.FILES.getlist(field)):
            files.append(_file_report(field, item, first=index == 0))
    return JsonResponse({"files": files, "form": {k: request.POST.getlist(k) for k in request.POST},
                         "staged": "prefork.form" in request.META})


def raw(request: HttpRequest) -> JsonResponse:
    body = request.body
    return JsonResponse({"sha256": hashlib.sha256(body).hexdigest(), "size": len(body),
                         "form": {k: request.POST.getlist(k) for k in request.POST},
                         "staged": "prefork.form" in request.META})


def index(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"hello": "django"})


urlpatterns = [path("upload", upload), path("raw", raw), path("", index), path("__ready", index)]

app = get_wsgi_application()  # the one line: prefork's get_wsgi_application instead of Django's
plain = django_wsgi_application()
