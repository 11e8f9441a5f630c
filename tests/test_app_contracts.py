"""Issue 13 §6: what the worker may ask of an app is declared, and nothing is a hidden global.

The loader returns a ``LoadedApp`` whose capabilities are always present (a WSGI app
parses no forms and has no WebSocket routes); the app gets its ``Runtime`` passed in
(``App.bind``, ``environ["prefork.apps.runtime"]``) instead of reading ``runtime.current``;
broadcast goes through the bound runtime's transport and observers live in a
``Subscribers`` registry; the status page is a wrapper around the loaded app; and
the app side's modules are in no import cycle (``app`` ↔ ``static`` was one).
"""

from __future__ import annotations

import ast
import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest

from prefork.apps import demo
from prefork.apps.app import App, Request
from prefork.apps.broadcast import LocalTransport, Subscribers
from prefork.apps.handlers import CompleteRequest, LoadedApp, ResponseStream
from prefork.protocol.http.events import Request as RequestHead
from prefork.protocol.http.headers import Headers
from prefork.apps.loader import load_application
from prefork.apps.runtime import Runtime
from prefork.process.scoreboard import Scoreboard
from prefork.process.status import StatusPage
from prefork.apps.wsgi import WsgiApplication

PACKAGE = Path(__file__).resolve().parents[1] / "prefork"
FORM_TYPE = "multipart/form-data; boundary=x"


def head(method: str, target: str, headers: list[tuple[str, str]] | None = None, length: int = 0) -> RequestHead:
    return RequestHead(method.encode(), target.encode(), b"1.1",
                       Headers([(k.encode(), v.encode()) for k, v in headers or []]),
                       keep_alive=True, expects_continue=False, upgrade=None, content_length=length, chunked=False)


def complete(method: str, target: str, body: bytes = b"", headers: list[tuple[str, str]] | None = None,
             peer: str = "127.0.0.1") -> CompleteRequest:
    return CompleteRequest(head(method, target, headers, len(body)), io.BytesIO(body), len(body), Headers([]),
                           (peer, 5000), ("127.0.0.1", 8000))


def body_of(stream: ResponseStream) -> bytes:
    return b"".join(stream.chunks) + (b"".join(stream.rest) if stream.rest is not None else b"")


# --- the loaded app states every capability ---------------------------------------------
def test_a_wsgi_app_states_no_forms_no_websocket_routes_and_no_loop_answers() -> None:
    loaded = load_application("tests.apps.upload:app", threads=2, runtime=Runtime())
    assert isinstance(loaded, LoadedApp)
    assert loaded.wants_form(head("POST", "/save", [("content-type", FORM_TYPE)], 10)) is False
    assert loaded.websocket_handler(b"/chat") == (None, {})
    assert loaded.serves_websockets is False
    request = complete("GET", "/environ")
    assert loaded.answer_on_loop(request) is None
    assert json.loads(body_of(loaded(request)))["PATH_INFO"] == "/environ"


def test_a_native_app_states_its_forms_and_its_websocket_routes() -> None:
    loaded = load_application("tests.apps.ws_echo:app", threads=2, runtime=Runtime())
    assert loaded.serves_websockets is True
    handler, params = loaded.websocket_handler(b"/chat")
    assert handler is not None and handler.__name__ == "Chat" and params == {}
    forms = load_application("tests.apps.native:app", threads=2, runtime=Runtime())
    assert forms.wants_form(head("POST", "/form", [("content-type", FORM_TYPE)], 10)) is True
    assert forms.wants_form(head("POST", "/nowhere", [("content-type", FORM_TYPE)], 10)) is False
    assert forms.wants_form(head("POST", "/form", [("content-type", "text/plain")], 10)) is False


# --- the runtime is passed in -------------------------------------------------------------
def test_each_app_reads_the_runtime_it_was_bound_to() -> None:
    first, second = App(), App()
    for app in (first, second):
        app.route("/where")(lambda request, app=app: app.runtime.uploads_dir)
    one = load_application_of(first, Runtime(uploads_dir="/srv/one"))
    two = load_application_of(second, Runtime(uploads_dir="/srv/two"))
    assert body_of(one(complete("GET", "/where"))) == b"/srv/one"
    assert body_of(two(complete("GET", "/where"))) == b"/srv/two"


