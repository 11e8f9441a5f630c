"""Issue 13 §6: the app side's modules are in no import cycle (``app`` ↔ ``static`` was one)."""

from __future__ import annotations

import ast
import io
from pathlib import Path

import pytest

from prefork.app import Request
from prefork.handlers import CompleteRequest
from prefork.http.events import Request as RequestHead
from prefork.http.headers import Headers

PACKAGE = Path(__file__).resolve().parents[1] / "prefork"


def complete(method: str, target: str) -> CompleteRequest:
    head = RequestHead(method.encode(), target.encode(), b"1.1", Headers([]), keep_alive=True,
                       expects_continue=False, upgrade=None, content_length=0, chunked=False)
    return CompleteRequest(head, io.BytesIO(b""), 0, Headers([]), ("127.0.0.1", 5000), ("127.0.0.1", 8000))


# --- the app side has no import cycle ---------------------------------------------------------
APP_SIDE = {"prefork.app", "prefork.messages", "prefork.static", "prefork.handlers", "prefork.loader",
            "prefork.runtime", "prefork.broadcast", "prefork.demo", "prefork.status", "prefork.wsgi",
            "prefork.uploads", "prefork.checks"}


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
    assert "prefork.app" not in _import_graph()["prefork.static"]
    from prefork import messages, static

    request = Request(complete("GET", "/x"), {})
    with pytest.raises(messages.HTTPError):
        static.serve_file(request, "/nonexistent/file")
