"""End-to-end fuzz: mutated requests against the real server, whole and in pieces.

Strategy: a fixed seed derives a few hundred requests from valid ones (byte
flips, insertions, deletions, repeated runs, duplicated lines). Each is sent on
a fresh connection twice -- in one write, and in 1-7 byte pieces -- and the
client half-closes after its last byte, so a request the mutation left
unfinished ends at once (400, or a clean close for a cut body) instead of in a
timeout. Every answer must be a well-formed sequence of HTTP responses (or
nothing), the final status lines and bodies must be the same both ways (the
parser's split invariance, seen from outside), the workers must be the same
processes at the end, and the whole run must stay within a deadline.
"""

from __future__ import annotations

import random
import re
import select
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from tests.server import Server

SEED = 12_2026
CASES = 400
DEADLINE = 30.0  # seconds for the whole run; about 5 s on 2 cores
CLIENTS = 8  # connections in flight at once
# A short pause between pieces lets the server read each one on its own; sent
# back to back, loopback would hand most of them over in one read.
PIECE_PAUSE = 0.0005
SOCKET_TIMEOUT = 10.0
# Small limits, so that a mutation (a run of 40 bytes, a repeated line) pushes a
# request line, header block or body across one: 414, 431 or 413 against 400.
LIMITS = "max_request_line = 48\nmax_header_bytes = 160\nmax_header_count = 6\nmax_body_size = 32"

# Valid requests, several near one of LIMITS (a 41-byte request line, 28 and 29
# body bytes, a 124-byte header block).
VALID = [
    b"GET /a/b/c/d/e/f/g/h?x=1&y=2&z=3 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\nUser-Agent: fuzz\r\n"
    b"Accept-Language: en;q=0.9, fr;q=0.8\r\nCookie: a=1; b=2\r\n\r\n",
    b"POST /form HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nContent-Type: text/plain\r\nContent-Length: 28\r\n\r\n"
    b"hello world, hello fuzzers!!",
    b"POST /chunks HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\nhello\r\n6\r\n world\r\n12\r\n0123456789abcdefgh\r\n0\r\nX-Trailer: yes\r\n\r\n",
    b"GET /one HTTP/1.1\r\nHost: h\r\n\r\nGET /two HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    b"GET http://example.com:80/abs?q HTTP/1.1\r\nHost: example.com\r\n\r\n",
    b"GET /old HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"OPTIONS * HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
    b"PUT /up HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\ndata",
]
# Mutants that answered differently whole and in pieces before the parser
# judged a line by its first LF (414 or 431 whole, 400 in pieces).
KNOWN = [
    b"GET /a/b/c/d/e/f/g/h?x=1&y=2&z=3\nHost: example.com\r\nAccept: */*\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\nX-Long: " + b"v" * 200 + b"\r\n\r\n",
]
INTERESTING = b"\r\n\r\n \t:;,@/[]%?#0aZ\x00\x7f\x80\xff"


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One to four random edits of ``data``."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        pos = rng.randint(0, len(out))
        byte = rng.choice(INTERESTING) if rng.random() < 0.7 else rng.randrange(256)
        op = rng.randrange(5)
        if op == 0 and pos < len(out):
            out[pos] = byte
        elif op == 1:
            out[pos:pos] = bytes([byte]) * rng.choice((1, 1, 2, 40))
        elif op == 2:
            del out[pos : pos + rng.randint(1, 6)]
        elif op == 3:
            out[pos:pos] = out[pos : pos + rng.randint(1, 30)]
        else:  # duplicate a whole line: a repeated header, request line or chunk
            start = out.rfind(b"\n", 0, pos) + 1
            end = out.find(b"\n", pos)
            if end >= 0:
                out[start:start] = out[start : end + 1]
    return bytes(out)


def pieces(data: bytes, rng: random.Random) -> list[bytes]:
    """``data`` cut into 1-7 byte pieces."""
    out, pos = [], 0
    while pos < len(data):
        step = rng.randint(1, 7)
        out.append(data[pos : pos + step])
        pos += step
    return out


def _read_available(sock: socket.socket, received: bytearray) -> bool:
    """Append what the server has sent so far; True once it has closed its side."""
    while select.select([sock], [], [], 0)[0]:
        data = sock.recv(65536)
        if not data:
            return True
        received += data
    return False


