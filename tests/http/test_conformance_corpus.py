"""The shared HTTP/1.1 conformance corpus (gunicorn-derived), judged at parser level.

Each case is fed whole and in 1-7 byte pieces; the parser's outcome (the
requests it produced, or the ProtocolError it raised) is judged as the corpus
README describes for a runner: ``expect`` accept/reject/either, ``requests`` to
match, and ``allow`` for documented deviations. A deviation only passes when the
case's ``allow`` names it; ``REJECTION_POLICIES``/``ACCEPTANCE_POLICIES`` record which ones our
policies produce, so a change of policy shows up here.
"""

from __future__ import annotations

import base64
import json
import os
import random
from pathlib import Path
from typing import Any

import pytest

from prefork.protocol.errors import ProtocolError
from prefork.protocol.http.events import ConnectionClosed, Data, EndOfMessage, Request, Signal
from prefork.protocol.http.parser import ParserState, RequestParser


def _corpus_dir() -> Path:
    env = os.environ.get("PREFORK_CONFORMANCE_DIR")
    base = Path(env) if env else Path(__file__).parents[2].parent / "shared" / "conformance"
    return base / "http" / "gunicorn" if (base / "http").is_dir() else base


CORPUS = _corpus_dir()
CASES = sorted(CORPUS.glob("*/*.json"))


def _latin1(value: bytes) -> str:
    return value.decode("latin-1")


