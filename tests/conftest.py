"""Shared fixtures: a factory that starts real servers and always stops them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server import Server


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[Callable[..., Server]]:
    """Start ``prefork-serve`` subprocesses; every one is stopped at teardown."""
    started: list[Server] = []

    def start(wait: bool = True, **kwargs: Any) -> Server:
        server = Server(tmp_path, **kwargs)
        started.append(server)
        return server.wait_ready() if wait else server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def start_module_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Server]]:
    """Like ``start_server``, but the servers live for the whole test module (cheaper)."""
    started: list[Server] = []

    def start(wait: bool = True, **kwargs: Any) -> Server:
        server = Server(tmp_path_factory.mktemp("server"), **kwargs)
        started.append(server)
        return server.wait_ready() if wait else server

    yield start
    for server in started:
        server.stop()