def load_application_of(app: App, runtime: Runtime) -> LoadedApp:
    native = app.prefork_application(runtime)
    return LoadedApp(native, forms=native, websockets=native)


def test_the_loader_binds_a_native_app_to_the_runtime_it_is_given(tmp_path: Path) -> None:
    loaded = load_application("tests.apps.native:app", threads=2, runtime=Runtime(uploads_dir=str(tmp_path)))
    from tests.apps.native import app

    assert app.runtime.uploads_dir == str(tmp_path)
    assert loaded.serves_websockets  # a native app may have WebSocket routes


def test_a_wsgi_app_finds_the_runtime_in_its_environ() -> None:
    seen: list[Any] = []
    facts = Runtime(uploads_dir="/srv/up", workers=3)

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append(environ["prefork.apps.runtime"])
        start_response("200 OK", [])
        return []

    WsgiApplication(app, runtime=facts)(complete("GET", "/"))
    assert seen == [facts]


def test_the_demo_reads_the_uploads_dir_when_a_request_needs_it(tmp_path: Path) -> None:
    """Importing the demo fixed its store to ``runtime.current`` at import time; now the
    directory comes from the runtime it is bound to when a request arrives."""
    demo.app.bind(Runtime(uploads_dir=str(tmp_path)))
    try:
        response = demo.app.prefork_application()(
            complete("PUT", "/upload?filename=note.txt", b"hello", [("content-type", "text/plain")]))
        assert response.status == 201, body_of(response)
        (saved,) = json.loads(body_of(response))["files"]
        assert (tmp_path / saved["name"]).read_bytes() == b"hello"
    finally:
        demo.app.bind(Runtime())


# --- broadcast: the bound transport, and the worker's Subscribers -----------------------------
def test_broadcast_goes_through_the_transport_of_the_bound_runtime() -> None:
    first, second = App(), App()
    sent: dict[str, list[tuple[str, str | bytes]]] = {"first": [], "second": []}
    first.bind(Runtime(transport=LocalTransport(lambda c, m: sent["first"].append((c, m)))))
    second.bind(Runtime(transport=LocalTransport(lambda c, m: sent["second"].append((c, m)))))
    first.broadcast("chat", "one")
    second.broadcast("chat", b"two")
    assert sent == {"first": [("chat", "one")], "second": [("chat", b"two")]}
    with pytest.raises(RuntimeError, match="no transport installed"):
        App().broadcast("chat", "nobody")


def test_observers_registered_before_binding_reach_the_runtimes_subscribers() -> None:
    app = App()
    seen: list[tuple[str, str | bytes]] = []
    app.observe("chat", lambda channel, message: seen.append((channel, message)))
    subscribers = Subscribers()
    app.bind(Runtime(subscribers=subscribers))
    app.bind(Runtime(subscribers=subscribers))  # bound again: still one registration
    subscribers.deliver("chat", "hi")
    subscribers.deliver("other", "not for it")
    assert seen == [("chat", "hi")]


class Session:
    def __init__(self, name: str, log: list[str], ended: bool = False) -> None:
        self.name, self.log, self.ended = name, log, ended

    def send_message(self, message: str | bytes) -> None:
        self.log.append(f"{self.name}:{message!s}")


def test_subscribers_deliver_to_observers_first_then_to_each_member_once() -> None:
    log: list[str] = []
    registry = Subscribers()
    a, b, gone = Session("a", log), Session("b", log), Session("gone", log, ended=True)
    registry.subscribe(a, "chat")
    registry.subscribe(a, "chat")
    registry.subscribe(b, "chat")
    registry.subscribe(b, "news")
    registry.subscribe(gone, "chat")  # ended sessions are not added
    registry.observe("chat", lambda channel, message: log.append(f"observer:{message!s}"))
    registry.deliver("chat", "m1")
    assert log[0] == "observer:m1" and sorted(log[1:]) == ["a:m1", "b:m1"]
    assert registry.members("chat") == {a, b}
    registry.unsubscribe(a, "chat")
    registry.unsubscribe(b, None)  # every channel
    assert registry.members("chat") == frozenset() and registry.members("news") == frozenset()
    log.clear()
    registry.deliver("chat", "m2")
    assert log == ["observer:m2"]