def _echo(req: Request, body: bytes, trailers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    target = req.target
    return {
        "method": _latin1(req.method),
        "target": _latin1(target),
        "path": _latin1(req.path),
        "query": _latin1(req.query),
        "fragment": _latin1(target.partition(b"#")[2]),
        "version": "HTTP/" + _latin1(req.http_version),
        "headers": [[_latin1(n), _latin1(v)] for n, v in req.headers.raw],
        "body_b64": base64.b64encode(body).decode("ascii"),
        "trailers": [[_latin1(n), _latin1(v)] for n, v in trailers],
    }


def run_parser(wire: bytes, chunks: list[bytes]) -> tuple[list[dict[str, Any]], ProtocolError | None]:
    """Feed ``chunks`` then EOF (the runner half-closes); return echoes and any error."""
    parser = RequestParser()
    echoes: list[dict[str, Any]] = []
    state: dict[str, Any] = {}
    try:
        for piece in [*chunks, b""]:
            parser.feed(piece)
            while True:
                event = parser.next_event()
                if event is Signal.NEED_DATA or isinstance(event, ConnectionClosed):
                    break
                if event is Signal.PAUSED:
                    if parser.state is not ParserState.DONE or not state["req"].keep_alive:
                        return echoes, None  # the server closes (or switches protocol)
                    parser.start_next_cycle()
                elif isinstance(event, Request):
                    state = {"req": event, "body": []}
                elif isinstance(event, Data):
                    state["body"].append(event.data)
                elif isinstance(event, EndOfMessage):
                    echoes.append(_echo(state["req"], b"".join(state["body"]), event.trailers.raw))
    except ProtocolError as exc:
        return echoes, exc
    return echoes, None


def _by_name(pairs: list[list[str]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for name, value in pairs:
        out.setdefault(name.lower(), []).append(value)
    return out


def _mismatches(got: dict[str, Any], want: dict[str, Any]) -> set[str]:
    """The ``allow`` keys covering each field of ``got`` that differs from ``want``."""
    bad: set[str] = set()
    for key, allow_key in [("method", "method"), ("target", "path"), ("path", "path"), ("query", "path"),
                           ("fragment", "path"), ("version", "version"), ("body_b64", "body")]:
        if key in want and got[key] != want[key]:
            bad.add(allow_key)
    for key in ("headers", "trailers"):
        if key in want and _by_name(got[key]) != _by_name(want[key]):
            bad.add("headers")
    return bad


def _match(echoes: list[dict[str, Any]], wanted: list[dict[str, Any]], allow: dict[str, str]) -> str | None:
    """Return None if ``echoes`` match ``wanted`` (up to allowed fields), else why not."""
    if len(echoes) != len(wanted):
        return f"{len(echoes)} requests parsed, {len(wanted)} expected"
    for got, want in zip(echoes, wanted):
        bad = _mismatches(got, want) - set(allow)
        if bad:
            return f"fields {sorted(bad)} differ: {got} != {want}"
    return None


def judge(case: dict[str, Any], echoes: list[dict[str, Any]], error: ProtocolError | None) -> tuple[str, str]:
    """Return (verdict, detail); verdict is PASS, DIFF (allowed deviation) or FAIL."""
    allow, expect = case.get("allow", {}), case["expect"]
    if error is not None:
        if expect in ("reject", "either"):
            return "PASS", f"rejected {error.status}: {error}"
        return ("DIFF" if "reject" in allow else "FAIL"), f"rejected: {error}"
    if expect == "reject" and "accept" not in allow:
        return "FAIL", f"accepted a case that must be rejected: {echoes}"
    alternatives = [case[k] for k in ("requests", "accept_requests") if k in case and
                    (expect != "reject" or k == "accept_requests")] + case.get("accept_alternatives", [])
    if not alternatives:
        return "DIFF", f"accept allowed: {allow.get('accept')}"
    reasons = [_match(echoes, alt, allow if expect == "accept" else {}) for alt in alternatives]
    if None in reasons:
        return ("PASS", "accepted") if expect != "reject" else ("DIFF", f"accepted: {allow['accept']}")
    return "FAIL", "; ".join(r for r in reasons if r)


# Deviations our policies produce; each must also be allowed by the case.
# Rejections of "valid" cases, by the start of our error message:
REJECTION_POLICIES = {
    "missing Host header": "RFC 9112 3.2: a 1.1 request without Host MUST get 400",
    "unsupported transfer coding": "we decode no coding but chunked (RFC 9112 6.1: 501)",
    "obsolete line folding": "obs-fold rejected (RFC 9112 5.2 allows either)",
    "whitespace before colon": "RFC 9112 5.1 MUST reject",
    "invalid request line: b'PROXY": "no PROXY protocol support",
    "invalid first byte of a request line": "no PROXY protocol v2; one leading CRLF only",
}
# Acceptances of "invalid" cases, by a phrase of the case's allow.accept reason:
ACCEPTANCE_POLICIES = {
    "size limits": "our limits (HttpLimits) are larger than gunicorn's defaults",
    "non-default gunicorn settings": "the rejection needs gunicorn settings we do not copy",
    "duplicated singleton": "duplicate Content-Type is the application's business",
    "MUST NOT merge": "trailers are kept apart from headers, not rejected",
}


def test_corpus_present() -> None:
    assert CORPUS.is_dir(), f"conformance corpus missing at {CORPUS}; set PREFORK_CONFORMANCE_DIR"
    assert len(CASES) == 143


@pytest.mark.parametrize("case_path", CASES, ids=[f"{p.parent.name}/{p.stem}" for p in CASES])
def test_case(case_path: Path) -> None:
    case = json.loads(case_path.read_text())
    wire = (case_path.parent / case["wire"]).read_bytes()
    rng = random.Random(case_path.stem)
    pieces, pos = [], 0
    while pos < len(wire):
        step = rng.randint(1, 7)
        pieces.append(wire[pos : pos + step])
        pos += step
    verdicts = []
    for chunks in ([wire], pieces):
        verdict, detail = judge(case, *run_parser(wire, chunks))
        assert verdict != "FAIL", f"{case['id']}: {detail}"
        if verdict == "DIFF":
            markers = REJECTION_POLICIES if detail.startswith("rejected") else ACCEPTANCE_POLICIES
            assert any(marker in detail for marker in markers), f"undocumented deviation: {detail}"
        verdicts.append((verdict, detail))
    assert verdicts[0] == verdicts[1], "outcome depends on how the input was split"