def exchange(server: Server, chunks: list[bytes]) -> tuple[bytes, bool]:
    """Send ``chunks`` on a fresh connection, half-close, and read until the server closes.

    Like a real client, it stops sending once the server has closed (it looks
    before each piece). Returns what the server sent and whether the connection
    ended in a reset rather than a clean close.
    """
    received = bytearray()
    with server.connect(SOCKET_TIMEOUT) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            for i, chunk in enumerate(chunks):
                if i:
                    time.sleep(PIECE_PAUSE)  # the client's pace (see PIECE_PAUSE), not a wait
                    if _read_available(sock, received):
                        return bytes(received), False
                sock.sendall(chunk)
            sock.shutdown(socket.SHUT_WR)
            while data := sock.recv(65536):
                received += data
        except (BrokenPipeError, ConnectionResetError):
            return bytes(received), True
        return bytes(received), False


STATUS_LINE = re.compile(rb"HTTP/1\.[01] ([1-5][0-9][0-9]) [\t -~]*\r\n")
FIELD = re.compile(rb"([!#$%&'*+\-.^_`|~0-9A-Za-z]+): ?([\t -~]*)\r\n")


Answer = tuple[bytes, bytes, bool]  # status line, body, whether it announced Connection: close


def responses(raw: bytes) -> list[Answer]:
    """Split a server's output into final responses; AssertionError if it is not well formed."""
    out: list[Answer] = []
    pos = 0
    while pos < len(raw):
        m = STATUS_LINE.match(raw, pos)
        assert m, f"not a status line at byte {pos}: {raw[pos:pos + 80]!r}"
        status_line, status, pos = m.group(0)[:-2], int(m.group(1)), m.end()
        length, close = None, False
        while not raw.startswith(b"\r\n", pos):
            field = FIELD.match(raw, pos)
            assert field, f"malformed header line at byte {pos}: {raw[pos:pos + 80]!r}"
            if field.group(1).lower() == b"content-length":
                length = int(field.group(2))
            close = close or field.group(0).lower() == b"connection: close\r\n"
            assert field.group(1).lower() != b"transfer-encoding", "the echo app and errors are length-framed"
            pos = field.end()
        pos += 2
        if status < 200:
            continue  # interim (100 Continue): whether it is sent depends on timing (RFC 9110 §15.2)
        assert length is not None or status in (204, 304), f"unframed response: {status_line!r}"
        body = raw[pos : pos + (length or 0)]
        assert len(body) == (length or 0), f"body cut short: {status_line!r}"
        pos += len(body)
        out.append((status_line, body, close))
    return out


def agree(whole: list[Answer], split: list[Answer]) -> bool:
    """The same answers (status line and body), in the same order.

    The client half-closes after its last byte; the server still answers every
    request it already received, so where the EOF falls changes nothing but
    whether the last answer already says ``Connection: close``.
    """
    return [a[:2] for a in whole] == [a[:2] for a in split]


def test_mutated_requests_get_the_same_well_formed_answer_whole_and_in_pieces(
        start_server: Callable[..., Server]) -> None:
    started = time.monotonic()
    server = start_server(app="tests.apps.echo:app", workers=2, threads=4, config={"limits": LIMITS})
    workers = sorted(p.pid for p in server.workers())
    assert len(workers) == 2
    rng = random.Random(SEED)
    cases = KNOWN + [mutate(rng.choice(VALID), rng) for _ in range(CASES)]
    splits = [pieces(data, rng) for data in cases]

    def answers(chunks: list[bytes]) -> list[Answer]:
        raw, reset = exchange(server, chunks)
        got = responses(raw)
        # A reset is acceptable only after the server said it would close: it
        # then closes at once (it lingers, reading on, only after an error), and
        # bytes the client sent after that close draw a reset (RFC 9112 §9.6).
        assert not reset or (got and got[-1][2]), f"connection reset: {chunks!r} -> {raw!r}"
        return got

    def run(index: int) -> tuple[list[Answer], list[Answer]]:
        return answers([cases[index]]), answers(splits[index])

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(run, range(len(cases))))
    elapsed = time.monotonic() - started

    differ = [(cases[i], whole, split) for i, (whole, split) in enumerate(results) if not agree(whole, split)]
    assert not differ, f"{len(differ)} cases answered differently whole and in pieces, e.g. {differ[:3]}"
    statuses = {answer[0].split(b" ")[1] for whole, _ in results for answer in whole}
    # The corpus reaches both sides: accepted requests and several kinds of rejection.
    assert {b"200", b"400", b"414", b"431"} <= statuses, statuses
    assert sorted(p.pid for p in server.workers()) == workers, "a worker died or was replaced"
    assert server.proc.poll() is None
    assert elapsed < DEADLINE, f"the run took {elapsed:.1f} s (deadline {DEADLINE} s)"
