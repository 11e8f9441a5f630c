"""The demo chat in headless Chromium across servers that share a real redis-server.

Two pages on two prefork servers (``[websocket] broadcast = redis``) chat with each
other; a third server started after the messages were sent shows them in its history.
Needs chromium, chromium-driver and redis-server (installed by .ci/run).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.redis_helpers import RedisServer
from tests.server import Server, status, wait_for
from tests.test_broadcast_instances import redis_config
from tests.test_demo_browser import (chat_texts, chromium_drivers, console_errors, open_page, pytestmark,
                                     send_chat, wait)

__all__ = ["pytestmark"]  # the chromium skip rule of tests/test_demo_browser.py applies here too
Start = Callable[..., Server]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Any]]:
    yield from chromium_drivers(tmp_path_factory)


def test_pages_on_two_servers_chat_and_a_late_server_shows_the_history(
        start_server: Start, redis_server: RedisServer, browser: Callable[..., Any]) -> None:
    config = redis_config(redis_server.url, prefix="browser")

    def server() -> Server:
        started = start_server(app="", workers=2, config=config)
        wait_for(lambda: status(started)["redis_connected"] == 2, 30)
        return started

    one, two = server(), server()
    first, second = browser(), browser()
    open_page(first, one)
    open_page(second, two)
    hello = f"from server one {time.monotonic_ns()}"
    reply = f"from server two {time.monotonic_ns()}"
    send_chat(first, hello)
    wait(second, lambda d: hello in chat_texts(d), "server one's message on server two's page")
    send_chat(second, reply)
    wait(first, lambda d: reply in chat_texts(d), "server two's reply on server one's page")
    for driver in (first, second):
        texts = chat_texts(driver)
        assert texts.count(hello) == 1 and texts.count(reply) == 1
        assert texts.index(hello) < texts.index(reply)

    late = server()  # its workers saw none of it: the history comes from Redis
    third = browser()
    open_page(third, late)
    wait(third, lambda d: reply in chat_texts(d), "the history on a server started later")
    texts = chat_texts(third)
    assert texts.count(hello) == 1 and texts.index(hello) < texts.index(reply)
    for driver in (first, second, third):
        assert console_errors(driver) == []
