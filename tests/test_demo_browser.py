"""The demo page in a real headless Chromium (Selenium): upload with progress, gallery, chat, XSS.

Needs the Debian packages ``chromium`` and ``chromium-driver`` and the ``selenium``
package; skipped (with the reason) when they are missing. Selenium never downloads
anything: the driver path is given and ``SE_OFFLINE`` is set. The screenshot taken
after the upload goes to ``tests/artifacts/`` (git-ignored); its path is printed.
"""

from __future__ import annotations

import os
import shutil
import struct
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.server import REPO, Server

webdriver = pytest.importorskip("selenium.webdriver", reason="needs the selenium package")
from selenium.common.exceptions import StaleElementReferenceException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
ARTIFACTS = REPO / "tests" / "artifacts"
WAIT = 20.0
XSS = "<img src=x onerror=window.__xss=1>"

pytestmark = pytest.mark.skipif(
    not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)),
    reason="needs Debian packages chromium and chromium-driver")


def png(width: int, height: int) -> bytes:
    """A valid RGB PNG of random-looking pixels (incompressible, so about 3 bytes a pixel)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    noise = os.urandom(width * 3)
    rows = b"".join(b"\x00" + noise[y % 7:] + noise[:y % 7] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows, 0))
            + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def demo(start_module_server: Callable[..., Server]) -> Server:
    return start_module_server(app="", workers=4)


def chromium_drivers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Any]]:
    """A factory of headless Chromium drivers; every one is quit at teardown (the body of
    ``browser``, for modules that want the same fixture)."""
    os.environ["SE_OFFLINE"] = "true"  # selenium-manager must never go online
    drivers: list[Any] = []

    def start(javascript: bool = True) -> Any:
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--no-first-run", "--window-size=1280,900"):
            options.add_argument(arg)
        options.add_argument(f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path_factory.mktemp('chrome'))}")
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        if not javascript:
            options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        driver.quit()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Any]]:
    """A factory of headless Chromium drivers; every one is quit at teardown."""
    yield from chromium_drivers(tmp_path_factory)


def wait(driver: Any, predicate: Callable[[Any], Any], what: str) -> Any:
    return WebDriverWait(driver, WAIT, poll_frequency=0.05,
                         ignored_exceptions=(StaleElementReferenceException,)).until(predicate, what)


def open_page(driver: Any, server: Server) -> None:
    driver.get(server.url + "/")
    wait(driver, lambda d: d.find_element(By.ID, "chat-status").text == "online", "chat online")


def chat_texts(driver: Any) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#chat-log li .text'), e => e.textContent)")


def send_chat(driver: Any, text: str) -> None:
    box = driver.find_element(By.ID, "chat-input")
    box.send_keys(text)
    box.send_keys(Keys.ENTER)


PROBE_404 = "/x - Failed to load resource: the server responded with a status of 404"  # xss_ran's probe


def console_errors(driver: Any) -> list[str]:
    return [e["message"] for e in driver.get_log("browser")
            if e["level"] == "SEVERE" and "favicon.ico" not in e["message"] and PROBE_404 not in e["message"]]


def xss_ran(driver: Any) -> str:
    """``typeof window.__xss`` once an image that fails to load, as the XSS image's would, has fired onerror.

    A probe image with the XSS payload's ``src`` fails after any such image inserted
    before it, so its onerror is the moment the payload's would have run by.
    """
    result: str = driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "const probe = new Image();"
        "probe.onerror = () => done(typeof window.__xss);"
        "probe.src = 'x';")
    return result


def upload_and_find_in_gallery(driver: Any, server: Server, image: Path, src_prefix: str = "") -> str:
    """Upload ``image`` (1024 px wide) with the page's form; wait for 100 % and the gallery item.

    Returns:
        The stored file's name, checked byte for byte; the gallery image's URL starts with ``src_prefix``.
    """
    driver.find_element(By.ID, "file-input").send_keys(str(image))
    driver.find_element(By.ID, "upload-button").click()
    wait(driver, lambda d: d.find_element(By.ID, "progress-text").text == "100 %", "progress at 100 %")
    wait(driver, lambda d: d.find_element(By.ID, "upload-status").text.startswith("Uploaded 1 file"),
         "upload finished")
    progress = driver.find_element(By.ID, "progress")
    assert progress.get_property("value") == 100
    assert int(progress.get_attribute("data-events")) >= 1, "xhr.upload.onprogress never fired"
    item = wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, "#gallery li.image"), "gallery item")
    name: str = item.get_attribute("data-name")
    wait(driver, lambda d: d.execute_script(
        "const i = document.querySelector('#gallery li.image img');"
        "return i && i.complete && i.naturalWidth === 1024 && i.src.startsWith(arguments[0]);", src_prefix),
        "image decoded in the gallery")
    assert item.find_element(By.CSS_SELECTOR, ".caption").text == image.name
    assert (server.uploads / name).read_bytes() == image.read_bytes()
    return name


def test_upload_with_progress_shows_in_gallery(demo: Server, browser: Callable[..., Any], tmp_path: Path) -> None:
    image = tmp_path / "photo.png"
    image.write_bytes(png(1024, 1024))  # about 3 MiB: several progress events on loopback
    driver = browser()
    open_page(driver, demo)
    name = upload_and_find_in_gallery(driver, demo, image)

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "demo-after-upload.png"
    driver.save_screenshot(str(shot))
    print(f"\nscreenshot: {shot}")
    assert shot.stat().st_size > 1000

    driver.refresh()  # the server-rendered gallery has it too
    wait(driver, lambda d: d.find_elements(By.CSS_SELECTOR, f'#gallery li[data-name="{name}"] img'),
         "gallery after reload")
    assert console_errors(driver) == []


def test_chat_between_two_pages_once_and_as_text(demo: Server, browser: Callable[..., Any]) -> None:
    first, second = browser(), browser()
    open_page(first, demo)
    open_page(second, demo)
    message = f"hello from the first page {time.monotonic_ns()}"
    send_chat(first, message)
    wait(second, lambda d: message in chat_texts(d), "message in the second page")
    wait(first, lambda d: message in chat_texts(d), "message echoed in the first page")

    send_chat(second, XSS)
    wait(first, lambda d: XSS in chat_texts(d), "XSS text in the first page")
    wait(second, lambda d: XSS in chat_texts(d), "XSS text in the second page")
    for driver in (first, second):
        # The XSS message is also a fence: chat messages arrive in order, so a duplicate
        # of the first message would be on the page before it.
        assert chat_texts(driver).count(message) == 1
        assert driver.find_elements(By.CSS_SELECTOR, "#chat-log img") == []
        assert xss_ran(driver) == "undefined"
        assert chat_texts(driver).count(XSS) == 1

    third = browser()  # joins later: sees both in the history, once each
    open_page(third, demo)
    wait(third, lambda d: XSS in chat_texts(d), "history for a late joiner")
    texts = chat_texts(third)
    assert texts.count(message) == 1 and texts.count(XSS) == 1
    assert texts.index(message) < texts.index(XSS)
    assert xss_ran(third) == "undefined"
    for driver in (first, second, third):
        assert console_errors(driver) == []


def test_plain_form_without_javascript(demo: Server, browser: Callable[..., Any], tmp_path: Path) -> None:
    text_file = tmp_path / "notes.txt"
    text_file.write_text("plain form upload\n")
    driver = browser(javascript=False)
    driver.get(demo.url + "/")
    driver.find_element(By.ID, "file-input").send_keys(str(text_file))
    driver.find_element(By.ID, "upload-button").click()
    link = wait(driver, lambda d: d.find_element(By.XPATH, "//ul[@id='gallery']//a[text()='notes.txt']"),
                "the file in the server-rendered gallery after the 303")
    assert driver.current_url == demo.url + "/"
    href = link.get_attribute("href")
    resp = requests.get(href, timeout=10)
    assert resp.content == b"plain form upload\n"
    assert resp.headers["Content-Disposition"] == 'attachment; filename="notes.txt"'
