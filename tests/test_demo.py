"""The demo app's chat logic without a server: sanitising, history, join order."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from prefork.apps import broadcast
from prefork.apps import demo
from prefork.apps.runtime import Runtime


class FakeWs:
    """Records what a handler does with its WebSocket (``call_soon`` runs at once)."""

    def __init__(self) -> None:
        self.sent: list[Any] = []
        self.channels: list[str] = []

    def send(self, message: str) -> None:
        self.sent.append(json.loads(message))

    def subscribe(self, channel: str) -> None:
        self.channels.append(channel)

    def call_soon(self, fn: Any) -> None:
        fn()


@pytest.fixture
def bus() -> Iterator[list[tuple[str, Any]]]:
    """A local transport that runs observers the way a worker's loop does."""
    published: list[tuple[str, Any]] = []
    subscribers = broadcast.Subscribers()

    def deliver(channel: str, message: str | bytes) -> None:
        published.append((channel, json.loads(message)))
        subscribers.deliver(channel, message)

    demo.app.bind(Runtime(transport=broadcast.LocalTransport(deliver), subscribers=subscribers))
    yield published
    demo.app.bind(Runtime())


def test_message_is_sanitised_and_broadcast(bus: list[tuple[str, Any]]) -> None:
    chat, ws = demo.Chat(), FakeWs()
    chat.on_message(ws, json.dumps({"name": "ev\u202eil\x00 " + "n" * 100, "text": " hi\x07 <b>x</b>\nline2 "}))
    chat.on_message(ws, json.dumps({"name": "a", "text": "   "}))  # empty: dropped
    chat.on_message(ws, "plain text, not JSON")
    chat.on_message(ws, json.dumps([1, 2]))  # not an object: dropped
    messages = [m for channel, m in bus if channel == "chat"]
    assert len(messages) == 2
    first = messages[0]
    assert first["type"] == "message" and first["text"] == "hi <b>x</b>\nline2"
    assert first["name"] == ("evil " + "n" * 100)[:demo.MAX_NICK]
    assert messages[1]["name"] == "anonymous" and messages[1]["text"] == "plain text, not JSON"
    assert len({m["id"] for m in messages}) == 2


def test_long_message_is_cut(bus: list[tuple[str, Any]]) -> None:
    demo.Chat().on_message(FakeWs(), json.dumps({"text": "x" * 10_000}))
    assert len(bus[0][1]["text"]) == demo.MAX_MESSAGE


def test_history_keeps_the_last_50_and_is_sent_on_join(bus: list[tuple[str, Any]]) -> None:
    chat = demo.Chat()
    for n in range(60):
        chat.on_message(FakeWs(), json.dumps({"name": "n", "text": f"m{n}"}))
    joiner = FakeWs()
    chat.on_open(joiner)
    assert joiner.channels == ["chat", "gallery"]  # subscribed before the history snapshot
    (history,) = joiner.sent
    assert history["type"] == "history"
    assert [m["text"] for m in history["messages"]] == [f"m{n}" for n in range(10, 60)]
