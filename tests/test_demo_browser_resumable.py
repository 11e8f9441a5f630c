"""Resumable uploads in a real headless Chromium: the demo page, and tus-js-client.

The browser's upload bandwidth is throttled (Chrome DevTools network emulation), so
that the server can be killed, all of it, at SIGKILL, while an upload is under way,
and started again on the same port and directories; the page (the demo's own draft
client) and tus-js-client must then resume from the offset the new server reports
and the file must arrive whole. ``[resumable] checkpoint = 1MiB`` (with no interval) bounds what the
kill may lose. tus-js-client's browser bundle comes from the npm registry, fetched
by ``.ci/run`` into ``tests/vendor/`` (never by the tests); without it that test is
skipped, which on CI fails the run, as for a missing chromium.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.server import REPO, Server
from tests.test_demo_browser import chromium_drivers, open_page, png, wait
from tests.test_demo_browser import pytestmark as needs_chromium

# After tests.test_demo_browser, whose importorskip skips this module when selenium is missing.
from selenium.webdriver.common.by import By

pytestmark = needs_chromium

TUS_BUNDLE = REPO / "tests" / "vendor" / "tus-js-client" / "package" / "dist" / "tus.min.js"
RESUMABLE = {"resumable": "checkpoint = 1MiB\ncheckpoint_interval = 0"}
UPLOAD_RATE = 3 * 1024 * 1024  # bytes per second the browser may send


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Any]]:
    yield from chromium_drivers(tmp_path_factory)


def throttle(driver: Any, upload: int) -> None:
    driver.execute_cdp_cmd("Network.enable", {})
    driver.execute_cdp_cmd("Network.emulateNetworkConditions", {
        "offline": False, "latency": 0, "downloadThroughput": -1, "uploadThroughput": upload})


def kill_everything(server: Server) -> None:
    """SIGKILL the master and its workers: nothing gets to commit or clean up."""
    processes = [psutil.Process(server.proc.pid), *server.workers()]
    for process in processes:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(processes, timeout=10)


def partial_offsets(server: Server) -> list[int]:
    """The durable offsets of the partial uploads in the server's store."""
    records = (json.loads(p.read_text()) for p in (server.uploads / ".partial").glob("*.json"))
    return [r["offset"] for r in records if not r["complete"]]


def test_demo_page_resumes_after_the_server_is_killed_and_started_again(
        start_server: Callable[..., Server], browser: Callable[..., Any], tmp_path: Path) -> None:
    server = start_server(app="", workers=2, config=RESUMABLE)
    image = tmp_path / "big.png"
    image.write_bytes(png(1500, 1500))  # about 6.4 MiB: two seconds at the throttled rate
    driver = browser()
    open_page(driver, server)
    throttle(driver, UPLOAD_RATE)
    driver.find_element(By.ID, "file-input").send_keys(str(image))
    driver.find_element(By.ID, "upload-button").click()
    wait(driver, lambda d: max(partial_offsets(server) or [0]) >= 2 * 1024 * 1024, "2 MiB durably stored")
    kill_everything(server)
    wait(driver, lambda d: "retrying" in d.find_element(By.ID, "upload-status").text, "the page retrying")

    again = start_server(app="", workers=2, config=RESUMABLE, bind=server.bind)
    status = wait(driver, lambda d: (t := d.find_element(By.ID, "upload-status").text).startswith("resuming at")
                  and t, "the page resuming")
    assert 25 <= int(status.split()[2]) < 100, status
    wait(driver, lambda d: d.find_element(By.ID, "upload-status").text.startswith("Uploaded 1 file"),
         "upload finished")
    stored = [p for p in again.uploads.iterdir() if p.is_file()]
    assert len(stored) == 1 and stored[0].read_bytes() == image.read_bytes()
    assert [p.suffix for p in (again.uploads / ".partial").iterdir()] == [".json"]  # the data file went


TUS_PAGE = """<!doctype html><meta charset="utf-8"><title>tus</title>
<script src="/tus.min.js"></script>
<input id="file" type="file"><output id="state">idle</output>
<script>
window.events = [];  // ["retry", attempt] and ["sent", bytes], in order
document.getElementById("file").addEventListener("change", (ev) => {
  const file = ev.target.files[0];
  const upload = new tus.Upload(file, {
    endpoint: "/resumable/",
    retryDelays: [0, 500, 1000, 1000, 2000, 2000, 4000, 4000, 4000, 4000],
    metadata: {filename: file.name, filetype: file.type},
    onProgress: (sent, total) => { window.events.push(["sent", sent]); },
    onShouldRetry: (err, attempt) => { window.events.push(["retry", attempt]); return true; },
    onSuccess: () => { document.getElementById("state").textContent = "done " + upload.url; },
    onError: (err) => { document.getElementById("state").textContent = "error " + err; },
  });
  upload.start();
});
</script>"""


def test_tus_js_client_resumes_after_the_server_is_killed_and_started_again(
        start_server: Callable[..., Server], browser: Callable[..., Any], tmp_path: Path) -> None:
    if not TUS_BUNDLE.exists():  # like a missing chromium: skipped here, a failure on CI (tests/conftest.py)
        pytest.skip(f"needs {TUS_BUNDLE.relative_to(REPO)}: .ci/run fetches tus-js-client from the npm registry")
    env = {"TUS_PAGE_BUNDLE": str(TUS_BUNDLE), "TUS_PAGE_HTML": TUS_PAGE}
    server = start_server(app="tests.apps.tus_page:app", workers=2, config=RESUMABLE, env=env)
    data = os.urandom(6 * 1024 * 1024)
    path = tmp_path / "payload.bin"
    path.write_bytes(data)
    driver = browser()
    driver.get(server.url + "/tus.html")
    throttle(driver, UPLOAD_RATE)
    driver.find_element(By.ID, "file").send_keys(str(path))
    wait(driver, lambda d: max(partial_offsets(server) or [0]) >= 2 * 1024 * 1024, "2 MiB durably stored")
    kill_everything(server)
    wait(driver, lambda d: d.execute_script("return window.events.some(e => e[0] === 'retry')"),
         "tus-js-client retrying")

    again = start_server(app="tests.apps.tus_page:app", workers=2, config=RESUMABLE, bind=server.bind, env=env)
    state = wait(driver, lambda d: (t := d.find_element(By.ID, "state").text).startswith(("done", "error")) and t,
                 "the upload to end")
    assert state.startswith("done"), state
    saved = json.loads((again.uploads / "tus_page.json").read_text())
    assert saved == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "filename": "payload.bin"}
    # It resumed: after its first retry, progress went on from the offset the new server
    # reported (at least the 2 MiB stored before the kill), never from the start.
    events = driver.execute_script("return window.events")
    after = events[[e[0] for e in events].index("retry"):]
    assert min(e[1] for e in after if e[0] == "sent") >= 2 * 1024 * 1024, after[:5]
