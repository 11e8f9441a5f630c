"""The demo page over HTTPS in a real headless Chromium: the certificate, an upload, the chat over wss.

The server terminates TLS itself with a certificate from a test CA (``tests/tls_helpers.py``).
Chromium is told to trust exactly that certificate's key, by the SHA-256 of its
SubjectPublicKeyInfo (``--ignore-certificate-errors-spki-list``), never to ignore certificate
errors in general; a Chromium that lists another key of the same CA is refused the page, so
the switch, for exactly this key, is what makes it trusted. The WebSocket URL the page opened
is read from Chromium's own performance log (``Network.webSocketCreated``), not from the
page's code. Chromium, chromedriver and Selenium as in ``tests/test_demo_browser.py``, whose
helpers are used here.
"""

from __future__ import annotations

import base64
import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import websocket
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.server import Server, free_port
from tests.test_demo_browser import (CHROMEDRIVER, CHROMIUM, WAIT, chat_texts, console_errors, open_page, png,
                                     send_chat, upload_and_find_in_gallery, wait)
from tests.test_demo_browser import pytestmark as needs_chromium
from tests.tls_helpers import Pki, make_pki

# After tests.test_demo_browser, whose importorskip skips this module when selenium is missing.
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By

pytestmark = needs_chromium

ARGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--no-first-run", "--no-proxy-server", "--window-size=1280,900")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def cert(pki: Pki) -> tuple[Path, Path]:
    return pki.server_cert("demo")


@pytest.fixture(scope="module")
def demo(start_module_server: Callable[..., Server], cert: tuple[Path, Path]) -> Server:
    return start_module_server(app="", workers=2, bind=f"https://127.0.0.1:{free_port()}",
                               config={"tls": f"certfile = {cert[0]}\nkeyfile = {cert[1]}"})


def spki_hash(chain: Path) -> str:
    """base64 of the SHA-256 of the leaf certificate's SubjectPublicKeyInfo, as Chromium's switch wants it."""
    leaf = x509.load_pem_x509_certificates(chain.read_bytes())[0]
    spki = leaf.public_key().public_bytes(serialization.Encoding.DER,
                                          serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Any]]:
    """A factory of headless Chromium drivers trusting the given SPKI hashes; every one is quit at teardown.

    Not ``tests.test_demo_browser.browser``: that factory takes no extra switches, and its
    switches are inline, so ``ARGS`` repeats them (plus ``--no-proxy-server``: loopback only).
    """
    drivers: list[Any] = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SE_OFFLINE", "true")  # selenium-manager must never go online

        def start(*trusted_spki: str) -> Any:
            options = webdriver.ChromeOptions()
            options.binary_location = CHROMIUM
            for arg in ARGS:
                options.add_argument(arg)
            # Chromium honours the SPKI list only with a --user-data-dir of its own.
            options.add_argument(f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path_factory.mktemp('chrome'))}")
            if trusted_spki:
                options.add_argument(f"--ignore-certificate-errors-spki-list={','.join(trusted_spki)}")
            options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
            driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
            drivers.append(driver)
            return driver

        try:
            yield start
        finally:
            for driver in drivers:
                driver.quit()


def websocket_urls(driver: Any) -> list[str]:
    """The URLs of the WebSockets the page opened that got their 101, from Chromium's performance log.

    Reading the log drains it: call this once per driver.
    """
    created: dict[str, str] = {}
    upgraded: set[str] = set()
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.webSocketCreated":
            created[message["params"]["requestId"]] = message["params"]["url"]
        elif message["method"] == "Network.webSocketHandshakeResponseReceived":
            if message["params"]["response"]["status"] == 101:
                upgraded.add(message["params"]["requestId"])
    return [url for request_id, url in created.items() if request_id in upgraded]


def test_page_loads_over_https_with_the_trusted_certificate(demo: Server, browser: Callable[..., Any],
                                                            cert: tuple[Path, Path], pki: Pki) -> None:
    driver = browser(spki_hash(cert[0]))
    open_page(driver, demo)  # waits for the chat to be online: app.js picked wss:// for an https page
    assert demo.url.startswith("https://")
    assert driver.current_url == demo.url + "/"
    assert driver.execute_script("return location.protocol") == "https:"
    assert driver.execute_script("return window.isSecureContext") is True
    assert driver.title == "prefork demo"
    assert websocket_urls(driver) == [f"wss://127.0.0.1:{demo.port}/ws/chat"]
    assert console_errors(driver) == []

    # The control: trusting another key of the same CA, Chromium refuses this certificate,
    # so the switch trusts exactly the listed key and nothing else does.
    other = browser(spki_hash(pki.server_cert("other")[0]))
    other.get(demo.url + "/")
    wait(other, lambda d: d.execute_script("return location.href").startswith("chrome-error://"),
         "Chromium's certificate error page")
    assert other.find_elements(By.ID, "chat-status") == []


def test_upload_with_progress_over_https_shows_in_gallery(demo: Server, browser: Callable[..., Any],
                                                          cert: tuple[Path, Path], tmp_path: Path) -> None:
    image = tmp_path / "secure.png"
    image.write_bytes(png(1024, 1024))  # about 3 MiB: several progress events, and many TLS records
    driver = browser(spki_hash(cert[0]))
    open_page(driver, demo)
    upload_and_find_in_gallery(driver, demo, image, "https://127.0.0.1:")  # fetched over https
    assert console_errors(driver) == []


def recv_message(ws: websocket.WebSocket, text: str) -> dict[str, Any]:
    """The chat message with ``text`` (history, upload and other messages are passed over)."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        data = json.loads(ws.recv())  # bounded by the connection's timeout
        if data.get("type") == "message" and data.get("text") == text:
            return data  # type: ignore[no-any-return]
    raise AssertionError(f"chat message {text!r} not received within {WAIT} s")


def test_chat_over_wss_between_the_page_and_websocket_client(demo: Server, browser: Callable[..., Any],
                                                             cert: tuple[Path, Path], pki: Pki) -> None:
    driver = browser(spki_hash(cert[0]))
    open_page(driver, demo)
    # Verified against the test CA, host name (the certificate's 127.0.0.1) included.
    ws = websocket.create_connection(f"wss://127.0.0.1:{demo.port}/ws/chat", timeout=WAIT,
                                     sslopt={"ca_certs": str(pki.ca_file)})
    try:
        history = json.loads(ws.recv())
        assert history["type"] == "history"  # subscribed: what is broadcast from now on reaches it

        from_page = f"typed in the https page {time.monotonic_ns()}"
        nick = driver.find_element(By.ID, "chat-name")
        nick.clear()  # app.js fills in a guest-XXXX name
        nick.send_keys("browser")
        send_chat(driver, from_page)
        assert recv_message(ws, from_page)["name"] == "browser"

        from_client = f"sent by websocket-client over wss {time.monotonic_ns()}"
        ws.send(json.dumps({"name": "client", "text": from_client}))
        wait(driver, lambda d: from_client in chat_texts(d), "the client's message on the page")
        assert recv_message(ws, from_client)["name"] == "client"  # the client gets its own back too
        assert chat_texts(driver).count(from_page) == 1
    finally:
        ws.close()
    assert websocket_urls(driver) == [f"wss://127.0.0.1:{demo.port}/ws/chat"]
    assert console_errors(driver) == []
