"""The package's folders are its layers; this test enforces what the README's Architecture says.

Rules, checked on the import graph of every module under ``prefork/``:

- every module lives in a layer folder (or is one of the command-line modules on top);
- a module imports only its own layer or lower ones, by absolute name: no relative
  imports, and nothing inside the package imports ``prefork`` itself (its
  ``__init__`` re-exports the public API for users, and sits above everything);
- within a layer, the groups the design keeps apart do not import each other
  (the HTTP and WebSocket protocol packages);
- the protocol layer is sans-IO: no sockets, selectors, threads, processes,
  signals, logging, files (``os``, ``open()``, ``pathlib``, ``tempfile``, ``mmap``);
- the web frameworks (Flask, Werkzeug, Django) are imported only by the optional
  adapters in ``prefork.apps.adapters``, and no other module imports those, so
  prefork imports and runs without any framework installed;
- the import graph has no cycle (imports made only for type checking, under
  ``if TYPE_CHECKING:``, are not executed and do not count for cycles; they obey
  the layer rules like any other).

``test_each_kind_of_violation_is_caught`` plants one violation of each kind in a
copy of the package and checks that the checker reports it, so a rule that
silently stops working fails here.
"""

from __future__ import annotations

import ast
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "prefork"

# Folder (or module) -> layer, lowest first. A module may import its own layer or below.
LAYERS: dict[str, int] = {
    "prefork.protocol": 0,    # sans-IO: HTTP, WebSocket, multipart, errors, limits, buffer
    "prefork.config": 1,      # the config file, its values, the settings derived from it, logs
    "prefork.staging": 2,     # request bodies on their way: spools, write-behind, forms, RAM
    "prefork.apps": 3,        # the application side: native App, WSGI adapter, static, uploads, demo
    "prefork.process": 4,     # what processes share: scoreboard, status page, sockets, systemd, privileges
    "prefork.worker": 5,      # one worker: event loop, connections, WebSocket sessions, handler pool
    "prefork.supervisor": 6,  # the master: forks and supervises workers
    "prefork.cli": 7, "prefork.cli_flags": 7, "prefork.checks": 7,
    "prefork": 8,             # the public API re-exported for users; nothing inside imports it
}
# Packages of one layer that must not import each other.
APART = [("prefork.protocol.http", "prefork.protocol.websocket")]
FORBIDDEN_IN_PROTOCOL = {"socket", "selectors", "threading", "signal", "logging", "subprocess",
                         "multiprocessing", "os", "pathlib", "tempfile", "mmap", "shutil", "asyncio",
                         "concurrent"}
PROTOCOL_LAYER = LAYERS["prefork.protocol"]
# Optional dependencies, and the one package that may import them (and that nothing else imports).
FRAMEWORKS = {"flask", "werkzeug", "django"}
ADAPTERS = "prefork.apps.adapters"


@dataclass(frozen=True)
class Import:
    line: int
    module: str          # the absolute name imported ("" for a relative import)
    relative: bool = False
    type_only: bool = False  # under ``if TYPE_CHECKING:``


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(name: str) -> int | None:
    if name == "prefork":
        return LAYERS[name]
    while "." in name:  # "prefork" itself is no folder: a module directly in it must be listed
        if name in LAYERS:
            return LAYERS[name]
        name = name.rpartition(".")[0]
    return None


