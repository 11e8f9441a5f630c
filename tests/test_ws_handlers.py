"""Where a WebSocket handler's code runs, and what the client gets when it fails.

Strategy: the real server with ``tests.apps.ws_handlers`` and the raw client of
``test_server_websocket``, once with handler threads and once inline
(``threads = 0``). The application's handshake code (``select_subprotocol``,
the constructor) runs in the handler pool, never on the loop thread; whatever
a handler raises — in ``on_open``, in ``on_message``, in a function it gave
``call_soon``, from a misused ``close`` or ``send`` — reaches the client as a close frame with 1011 and its
traceback reaches the error log, and the worker goes on serving.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.server import RawClient, Server, wait_for
from tests.server import request as send
from tests.test_server_websocket import BINARY, CLOSE, TEXT, close_frame, frame, raw_ws

APP = "tests.apps.ws_handlers:app"


@pytest.fixture(scope="module", params=[4, 0], ids=["threads", "inline"])
def served(request: pytest.FixtureRequest, start_module_server: Callable[..., Server]) -> tuple[Server, int]:
    return start_module_server(app=APP, workers=1, threads=request.param), request.param


@pytest.fixture
def server(served: tuple[Server, int]) -> Server:
    return served[0]


def test_handshake_code_runs_in_the_pool(served: tuple[Server, int]) -> None:
    server, threads = served
    data = b"".join([
        b"GET /thread HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
        b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        b"Sec-WebSocket-Protocol: chat, superchat\r\n\r\n"])
    with RawClient(server.connect(10)) as raw:
        raw.send(data)
        head_bytes = raw.read_until(b"\r\n\r\n")
        assert head_bytes.startswith(b"HTTP/1.1 101 ") and b"Sec-WebSocket-Protocol: chat\r\n" in head_bytes
        b0, b1 = raw.read_exactly(2)
        chosen_on, made_on, subprotocol = raw.read_exactly(b1 & 0x7F).decode().split()
    assert (b0 & 0x0F, subprotocol) == (TEXT, "chat")
    if threads:
        assert chosen_on.startswith("handler-") and made_on.startswith("handler-"), (chosen_on, made_on)
    else:
        assert chosen_on == made_on == "MainThread"  # threads = 0: everything runs inline


@pytest.mark.parametrize("path,first,where", [
    ("/open", b"", "FailsOnOpen failed: on_open failed on purpose"),
    ("/message", frame(TEXT, b"raise"), "FailsOnMessage failed: on_message failed on purpose"),
    ("/soon", b"", "FailsSoon failed: call_soon failed on purpose"),
    ("/badclose", b"", "ClosesWithABadCode failed: close code 5000 must not be sent"),
    ("/badsend", b"", "SendsAnInt failed: a WebSocket message is str or bytes, not int"),
])
def test_a_handler_that_raises_gets_its_client_a_1011_close(server: Server, path: str, first: bytes,
                                                            where: str) -> None:
    with raw_ws(server, path, timeout=5.0, first=first) as (client, _head):
        while True:
            opcode, payload, _fin, _rsv = client.recv_frame()
            if opcode == CLOSE:
                break
        assert payload == b"\x03\xf3internal error"  # 1011, and nothing of the exception's text
        client.send(close_frame(1011))
        assert client.at_eof()
    wait_for(lambda: where in server.error_log.read_text(), 5.0)
    assert "Traceback" in server.error_log.read_text()
    assert send(server, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").body == b"ws handlers"


def test_a_handler_that_cannot_be_made_is_a_500_without_a_101(server: Server) -> None:
    data = (b"GET /init HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
    response = send(server, data)
    assert response.status == 500 and response.body == b"the WebSocket handler failed to start\n"
    wait_for(lambda: "failed to start: the constructor failed on purpose" in server.error_log.read_text(), 5.0)



def test_frames_sent_with_the_handshake_beyond_the_pipeline_bound_are_all_echoed(server: Server) -> None:
    # 320 KiB of frames in the handshake's own write: more than an HTTP connection buffers
    # (256 KiB) before it stops reading. They belong to the WebSocket, which must read on.
    messages = [bytes([65 + i]) * (32 << 10) for i in range(10)]
    with raw_ws(server, "/message", timeout=10.0, first=b"".join(frame(BINARY, m) for m in messages)) as (client, _):
        assert [client.recv_data() for _ in messages] == [(BINARY, m) for m in messages]
