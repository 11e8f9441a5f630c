"""The WSGI response-head checks, and the cache of lines already found valid."""

from __future__ import annotations

import pytest

from prefork.apps import wsgi
from prefork.apps.wsgi import _check_headers


@pytest.mark.parametrize("repeat", [1, 2, 3])  # the second and third time come from the cache
def test_valid_heads_pass_and_invalid_ones_fail_every_time(repeat: int) -> None:
    for _ in range(repeat):
        _check_headers("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "12")])
        _check_headers("404 Not Found", [["X-List-Pair", "ok"]])  # type: ignore[list-item]
        with pytest.raises(ValueError, match="invalid WSGI status"):
            _check_headers("200", [])
        with pytest.raises(ValueError, match="not a valid latin-1 field line"):
            _check_headers("200 OK", [("Content-Type", "text/plain"), ("X-Bad", "a\r\nX-Injected: 1")])
        with pytest.raises(ValueError, match="not a valid latin-1 field line"):
            _check_headers("200 OK", [("X-Snowman", "\u2603")])
        with pytest.raises(ValueError, match="Content-Length must be digits"):
            _check_headers("200 OK", [("Content-Length", "12, 12")])
        with pytest.raises(TypeError, match="must be str"):
            _check_headers("200 OK", [("X-Bytes", b"v")])  # type: ignore[list-item]


def test_the_cache_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(wsgi, "_VALID_LINES", set())
    monkeypatch.setattr(wsgi, "_MAX_VALID_LINES", 10)
    for n in range(100):
        _check_headers("200 OK", [("Content-Length", str(n))])
    assert len(wsgi._VALID_LINES) == 10
    assert ("Content-Length", "0") in wsgi._VALID_LINES
    with pytest.raises(ValueError):
        _check_headers("200 OK", [("Content-Length", "x")])