def imports_of(path: Path, modules: set[str]) -> list[Import]:
    """Every import in ``path``; ``from pkg import mod`` counts as importing ``pkg.mod``."""
    tree = ast.parse(path.read_text("utf-8"), str(path))
    type_only = {id(inner) for node in ast.walk(tree)
                 if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
                 for stmt in node.body for inner in ast.walk(stmt)}
    found: list[Import] = []
    for node in ast.walk(tree):
        typing = id(node) in type_only
        if isinstance(node, ast.Import):
            found += [Import(node.lineno, alias.name, type_only=typing) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                found.append(Import(node.lineno, "", relative=True))
                continue
            assert node.module is not None
            subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
            found += ([Import(node.lineno, sub, type_only=typing) for sub in subs]
                      or [Import(node.lineno, node.module, type_only=typing)])
    return found


def calls_open(path: Path) -> list[int]:
    return [node.lineno for node in ast.walk(ast.parse(path.read_text("utf-8")))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "open"]


def violations(root: Path) -> list[str]:
    """Every breach of the rules in the package at ``root``."""
    paths = {module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    modules = set(paths)
    graph: dict[str, set[str]] = {}
    found: list[str] = []
    for name, path in paths.items():
        own = layer_of(name)
        if own is None:
            found.append(f"{name}: not in a layer folder (see LAYERS)")
            continue
        edges = graph.setdefault(name, set())
        for imp in imports_of(path, modules):
            where = f"{path.relative_to(root.parent)}:{imp.line}"
            if imp.relative:
                found.append(f"{where}: relative import")
                continue
            top = imp.module.split(".")[0]
            in_adapters = name == ADAPTERS or name.startswith(ADAPTERS + ".")
            if top in FRAMEWORKS and not in_adapters:
                found.append(f"{where}: imports {imp.module}, an optional framework, outside {ADAPTERS}")
            if imp.module.startswith(ADAPTERS + ".") and not in_adapters:
                found.append(f"{where}: imports {imp.module}; only applications import the adapters")
            if own == PROTOCOL_LAYER and (top in FORBIDDEN_IN_PROTOCOL or imp.module in FORBIDDEN_IN_PROTOCOL):
                found.append(f"{where}: the protocol layer imports {imp.module}")
            if top != "prefork":
                continue
            if imp.module == "prefork" and name != "prefork":
                found.append(f"{where}: imports the package itself (prefork/__init__)")
                continue
            target = imp.module
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]
            if target != name and not name.startswith(target + ".") and not imp.type_only:
                edges.add(target)
            layer = layer_of(imp.module)
            if layer is not None and layer > own:
                found.append(f"{where}: imports {imp.module} (layer {layer} above {own})")
            for a, b in APART:
                for mine, theirs in ((a, b), (b, a)):
                    if (name == mine or name.startswith(mine + ".")) and imp.module.startswith(theirs):
                        found.append(f"{where}: {mine} imports {imp.module}; they are kept apart")
        if own == PROTOCOL_LAYER:
            found += [f"{path.relative_to(root.parent)}:{line}: the protocol layer opens files"
                      for line in calls_open(path)]
    found += [f"import cycle: {' -> '.join(cycle)}" for cycle in _cycles(graph)]
    return found


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_the_package_keeps_its_layers() -> None:
    assert not violations(PACKAGE), "\n".join(violations(PACKAGE))


def _module(root: Path, dotted: str) -> Path:
    path = root.parent / Path(*dotted.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


PLANTS = {
    # kind: (module to edit, line to add, words the report must contain)
    "relative import": ("prefork.protocol.errors", "from . import limits", "relative import"),
    "package itself": ("prefork.staging.spool", "import prefork", "imports the package itself"),
    "upward import": ("prefork.protocol.limits", "import prefork.worker.loop", "above"),
    "kept apart": ("prefork.protocol.http.events", "import prefork.protocol.websocket.frames", "kept apart"),
    "socket in protocol": ("prefork.protocol.buffer", "import socket", "protocol layer imports socket"),
    "logging in protocol": ("prefork.protocol.multipart", "import logging", "protocol layer imports logging"),
    "file in protocol": ("prefork.protocol.mediatype", "_F = open(__file__)", "protocol layer opens files"),
    "framework outside adapters": ("prefork.apps.wsgi", "import flask", "an optional framework"),
    "adapter imported": ("prefork.apps.loader", "import prefork.apps.adapters.flask",
                         "only applications import the adapters"),
    "cycle": ("prefork.staging.diskspace", "import prefork.staging.spool", "import cycle"),
    "type-only upward import": ("prefork.protocol.limits",
                                "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import prefork.apps.app",
                                "above"),
}


@pytest.mark.parametrize("kind", sorted(PLANTS))
def test_each_kind_of_violation_is_caught(kind: str, tmp_path: Path) -> None:
    copy = tmp_path / "prefork"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "static"))
    module, line, words = PLANTS[kind]
    target = _module(copy, module)
    target.write_text(target.read_text("utf-8") + "\n" + line + "\n", "utf-8")
    report = violations(copy)
    assert any(words in v for v in report), f"planted {kind!r} in {module}, not reported: {report}"


def test_a_module_outside_every_layer_is_caught(tmp_path: Path) -> None:
    copy = tmp_path / "prefork"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "static"))
    (copy / "stray.py").write_text('"""A module nobody placed."""\n', "utf-8")
    assert "prefork.stray: not in a layer folder (see LAYERS)" in violations(copy)
