"""The layering rule of DESIGN §2: lower layers never import higher ones.

Imports are read from the AST of every module under prefork/, so the test
fails the moment an upward edge appears, wherever it is written.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "prefork"

# Layer of each module (lower number = lower layer). A module may import only
# modules of its own layer or below.
LAYERS: dict[str, int] = {
    "prefork": 0, "prefork.errors": 0, "prefork.exit_codes": 0, "prefork.limits": 0, "prefork.buffer": 0,
    "prefork.http": 1, "prefork.websocket": 1, "prefork.multipart": 1, "prefork.mediatype": 1,
    "prefork.spool": 2, "prefork.writebehind": 2, "prefork.diskspace": 2, "prefork.forms": 2, "prefork.uploads": 2,
    "prefork.rambuffer": 2, "prefork.memory": 2,
    "prefork.handlers": 3, "prefork.wsgi": 3, "prefork.app": 3, "prefork.messages": 3, "prefork.static": 3,
    "prefork.runtime": 3, "prefork.broadcast": 3, "prefork.loader": 3, "prefork.demo": 3,
    "prefork.logs": 3, "prefork.config": 3, "prefork.config_values": 3, "prefork.scoreboard": 3,
    "prefork.status": 3, "prefork.reloader": 3,
    "prefork.channel": 4, "prefork.settings": 4, "prefork.connection": 4, "prefork.wsconn": 4, "prefork.worker": 4,
    "prefork.pool": 4, "prefork.loop_services": 4, "prefork.shedding": 4, "prefork.body_sinks": 4,
    "prefork.app_runner": 4, "prefork.worker_settings": 4, "prefork.ws_upgrade": 4, "prefork.sender": 4,
    "prefork.boot_backoff": 5,
    "prefork.sockets": 5, "prefork.systemd": 5, "prefork.privileges": 5, "prefork.master": 5,
    "prefork.cli": 6, "prefork.cli_flags": 6, "prefork.checks": 6,
}
# Pure protocol code never touches I/O, threads, processes, logging or the config.
FORBIDDEN_IN_PROTOCOL = {"socket", "selectors", "threading", "signal", "logging", "subprocess",
                         "multiprocessing", "os", "prefork.config"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _layer(name: str) -> int | None:
    while name:
        if name in LAYERS:
            return LAYERS[name]
        name = name.rpartition(".")[0]
    return None


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text("utf-8"), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names
                      if node.module == "prefork"]
    return found


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_no_upward_imports(path: Path) -> None:
    name = _module_name(path)
    own = _layer(name)
    assert own is not None, f"{name} has no layer in tests/test_layering.py: give it one"
    upward = []
    for line, imported in _imports(path):
        layer = _layer(imported) if imported.startswith("prefork") else None
        if layer is not None and layer > own and not imported.startswith(name):
            upward.append(f"{path.name}:{line} imports {imported} (layer {layer} > {own})")
    assert not upward, "\n".join(upward)


@pytest.mark.parametrize("path", [p for p in MODULES if _layer(_module_name(p)) == 1],
                         ids=lambda p: _module_name(p))
def test_protocol_modules_are_sans_io(path: Path) -> None:
    bad = [f"{path.name}:{line} imports {name}" for line, name in _imports(path)
           if name.split(".")[0] in FORBIDDEN_IN_PROTOCOL or name in FORBIDDEN_IN_PROTOCOL]
    assert not bad, "\n".join(bad)