def test_a_failing_observer_is_logged_and_the_message_still_reaches_the_others(
        caplog: pytest.LogCaptureFixture) -> None:
    log: list[str] = []
    registry = Subscribers()
    registry.subscribe(Session("a", log), "chat")

    def broken(channel: str, message: str | bytes) -> None:
        raise ValueError("bad observer")

    registry.observe("chat", broken)
    registry.observe("chat", lambda channel, message: log.append("observer"))
    with caplog.at_level(logging.ERROR):
        registry.deliver("chat", "m")
    assert log == ["observer", "a:m"]
    assert [r.getMessage() for r in caplog.records] == ["broadcast observer for 'chat' failed: bad observer"]


# --- the status page wraps the loaded app -----------------------------------------------------
@pytest.fixture
def board() -> Scoreboard:
    return Scoreboard(2, memory_budget=1 << 20)


def test_the_status_page_answers_its_path_on_the_loop_and_leaves_the_rest_to_the_app(board: Scoreboard) -> None:
    app = App()
    app.route("/hello")(lambda request: "hi")
    app.websocket("/ws")(Session)
    native = app.prefork_application(Runtime())
    loaded = StatusPage(board, 1, b"/server-status", ("127.0.0.1",)).wrap(LoadedApp(native, native, native))
    page = loaded.answer_on_loop(complete("GET", "/server-status?format=json"))
    assert page is not None and page.status == 200
    assert json.loads(body_of(page))["master_pid"] == 1
    html = loaded.answer_on_loop(complete("GET", "/server-status"))
    assert html is not None and b"prefork status" in body_of(html)
    denied = loaded.answer_on_loop(complete("GET", "/server-status", peer="10.9.8.7"))
    assert denied is not None and denied.status == 403
    hello = complete("GET", "/hello")
    assert loaded.answer_on_loop(hello) is None  # the application's
    assert body_of(loaded(hello)) == b"hi"
    assert loaded.websocket_handler(b"/ws") == (Session, {})  # the capabilities are kept
    assert loaded.wants_form(head("POST", "/hello", [("content-type", FORM_TYPE)], 1)) is False


def test_the_loader_assembles_the_status_page(board: Scoreboard) -> None:
    page = StatusPage(board, 1, b"/status", ())
    loaded = load_application("tests.apps.upload:app", threads=2, runtime=Runtime(), wrappers=[page])
    denied = loaded.answer_on_loop(complete("GET", "/status", peer="192.0.2.1"))
    assert denied is not None and denied.status == 403
    assert loaded.answer_on_loop(complete("GET", "/environ")) is None


# --- the app side has no import cycle ---------------------------------------------------------
APP_SIDE = {"prefork.apps.app", "prefork.apps.messages", "prefork.apps.static", "prefork.apps.handlers", "prefork.apps.loader",
            "prefork.apps.runtime", "prefork.apps.broadcast", "prefork.apps.demo", "prefork.process.status", "prefork.apps.wsgi",
            "prefork.apps.uploads", "prefork.checks"}


def _import_graph() -> dict[str, set[str]]:
    modules = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name if name and name != "prefork" else None

    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text("utf-8"))):  # function-level imports too
            if isinstance(node, ast.Import):
                edges |= {resolve(alias.name) for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                if node.module == "prefork":
                    edges |= {resolve(f"prefork.{alias.name}") for alias in node.names}
                else:
                    edges.add(resolve(node.module))
        graph[name] = {edge for edge in edges if edge is not None and edge != name}
    return graph


def test_no_module_of_the_app_side_is_in_an_import_cycle() -> None:
    graph = _import_graph()

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    cycles = sorted(f"{a} -> {b} -> ... -> {a}" for a in APP_SIDE & graph.keys() for b in graph[a] if reaches(b, a))
    assert not cycles, "\n".join(cycles)


def test_static_builds_on_the_messages_not_on_the_router() -> None:
    assert "prefork.apps.app" not in _import_graph()["prefork.apps.static"]
    from prefork.apps import messages
    from prefork.apps import static

    request = Request(complete("GET", "/x"), {})
    with pytest.raises(messages.HTTPError):
        static.serve_file(request, "/nonexistent/file")
