"""Issue 12: the demo chat refuses what it cannot parse safely, with a close code and one
log line, never a RecursionError traceback and 1011 (deeply nested JSON) or a long parse."""

from __future__ import annotations

import json
import struct
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from prefork.apps import broadcast

from prefork.apps import demo
from prefork.apps.runtime import Runtime
from tests.server import Server
from tests.test_demo import FakeWs
from tests.test_server_websocket import CLOSE, TEXT, close_frame, frame, raw_ws


@pytest.fixture
def bus() -> Iterator[list[tuple[str, Any]]]:
    """What the chat broadcasts (a local transport, as in tests/test_demo.py)."""
    published: list[tuple[str, Any]] = []
    transport = broadcast.LocalTransport(lambda channel, message: published.append((channel, message)))
    demo.app.bind(Runtime(transport=transport))
    yield published
    demo.app.bind(Runtime())


class ClosingWs(FakeWs):
    remote_addr = "127.0.0.1"

    def __init__(self) -> None:
        super().__init__()
        self.closed: list[tuple[int, str]] = []

    def close(self, code: int = 1000, reason: str = "") -> None:
        self.closed.append((code, reason))


DEEP = "[" * 5_000 + "]" * 5_000  # json.loads: RecursionError (the limit is 1,000)


@pytest.mark.parametrize(("message", "expected"), [
    (DEEP, (1003, "JSON nested deeper than 32 levels")),
    ('{"text": ' + "[" * 33 + "]" * 33 + "}", (1003, "JSON nested deeper than 32 levels")),
    (DEEP.encode("utf-16-be"), (1003, "JSON nested deeper than 32 levels")),  # json.loads reads UTF-16 too
    ("x" * (64 * 1024 + 1), (1009, "chat message over 65536 characters")),
], ids=["deep-array", "deep-in-object", "deep-utf16", "too-long"])
def test_refused_messages_close_the_connection(bus: list[tuple[str, Any]], message: str | bytes,
                                               expected: tuple[int, str]) -> None:
    ws = ClosingWs()
    demo.Chat().on_message(ws, message)
    assert ws.closed == [expected]
    assert bus == []


@pytest.mark.parametrize("message", [
    json.dumps({"text": "[" * 40 + " brackets in a string are text"}),  # strings hold no nesting
    "plain text [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[ with brackets",
    json.dumps({"text": "x" * 10_000, "extra": [[[[1]]]]}),
], ids=["brackets-in-string", "plain-text", "shallow"])
def test_ordinary_messages_still_pass(bus: list[tuple[str, Any]], message: str) -> None:
    ws = ClosingWs()
    demo.Chat().on_message(ws, message)
    assert ws.closed == []
    assert len(bus) == 1


def test_deep_json_on_the_real_server_is_1003_without_a_traceback(start_server: Callable[..., Server]) -> None:
    server = start_server(app="", workers=1)
    with raw_ws(server, "/ws/chat") as (client, _head):
        client.send(frame(TEXT, DEEP.encode()))
        while True:  # the history comes first
            opcode, payload, _fin, _rsv = client.recv_frame()
            if opcode == CLOSE:
                break
        assert payload == struct.pack("!H", 1003) + b"JSON nested deeper than 32 levels"
        client.send(close_frame(1003))  # the application closed: the server waits for our answer
        assert client.at_eof()
    output = server.output()
    assert output.count("JSON nested deeper than 32 levels; closing 1003") == 1, output
    assert "Traceback" not in output and "RecursionError" not in output
