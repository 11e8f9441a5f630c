"""The native App: routing, params, 404/405, bodies, cookies, redirects, error handlers."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
import requests

from prefork.apps.app import MAX_MEMORY_BODY, App, HTTPError, Request, Response
from prefork.apps.handlers import CompleteRequest, ResponseStream
from prefork.protocol.http.events import Request as RequestHead
from prefork.protocol.http.headers import Headers

APP = "tests.apps.native:app"


def call(app: App, method: str, target: str, headers: list[tuple[str, str]] | None = None,
         body: bytes = b"") -> ResponseStream:
    """Run one request through the native adapter, as the worker would."""
    head = RequestHead(method.encode(), target.encode(), b"1.1",
                       Headers([(k.encode(), v.encode()) for k, v in headers or []]),
                       keep_alive=True, expects_continue=False, upgrade=None,
                       content_length=len(body), chunked=False)
    complete = CompleteRequest(head, io.BytesIO(body), len(body), Headers([]), ("127.0.0.1", 5000),
                               ("127.0.0.1", 8000))
    return app.prefork_application()(complete)


def body_of(stream: ResponseStream) -> bytes:
    data = b"".join(stream.chunks)
    if stream.rest is not None:
        data += b"".join(stream.rest)
    return data


def header(stream: ResponseStream, name: str) -> str | None:
    return next((v for k, v in stream.headers if k.lower() == name.lower()), None)


@pytest.fixture
def app() -> App:
    app = App()

    @app.route("/")
    def index(request: Request) -> str:
        return "home"

    @app.route("/users/<name>")
    def user(request: Request) -> dict[str, Any]:
        return {"name": request.path_params["name"]}

    @app.route("/items/<int:n>", methods=["GET", "DELETE"])
    def item(request: Request) -> dict[str, Any]:
        return {"n": request.path_params["n"], "method": request.method}

    @app.route("/files/<path:rest>")
    def files(request: Request) -> str:
        return request.path_params["rest"]

    @app.route("/items", methods=["POST"])
    def create(request: Request) -> tuple[Response, int]:
        return Response.json(request.json()), 201

    @app.route("/form", methods=["POST"])
    def form(request: Request) -> dict[str, Any]:
        return request.form.to_dict()

    @app.route("/query")
    def query(request: Request) -> dict[str, Any]:
        return request.args.to_dict()

    @app.route("/cookies")
    def cookies(request: Request) -> Response:
        response = Response.json(request.cookies)
        response.set_cookie("seen", "yes", max_age=60)
        return response

    @app.route("/go")
    def go(request: Request) -> Response:
        return Response.redirect("/users/a b")

    @app.route("/teapot")
    def teapot(request: Request) -> str:
        raise HTTPError(418, "short and stout")

    @app.route("/boom")
    def boom(request: Request) -> str:
        raise RuntimeError("secret detail")

    @app.route("/none")
    def nothing(request: Request) -> None:
        return None

    @app.route("/stream")
    def stream(request: Request) -> Any:
        return iter([b"a", b"b"])

    @app.route("/split")
    def split(request: Request) -> Response:
        return Response("x", headers=[("X-Evil", request.args.get("v") or "")])

    return app


def test_route_and_str_body(app: App) -> None:
    resp = call(app, "GET", "/")
    assert (resp.status, body_of(resp)) == (200, b"home")
    assert header(resp, "content-type") == "text/html; charset=utf-8"


def test_path_params_str_int_path(app: App) -> None:
    assert json.loads(body_of(call(app, "GET", "/users/ada"))) == {"name": "ada"}
    assert json.loads(body_of(call(app, "GET", "/items/42"))) == {"n": 42, "method": "GET"}
    assert json.loads(body_of(call(app, "DELETE", "/items/7"))) == {"n": 7, "method": "DELETE"}
    assert body_of(call(app, "GET", "/files/a/b/c.txt")) == b"a/b/c.txt"


def test_path_is_decoded_exactly_once(app: App) -> None:
    assert json.loads(body_of(call(app, "GET", "/users/a%20b"))) == {"name": "a b"}
    # %2541 is "%41" after one decoding; a second decoding would give "A".
    assert json.loads(body_of(call(app, "GET", "/users/x%2541"))) == {"name": "x%41"}
    assert body_of(call(app, "GET", "/files/%252e%252e/x")) == b"%2e%2e/x"


def test_not_found_and_int_converter_rejects_text(app: App) -> None:
    assert call(app, "GET", "/nope").status == 404
    assert call(app, "GET", "/items/abc").status == 404
    assert body_of(call(app, "GET", "/nope")) == b"404 Not Found\n"


def test_int_converter_with_more_digits_than_int_accepts_is_404(app: App) -> None:
    """Python's int() refuses over 4,300 digits: such a path matches no int route (404, not 500)."""
    huge = "9" * 5000
    assert call(app, "GET", f"/items/{huge}").status == 404
    assert call(app, "DELETE", f"/items/{huge}").status == 404
    assert call(app, "PUT", f"/items/{huge}").status == 404  # not 405: the route does not match
    assert call(app, "GET", "/items/" + "0" * 4999 + "7").status == 404  # the limit counts digits
    assert json.loads(body_of(call(app, "GET", "/items/" + "0" * 99 + "7"))) == {"n": 7, "method": "GET"}
    ws = App()
    ws.websocket("/ws/<int:room>")(type("Room", (), {}))
    assert ws.match_websocket("/ws/" + huge) == (None, {})
    assert ws.match_websocket("/ws/12")[1] == {"room": 12}


