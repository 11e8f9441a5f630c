"""Test app: a page running tus-js-client, and the route its completed uploads reach.

``/tus.html`` is the page in ``TUS_PAGE_HTML``, ``/tus.min.js`` the browser bundle at
``TUS_PAGE_BUNDLE``. A completed resumable upload (``POST /resumable/``) is saved into
the uploads directory as ``payload`` and described in ``tus_page.json`` (size, SHA-256
and filename as the app sees them).
"""

from __future__ import annotations

import json
import os

from prefork.apps.app import App, HTTPError, Request, Response
from prefork.apps.static import serve_file

app = App()


@app.route("/tus.html")
def page(request: Request) -> Response:
    return Response(os.environ["TUS_PAGE_HTML"], headers={"Content-Type": "text/html; charset=utf-8"})


@app.route("/tus.min.js")
def bundle(request: Request) -> Response:
    return serve_file(request, os.environ["TUS_PAGE_BUNDLE"], content_type="text/javascript")


@app.route("/resumable/", methods=["POST"])
def completed(request: Request) -> Response:
    upload = request.upload
    if upload is None:
        raise HTTPError(400, "not a completed resumable upload")
    directory = app.runtime.uploads_dir
    upload.save(os.path.join(directory, "payload"))
    summary = {"size": upload.size, "sha256": upload.sha256, "filename": upload.filename}
    with open(os.path.join(directory, "tus_page.json"), "w") as out:
        json.dump(summary, out)
    return Response.json(summary, 201)
