"""Shared fixtures: a factory that starts real servers and always stops them."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import os

import pytest
from hypothesis import settings

from tests.redis_helpers import Node, RedisServer
from tests.server import Server

# Hypothesis: on CI (CI=true) the examples are derived from each test itself, the same on
# every run, with no example database carried between runs; a failure there is a property
# of the code, never of the day's seed. Locally the search stays random (and remembers
# failures in .hypothesis/). Either way a failure prints the @reproduce_failure blob that
# replays it; "--hypothesis-seed=N" fixes a local run's seed. Recent Hypothesis releases
# pick similar settings when they detect a CI service; this says it, and ties it to
# CI=true like the skip rule below. Loaded here, before any test module is imported, so
# each test's @settings(...) builds on it (pytest prints the profile in its header).
settings.register_profile("ci", derandomize=True, database=None, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")


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


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server on a free loopback port, stopped by PID at teardown."""
    server = RedisServer(tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    """Redis transports a test starts (tests.redis_helpers.Node); every one is stopped at teardown."""
    made: list[Node] = []
    yield made
    for node in made:
        node.transport.stop()



def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """On CI every check must run: a test skipped for a missing tool fails the run.

    Locally, a test that needs root, a tmpfs mount, Chromium or systemd's tools
    skips with its reason; CI (.ci/run, CI=true) installs all of them.
    """
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = len(reporter.stats.get("skipped", [])) if reporter is not None else 0
    if os.environ.get("CI") == "true" and skipped and exitstatus == 0:
        if reporter is not None:
            reporter.write_line(f"CI: {skipped} test(s) skipped; every check must run on CI", red=True)
        session.exitstatus = 1