def test_method_not_allowed_lists_allow(app: App) -> None:
    resp = call(app, "PUT", "/items/1")
    assert resp.status == 405
    assert header(resp, "allow") == "DELETE, GET, HEAD"
    resp = call(app, "DELETE", "/items")
    assert resp.status == 405
    assert header(resp, "allow") == "POST"


def test_head_answers_like_get(app: App) -> None:
    resp = call(app, "HEAD", "/")
    assert resp.status == 200
    # The chunks stay: the connection sends the head only, with the GET's Content-Length.
    assert body_of(resp) == b"home"


def test_json_body_and_tuple_status(app: App) -> None:
    resp = call(app, "POST", "/items", [("Content-Type", "application/json")], b'{"a": [1, 2]}')
    assert resp.status == 201
    assert header(resp, "content-type") == "application/json"
    assert json.loads(body_of(resp)) == {"a": [1, 2]}


def test_bad_json_is_400(app: App) -> None:
    resp = call(app, "POST", "/items", [("Content-Type", "application/json")], b"{nope")
    assert resp.status == 400
    assert body_of(resp).startswith(b"400 Bad Request: request body is not valid JSON")


def test_json_over_memory_limit_is_413(app: App) -> None:
    head = RequestHead(b"POST", b"/items", b"1.1", Headers([]), True, False, None, 0, False)
    complete = CompleteRequest(head, io.BytesIO(b"{}"), MAX_MEMORY_BODY + 1, Headers([]),
                               ("127.0.0.1", 1), ("127.0.0.1", 2))
    assert app.prefork_application()(complete).status == 413


def test_urlencoded_form(app: App) -> None:
    resp = call(app, "POST", "/form", [("Content-Type", "application/x-www-form-urlencoded; charset=utf-8")],
                b"a=1&b=x+y&a=2&c=%C3%A9&empty=")
    assert json.loads(body_of(resp)) == {"a": ["1", "2"], "b": ["x y"], "c": ["é"], "empty": [""]}


def test_form_ignores_other_content_types(app: App) -> None:
    resp = call(app, "POST", "/form", [("Content-Type", "text/plain")], b"a=1")
    assert json.loads(body_of(resp)) == {}


@pytest.mark.parametrize(("content_type", "form"), [
    ("multipart/form-data; boundary=x", True),
    ("Multipart/Form-Data ; boundary=x", True),
    ("MULTIPART/FORM-DATA\t;boundary=x", True),
    ("multipart/form-data", True),
    ("multipart/form-datax; boundary=x", False),
    ("multipart/form-data-x; boundary=x", False),
    ("multipart/form-data\xa0; boundary=x", False),
    ("multipart/mixed; boundary=x", False),
    ("text/plain; x=multipart/form-data", False),
    ("", False),
])
def test_one_decision_on_what_is_a_form(app: App, content_type: str, form: bool) -> None:
    """The sink choice (wants_form) and the handler's view (Request.is_form) agree: a
    ``multipart/form-datax`` body is a raw body for both (RFC 9110 §8.3.1 media type)."""
    native = app.prefork_application()
    head = RequestHead(b"POST", b"/form", b"1.1", Headers([(b"content-type", content_type.encode("latin-1"))]),
                       keep_alive=True, expects_continue=False, upgrade=None, content_length=1, chunked=False)
    assert native.wants_form(head) is form
    complete = CompleteRequest(head, io.BytesIO(b"x"), 1, Headers([]), ("127.0.0.1", 5000), ("127.0.0.1", 8000))
    request = Request(complete, {})
    assert request.is_form is form
    assert (request.content_type == "multipart/form-data") is form


def test_query_args(app: App) -> None:
    resp = call(app, "GET", "/query?x=1&x=2&y=%20z&flag")
    assert json.loads(body_of(resp)) == {"x": ["1", "2"], "y": [" z"], "flag": [""]}


def test_cookies_in_and_out(app: App) -> None:
    resp = call(app, "GET", "/cookies", [("Cookie", "a=1; b=two"), ("Cookie", 'c="q r"')])
    assert json.loads(body_of(resp)) == {"a": "1", "b": "two", "c": "q r"}
    assert header(resp, "set-cookie") == "seen=yes; HttpOnly; Max-Age=60; Path=/; SameSite=Lax"


