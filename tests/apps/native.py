"""Test app: a small native ``prefork.App`` for the app and static-file tests.

Routes: ``/hello/<name>``, ``/echo-json`` (POST), ``/form`` (POST: fields, and
``files`` as ``filename:size``), ``/login`` (sets a cookie, 303 to ``/whoami``),
``/teapot`` (HTTPError 418, rendered by an error handler), ``/boom`` (raises),
``/save`` (POST multipart: saves field ``file`` into the uploads dir through
UploadStore), and ``/static/...`` from the directory in ``PREFORK_TEST_STATIC``.
"""

from __future__ import annotations

import os
from typing import Any

from prefork.apps.app import App, HTTPError, Request, Response
from prefork.apps.uploads import UploadStore

app = App()


@app.route("/hello/<name>")
def hello(request: Request) -> str:
    return f"hello {request.path_params['name']}"


@app.route("/echo-json", methods=["POST"])
def echo_json(request: Request) -> Any:
    return request.json()


@app.route("/form", methods=["POST"])
def form(request: Request) -> dict[str, Any]:
    result: dict[str, Any] = request.form.to_dict()
    if len(request.files):
        result["files"] = [f"{f.filename}:{f.size}" for _, f in request.files.items()]
    return result


@app.route("/login")
def login(request: Request) -> Response:
    response = Response.redirect("/whoami")
    response.set_cookie("user", "ada")
    return response


@app.route("/whoami")
def whoami(request: Request) -> str:
    return f"user={request.cookies.get('user', '')}"


@app.route("/teapot")
def teapot(request: Request) -> str:
    raise HTTPError(418)


@app.errorhandler(418)
def teapot_page(request: Request) -> Response:
    return Response.json({"error": 418})


@app.route("/boom")
def boom(request: Request) -> str:
    raise RuntimeError("secret detail")


@app.route("/save", methods=["POST"])
def save(request: Request) -> dict[str, Any]:
    upload = request.files.get("file")
    if upload is None:
        raise HTTPError(400, "no file")
    return UploadStore(app.runtime.uploads_dir).save(upload).to_dict()


if os.environ.get("PREFORK_TEST_STATIC"):
    app.static("/static", os.environ["PREFORK_TEST_STATIC"])
