"""One real-browser test: the app served by ``streamlit run``, driven by Playwright with Debian's Chromium.

It walks Overview → Triage, records a verdict, checks that no exception box is shown and that the verdict is in
the store. Chromium comes from the system (``make browser-deps``); Playwright's own browser download is never
used.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ENTRY = Path(__file__).resolve().parents[2] / "app" / "main.py"
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The first page computes the demo's class profiles on a shared 2-core CPU: generous waits.
WAIT_MS = 120_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_app(home: Path, port: int | None = None) -> Iterator[str]:
    """``streamlit run app/main.py`` on 127.0.0.1 with ``ESSENCE_HOME=home``; yields its URL once healthy."""
    port = port or free_port()
    env = {**os.environ, "ESSENCE_HOME": str(home)}
    cmd = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(ENTRY),
        "--server.address",
        "127.0.0.1",
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",
        "false",
        "--server.fileWatcherType",
        "none",
    ]
    log = open(home / "streamlit.log", "w")  # noqa: SIM115 - closed below
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"streamlit did not come up: {(home / 'streamlit.log').read_text()[-2000:]}"
                )
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


@contextlib.contextmanager
def browser_page(width: int = 1400, height: int = 1000) -> Iterator[object]:
    """A Playwright page in Debian's headless Chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(WAIT_MS)
            yield page
        finally:
            browser.close()


def wait_until_idle(page: object) -> None:
    """Wait until Streamlit has finished the current run (its status widget is gone)."""
    page.wait_for_timeout(500)  # type: ignore[attr-defined]
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=WAIT_MS)  # type: ignore[attr-defined]


@pytest.mark.browser
@pytest.mark.slow
def test_overview_to_triage_to_a_stored_verdict(tmp_path: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (make browser-deps)")
    from essence.core import load_dataset, load_model
    from essence.storage import Store

    with serve_app(tmp_path) as url, browser_page() as page:
        page.goto(url)
        page.get_by_text("Classes never predicted").wait_for()
        wait_until_idle(page)
        assert page.locator('[data-testid="stException"]').count() == 0
        page.locator('[data-testid="stSidebarNavLink"]', has_text="Triage").click()
        page.get_by_label("Your name").fill("Dr. Browser")
        page.get_by_role("button", name="Start reviewing").click()
        button = page.get_by_role("button", name="Label error (1)")
        button.wait_for()
        wait_until_idle(page)
        heading = page.locator("h3", has_text=" of ").first.inner_text()
        index = int(heading.rsplit("image ", 1)[1])
        button.click()
        page.get_by_text("Saved: image").wait_for()
        wait_until_idle(page)
        assert page.locator('[data-testid="stException"]').count() == 0
    model = load_model("demo:blurred")
    data = load_dataset("demo:test", model.preprocessing)
    with Store.open(tmp_path / "essence.sqlite") as store:
        latest = store.latest_verdicts(data.fingerprint)
    assert latest[index].verdict == "label error" and latest[index].reviewer == "Dr. Browser"