def test_malformed_cookie_header_gives_no_cookies(app: App) -> None:
    resp = call(app, "GET", "/cookies", [("Cookie", "a=1; \x7f=\\")])
    assert resp.status == 200


def test_redirect_is_303_with_quoted_location(app: App) -> None:
    resp = call(app, "GET", "/go")
    assert resp.status == 303
    assert header(resp, "location") == "/users/a%20b"
    assert body_of(resp) == b""


def test_http_error_default_page(app: App) -> None:
    resp = call(app, "GET", "/teapot")
    assert resp.status == 418
    assert body_of(resp) == b"418 I'm a Teapot: short and stout\n"


def test_unexpected_exception_propagates_without_500_handler(app: App) -> None:
    with pytest.raises(RuntimeError, match="secret detail"):
        call(app, "GET", "/boom")


def test_error_handlers(app: App) -> None:
    seen: list[BaseException] = []

    @app.errorhandler(404)
    def not_found(request: Request) -> Response:
        return Response.json({"missing": request.path}, status=200)  # status is forced to 404

    @app.errorhandler(405)
    def not_allowed(request: Request) -> str:
        return "nope"

    @app.errorhandler(500)
    def failed(request: Request) -> str:
        assert request.error is not None
        seen.append(request.error)
        return "sorry"

    resp = call(app, "GET", "/missing")
    assert (resp.status, json.loads(body_of(resp))) == (404, {"missing": "/missing"})
    resp = call(app, "PATCH", "/")
    assert (resp.status, body_of(resp), header(resp, "allow")) == (405, b"nope", "GET, HEAD")
    resp = call(app, "GET", "/boom")
    assert (resp.status, body_of(resp)) == (500, b"sorry")
    assert isinstance(seen[0], RuntimeError)


def test_none_is_204_and_iterators_stream(app: App) -> None:
    assert call(app, "GET", "/none").status == 204
    resp = call(app, "GET", "/stream")
    assert resp.rest is not None and body_of(resp) == b"ab"


def test_header_injection_is_refused(app: App) -> None:
    assert call(app, "GET", "/split?v=ok").status == 200
    with pytest.raises(ValueError, match="invalid response header 'X-Evil'"):
        call(app, "GET", "/split?v=a%0D%0ASet-Cookie:%20x=1")


def test_file_body_uses_offset_and_count(tmp_path: Any) -> None:
    path = tmp_path / "f.bin"
    path.write_bytes(bytes(range(100)))
    handle = open(path, "rb")
    handle.seek(10)
    stream = Response(handle, count=5).to_stream()
    assert stream.file is not None
    assert (stream.file.offset, stream.file.count) == (10, 5)
    stream.close()
    assert handle.closed
    handle = open(path, "rb")
    handle.seek(95)
    stream = Response(handle, count=50).to_stream()  # capped at the end of the file
    assert stream.file is not None and stream.file.count == 5
    stream.close()


# --- through the real server ---------------------------------------------------------------
@pytest.fixture(scope="module")
def server(start_module_server: Any) -> Any:
    return start_module_server(app=APP, workers=1)


def test_server_routes_404_405(server: Any) -> None:
    assert requests.get(f"{server.url}/hello/ada", timeout=10).text == "hello ada"
    resp = requests.post(f"{server.url}/hello/ada", timeout=10)
    assert resp.status_code == 405 and resp.headers["Allow"] == "GET, HEAD"
    assert requests.get(f"{server.url}/nothing-here", timeout=10).status_code == 404


def test_server_head_has_get_length_and_no_body(server: Any) -> None:
    from tests.server import request

    resp = request(server, b"HEAD /hello/ada HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                   head_request=True)
    assert resp.status == 200
    assert resp.header("content-length") == str(len("hello ada"))


def test_server_json_form_cookies_redirect(server: Any) -> None:
    resp = requests.post(f"{server.url}/echo-json", json={"k": [1, "é"]}, timeout=10)
    assert resp.json() == {"k": [1, "é"]}
    resp = requests.post(f"{server.url}/form", data={"a": "1", "b": "x y"}, timeout=10)
    assert resp.json() == {"a": ["1"], "b": ["x y"]}
    session = requests.Session()
    resp = session.get(f"{server.url}/login", allow_redirects=False, timeout=10)
    assert resp.status_code == 303 and resp.headers["Location"] == "/whoami"
    assert session.get(f"{server.url}/login", timeout=10).text == "user=ada"


def test_server_multipart_form_on_native_route(server: Any) -> None:
    resp = requests.post(f"{server.url}/form", data={"t": "v"}, files={"f": ("a.txt", b"abc")}, timeout=10)
    assert resp.json() == {"t": ["v"], "files": ["a.txt:3"]}


def test_server_error_handler_and_500(server: Any) -> None:
    resp = requests.get(f"{server.url}/teapot", timeout=10)
    assert resp.status_code == 418 and resp.json() == {"error": 418}
    resp = requests.get(f"{server.url}/boom", timeout=10)
    assert resp.status_code == 500
    assert "secret" not in resp.text
