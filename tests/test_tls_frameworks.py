"""Flask and Django, unchanged, at the edge (TLS) and behind a proxy: what the frameworks
themselves make of the request — scheme, ``is_secure``, the URLs they build and the client
address — which is what a gunicorn user's app relies on.

The apps import nothing of prefork (tests/apps/flask_origin.py, tests/apps/django_origin.py).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import requests

from tests.server import Server, free_port
from tests.tls_helpers import Pki, make_pki

Start = Callable[..., Server]
FRAMEWORK_APPS = {"flask": "tests.apps.flask_origin:app", "django": "tests.apps.django_origin:app"}


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module", params=sorted(FRAMEWORK_APPS))
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def over_tls(start_module_server: Start, pki: Pki, framework: str) -> Server:
    cert, key = pki.server_cert(framework)
    return start_module_server(app=FRAMEWORK_APPS[framework], bind=f"https://127.0.0.1:{free_port()}",
                               config={"tls": f"certfile = {cert}\nkeyfile = {key}"})


@pytest.fixture(scope="module")
def behind_trusted_proxy(start_module_server: Start, framework: str) -> Server:
    """The default [proxy] trusted is loopback: the test client plays the proxy."""
    return start_module_server(app=FRAMEWORK_APPS[framework])


@pytest.fixture(scope="module")
def behind_untrusted_peer(start_module_server: Start, framework: str) -> Server:
    return start_module_server(app=FRAMEWORK_APPS[framework], config={"proxy": "trusted = 10.0.0.1"})


def who(url: str, headers: dict[str, str] | None = None, ca: Path | None = None) -> dict[str, object]:
    response = requests.get(f"{url}/who", headers=headers, timeout=10, verify=str(ca) if ca else True)
    assert response.status_code == 200, response.text
    seen: dict[str, object] = response.json()
    return seen


def test_over_tls_the_framework_sees_https(over_tls: Server, pki: Pki) -> None:
    seen = who(f"https://localhost:{over_tls.port}", ca=pki.ca_file)
    assert seen["scheme"] == "https"
    assert seen["is_secure"] is True
    assert seen["external_url"] == f"https://localhost:{over_tls.port}/who"
    assert seen["remote_addr"] == "127.0.0.1"


def test_behind_a_trusted_proxy_x_forwarded_sets_scheme_and_client(behind_trusted_proxy: Server) -> None:
    headers = {"X-Forwarded-For": "198.51.100.20", "X-Forwarded-Proto": "https"}
    seen = who(behind_trusted_proxy.url, headers)
    assert seen["scheme"] == "https"
    assert seen["is_secure"] is True
    assert seen["remote_addr"] == "198.51.100.20"
    # The Host header is the proxy's to set (nginx: proxy_set_header Host $host), so the
    # URL the framework builds keeps it and takes the forwarded scheme.
    assert seen["external_url"] == f"https://127.0.0.1:{behind_trusted_proxy.port}/who"
    # The headers themselves reach the app as they were sent.
    assert seen["x_forwarded_for"] == "198.51.100.20"


def test_behind_a_trusted_proxy_rfc7239_forwarded_sets_scheme_and_client(behind_trusted_proxy: Server) -> None:
    seen = who(behind_trusted_proxy.url, {"Forwarded": 'for="[2001:db8::7]:4711";proto=https'})
    assert seen["scheme"] == "https"
    assert seen["is_secure"] is True
    assert seen["remote_addr"] == "2001:db8::7"


def test_forwarding_headers_from_an_untrusted_peer_change_nothing(behind_untrusted_peer: Server) -> None:
    headers = {"X-Forwarded-For": "198.51.100.20", "X-Forwarded-Proto": "https", "Forwarded": "for=192.0.2.1;proto=https"}
    seen = who(behind_untrusted_peer.url, headers)
    assert seen["scheme"] == "http"
    assert seen["is_secure"] is False
    assert seen["remote_addr"] == "127.0.0.1"
    assert seen["external_url"] == f"http://127.0.0.1:{behind_untrusted_peer.port}/who"
    # Ignored, not stripped: the app still sees what the peer claimed.
    assert seen["x_forwarded_for"] == "198.51.100.20"
    assert seen["x_forwarded_proto"] == "https"
    assert seen["forwarded"] == "for=192.0.2.1;proto=https"
