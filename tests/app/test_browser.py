"""The app under a person's hands: ``streamlit run`` driven by Playwright in Debian's Chromium.

One server for the module (started once on a copy of the warm store, restarted once to check what survives a
restart); each test drives one page's main flow as a person does: every drop-down changed twice in a row (AppTest
sets widget values directly and cannot see a second choice being dropped), an upload found again after a reload
and removed, a queue row opened, a verdict and its note seen again after a restart, the report downloaded twice.
Every request the browser makes is checked: none may leave 127.0.0.1 (the app works offline), and Streamlit's
developer toolbar is hidden. Chromium comes from the system (``make browser-deps``); Playwright's own browser
download is never used.
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest
from PIL import Image

CHROMIUM = "/usr/bin/chromium"
ENTRY = Path(__file__).resolve().parents[2] / "app" / "main.py"
# The discard port: nothing listens on it here, so a connection to it is refused.
DEAD_PORT = 9
LAUNCH_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    # Every request to another host than this machine goes to a proxy that is not there, and fails at once
    # (loopback is never proxied): nothing leaves 127.0.0.1, and the tests list what tried (browser_page).
    f"--proxy-server=127.0.0.1:{DEAD_PORT}",
    # Chromium preloads its address bar's popup, a page of its own (chrome://omnibox-popup.top-chrome), in every
    # new window, which a headless browser never shows: about 1.1 s of CPU per test's context on a 2-core CPU.
    "--disable-features=WebUIOmniboxPopup,WebUIOmniboxAimPopup,WebUIOmniboxFullPopup",
]
# A page that computes on a shared 2-core CPU: generous waits.
WAIT_MS = 120_000
LOCAL_HOSTS = {"127.0.0.1"}
# A class name that would make every viewer's browser fetch an outside image if it were rendered as markdown.
MARKDOWN_CLASS = "![x](http://example.invalid/tracker.png)"

pytestmark = [pytest.mark.browser, pytest.mark.slow]


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
    log = open(home / "streamlit.log", "a")  # noqa: SIM115 - closed below
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
def chromium() -> Iterator[object]:
    """Debian's headless Chromium under Playwright (a module's tests share one; each gets its own context)."""
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (make browser-deps)")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def browser_page(
    width: int = 1400, height: int = 1000, outside: list[str] | None = None, browser: object | None = None
) -> Iterator[object]:
    """A Playwright page in a fresh context of ``browser`` (a browser of its own when ``None``); requests to hosts
    other than 127.0.0.1 are listed in ``outside`` (the browser's dead proxy refuses them, :data:`LAUNCH_ARGS`)."""
    if browser is None:
        with chromium() as own, browser_page(width, height, outside, own) as page:
            yield page
        return
    context = browser.new_context(viewport={"width": width, "height": height}, accept_downloads=True)  # type: ignore[attr-defined]
    try:
        if outside is not None:
            # Listened to, not intercepted: an intercepted request waits for this process to let it go, which
            # cost the browser flows a tenth of their CPU time.
            def note(request: object) -> None:
                url = request.url  # type: ignore[attr-defined]
                if not url.startswith(("data:", "blob:")) and urlparse(url).hostname not in LOCAL_HOSTS:
                    outside.append(url)

            context.on("request", note)
        page = context.new_page()
        page.set_default_timeout(WAIT_MS)
        yield page
    finally:
        context.close()


def wait_until_idle(page: object) -> None:
    """Wait until Streamlit has finished the current run (its status widget is gone)."""
    # As Streamlit's own browser tests wait: a pause for a widget's debounce to send its rerun, then the app's
    # root saying its script is not running (a requested rerun reads "rerunRequested" until it has run).
    page.wait_for_timeout(210)  # type: ignore[attr-defined]
    page.wait_for_selector(  # type: ignore[attr-defined]
        '[data-testid="stApp"][data-test-script-state="notRunning"]', state="attached", timeout=WAIT_MS
    )
    page.wait_for_selector('[data-testid="stStatusWidget"]', state="detached", timeout=WAIT_MS)  # type: ignore[attr-defined]


class Served:
    """The module's server: its URL, its home, and a restart (same store, new process)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self._stack = contextlib.ExitStack()
        self.url = ""

    def start(self) -> None:
        self.url = self._stack.enter_context(serve_app(self.home))

    def stop(self) -> None:
        self._stack.close()
        self._stack = contextlib.ExitStack()

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture(scope="module")
def served(warm_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (make browser-deps)")
    home = tmp_path_factory.mktemp("browser_home")
    shutil.copytree(warm_home, home, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*-wal", "*-shm"))
    server = Served(home)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def page(served: Served, shared_chromium: object, request: pytest.FixtureRequest) -> Iterator[object]:
    """A fresh browser session on the app, opened on Overview or on the page a test's ``opens`` marker names by
    its address (``@pytest.mark.opens("store", "Store & runs")``: path, then title), as a link to it would; at
    the end, no request may have left 127.0.0.1 and no error box."""
    outside: list[str] = []
    opens = request.node.get_closest_marker("opens")
    with browser_page(outside=outside, browser=shared_chromium) as pg:
        if opens is None:
            pg.goto(served.url)  # type: ignore[attr-defined]
            pg.get_by_text("Classes never predicted").wait_for()  # type: ignore[attr-defined]
        else:
            path, title = opens.args
            pg.goto(f"{served.url}/{path}")  # type: ignore[attr-defined]
            pg.locator("h1", has_text=title).wait_for()  # type: ignore[attr-defined]
        wait_until_idle(pg)
        yield pg
        assert pg.locator('[data-testid="stException"]').count() == 0  # type: ignore[attr-defined]
    assert not outside, f"requests left 127.0.0.1: {outside}"


# ------------------------------------------------------------------------------------------------ helpers


def go(page: object, title: str) -> None:
    page.locator('[data-testid="stSidebarNavLink"]', has_text=title).click()  # type: ignore[attr-defined]
    wait_until_idle(page)


def attach(form: object, files: list[dict[str, object]]) -> None:
    """Give the form's file uploader ``files`` and wait until each is uploaded: its chip shows its name and no
    spinner. A submit clicked before that (on a busy machine) would reach the app without the file."""
    form.locator('input[type="file"]').set_input_files(files=files)  # type: ignore[attr-defined]
    for f in files:
        form.locator('[data-testid="stFileChipName"]', has_text=str(f["name"])).first.wait_for()  # type: ignore[attr-defined]
    form.locator('[data-testid="stFileChipIconSpinner"]').first.wait_for(state="detached")  # type: ignore[attr-defined]


def select(page: object, label: str, option: str, where: str = "stSelectbox") -> None:
    """Open the drop-down labelled ``label`` and click ``option`` (a selectbox, or a multiselect's add)."""
    box = page.locator(f'[data-testid="{where}"]', has_text=label).first  # type: ignore[attr-defined]
    box.locator('[role="combobox"], input').first.click()
    page.get_by_role("option", name=option, exact=True).click()  # type: ignore[attr-defined]
    wait_until_idle(page)


def shown(page: object, label: str, where: str = "stSelectbox") -> str:
    """What a drop-down shows: a selectbox's current choice, or a multiselect's chips."""
    box = page.locator(f'[data-testid="{where}"]', has_text=label).first  # type: ignore[attr-defined]
    if where == "stSelectbox":
        return box.locator('[role="combobox"]').first.input_value()
    return box.inner_text()


def settled(locator: object, timeout_s: float = 30) -> None:
    """Wait until ``locator`` matches one element (Streamlit removes the last run's elements when it ends)."""
    deadline = time.monotonic() + timeout_s
    while locator.count() != 1:  # type: ignore[attr-defined]
        assert time.monotonic() < deadline, f"{locator} matched {locator.count()} elements"  # type: ignore[attr-defined]
        time.sleep(0.2)


def heading_index(page: object) -> tuple[int, int]:
    """Triage's "P of N: image I" heading as (P, I)."""
    text = page.locator("h3", has_text=" of ").first.inner_text()  # type: ignore[attr-defined]
    position = int(text.split(" of ", 1)[0])
    return position, int(text.rsplit("image ", 1)[1])


def dataset_zip(names: list[str], per_class: int = 3) -> bytes:
    """A zip of a CSV dataset (path,label) of small PNGs, one label per name."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        rows = ["path,label"]
        for c, name in enumerate(names):
            for i in range(per_class):
                png = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(png, format="PNG")
                z.writestr(f"images/{c}_{i}.png", png.getvalue())
                rows.append(f'images/{c}_{i}.png,"{name}"')
        z.writestr("labels.csv", "\n".join(rows) + "\n")
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ flows


def test_the_guard_lists_and_refuses_a_request_to_another_host(served: Served, shared_chromium) -> None:
    """What the other tests' ``not outside`` rests on: an outside request, by name or by address, is listed and
    never answered, while this machine is still reached."""
    outside: list[str] = []
    url = served.url
    with browser_page(outside=outside, browser=shared_chromium) as pg:
        failed: list[str] = []
        answered: list[str] = []
        pg.on("requestfailed", lambda r: failed.append(f"{r.url} {r.failure}"))  # type: ignore[attr-defined]
        pg.on("response", lambda r: answered.append(r.url))  # type: ignore[attr-defined]
        pg.goto(f"{url}/_stcore/health")  # type: ignore[attr-defined]
        names = ["http://example.invalid/tracker.png", "http://93.184.216.34/pixel.png"]
        pg.set_content("".join(f'<img src="{n}">' for n in names))  # type: ignore[attr-defined]
        pg.wait_for_load_state("load")  # type: ignore[attr-defined]
        assert sorted(outside) == sorted(names), outside
        # Refused by the dead proxy (not merely unresolved: this machine may have no network at all).
        assert sorted(failed) == sorted(f"{n} net::ERR_PROXY_CONNECTION_FAILED" for n in names), failed
        assert f"{url}/_stcore/health" in answered and not set(names) & set(answered), answered


def test_the_browser_runs_no_page_but_the_tests_own(served: Served, shared_chromium) -> None:
    """The launch flags leave Chromium no page of its own to draw beside the app (its address bar's popup is
    preloaded in every window otherwise): every target the browser holds is the test's page."""
    with browser_page(browser=shared_chromium) as pg:
        pg.goto(f"{served.url}/_stcore/health")  # type: ignore[attr-defined]
        cdp = shared_chromium.new_browser_cdp_session()  # type: ignore[attr-defined]
        try:
            targets = cdp.send("Target.getTargets")["targetInfos"]
        finally:
            cdp.detach()
    kinds = sorted((t["type"], t["url"]) for t in targets)
    assert kinds == [("page", f"{served.url}/_stcore/health")], kinds


def test_offline_and_no_developer_toolbar(page) -> None:
    assert page.get_by_role("button", name="Deploy").count() == 0
    page.locator('[data-testid="stMainMenu"]').click()  # the viewer's menu: no developer entries
    page.wait_for_timeout(800)
    assert page.get_by_text("Clear cache").count() == 0
    page.keyboard.press("Escape")
    icon = page.locator("link[rel~='icon']").first.get_attribute("href")
    assert icon and not icon.startswith("http") or "127.0.0.1" in icon, icon


def test_sidebar_model_and_dataset_both_stick_twice_in_a_row(page) -> None:
    sidebar = page.locator('[data-testid="stSidebar"]')
    select(page, "Model", "demo:sharp")
    assert "demo:sharp" in shown(page, "Model")
    assert "Preprocessing of demo:sharp" in sidebar.inner_text()
    select(page, "Model", "demo:blurred")
    assert "demo:blurred" in shown(page, "Model")
    assert "Preprocessing of demo:blurred" in sidebar.inner_text()
    select(page, "Dataset", "demo:val")
    assert "demo:val" in shown(page, "Dataset")
    select(page, "Dataset", "demo:test")
    assert "demo:test" in shown(page, "Dataset")
    page.get_by_text("demo:test: 798 images").first.wait_for()


@pytest.mark.opens("profiles", "Class profiles")
def test_class_profiles_all_classes_then_one_class_twice(page) -> None:
    page.get_by_text("images per class").first.wait_for()  # the all-classes view (Fig. 3) comes first
    page.get_by_text("One class, and its images").click()
    wait_until_idle(page)
    select(page, "Class", "severity 3")
    page.get_by_text("severity 3: ").first.wait_for()
    select(page, "Class", "severity 4")
    assert "severity 4" in shown(page, "Class")
    page.get_by_text("severity 4: ").first.wait_for()


@pytest.mark.opens("triage", "Triage")
def test_triage_filters_queue_rows_notes_and_reviewer(page, served: Served) -> None:
    page.get_by_label("Your name").fill("Dr. Browser")
    page.get_by_role("button", name="Start reviewing").click()
    page.get_by_role("button", name="Label error (1)").wait_for()
    wait_until_idle(page)
    # the verdict filter, twice in a row
    select(page, "Verdict", "unreviewed")
    assert "unreviewed" in shown(page, "Verdict")
    select(page, "Verdict", "all")
    assert "all" in shown(page, "Verdict")
    # the class filter, twice in a row: both choices stay
    select(page, "Classes (label)", "severity 2", where="stMultiSelect")
    select(page, "Classes (label)", "severity 3", where="stMultiSelect")
    chips = shown(page, "Classes (label)", where="stMultiSelect")
    assert "severity 2" in chips and "severity 3" in chips, chips
    # open the third row of the queue by clicking it
    grid = page.locator('[data-testid="stDataFrame"]').first
    grid.evaluate("e => e.scrollIntoView({block: 'center'})")
    page.wait_for_timeout(300)
    box = grid.bounding_box()
    x, y = box["x"] + 17, box["y"] + 35 * 3 + 17  # the third row's marker (rows and header are 35 px)
    page.mouse.move(x, y)  # the grid draws its row markers on hover
    page.wait_for_timeout(300)
    page.mouse.click(x, y)
    page.locator("h3", has_text="3 of ").wait_for()
    wait_until_idle(page)
    settled(page.get_by_label("Note (optional)"))
    position, index = heading_index(page)
    assert position == 3, position
    # a verdict with a note; back to the image: the note is shown
    page.get_by_label("Note (optional)").fill("microaneurysms visible")
    page.get_by_role("button", name="Label error (1)").click()
    page.get_by_text("Saved: image").wait_for()
    wait_until_idle(page)
    page.get_by_role("button", name="Previous (K)").click()
    page.locator("h3", has_text="3 of ").wait_for()
    wait_until_idle(page)
    settled(page.get_by_label("Note (optional)"))
    assert heading_index(page) == (3, index)
    assert page.get_by_label("Note (optional)").input_value() == "microaneurysms visible"
    # a reload keeps the reviewer
    page.reload()
    wait_until_idle(page)
    go(page, "Triage")
    assert page.get_by_label("Your name").count() == 0
    page.get_by_role("button", name="Label error (1)").wait_for()
    # a filter that matches nothing keeps the export
    select(page, "Verdict", "custom")
    page.get_by_text("No image matches these filters").wait_for()
    assert page.get_by_role("button", name="Export verdicts (CSV)").count() == 1
    # after a restart of the server the verdict and its note are there
    served.restart()
    page.goto(served.url)
    wait_until_idle(page)
    go(page, "Store & runs")
    table = page.locator('[data-testid="stDataFrame"]', has_text="reviewer").first
    table.wait_for()
    csv = _download(page, "Export (CSV)")
    assert f",{index},label error,microaneurysms visible,Dr. Browser," in csv, csv[-500:]


def _download(page: object, name: str) -> str:
    with page.expect_download() as info:  # type: ignore[attr-defined]
        page.get_by_role("button", name=name).click()  # type: ignore[attr-defined]
    return Path(info.value.path()).read_text()


@pytest.mark.opens("store", "Store & runs")
def test_report_downloads_twice(page) -> None:
    page.get_by_role("button", name="Build the report").click()
    page.get_by_role("button", name="Download the report (HTML)").wait_for()
    wait_until_idle(page)
    first = _download(page, "Download the report (HTML)")
    wait_until_idle(page)
    second = _download(page, "Download the report (HTML)")
    assert first == second and "<h1>Review of" in first


@pytest.mark.opens("upload", "Your model & data")
def test_upload_stays_after_reload_and_can_be_removed(page) -> None:
    form = page.locator('[data-testid="stForm"]', has_text="Add the dataset")
    attach(
        form,
        [{"name": "odd.zip", "mimeType": "application/zip", "buffer": dataset_zip([MARKDOWN_CLASS, "b"])}],
    )
    page.get_by_role("button", name="Add the dataset").click()
    page.get_by_text("it is now the current dataset").wait_for()
    wait_until_idle(page)
    assert "odd.zip (uploaded)" in shown(page, "Dataset")  # the sidebar follows at once
    page.reload()
    wait_until_idle(page)
    go(page, "Your model & data")
    page.get_by_text("dataset: odd.zip (uploaded)").first.wait_for()  # the page's list, once it has drawn
    assert page.get_by_text("dataset: odd.zip (uploaded)").count() == 1
    select(page, "Dataset", "odd.zip (uploaded)")  # offered again after the reload
    assert page.locator("img[src*='example.invalid']").count() == 0  # the class name is text, not an image
    go(page, "Your model & data")
    page.get_by_role("button", name="Remove").first.click()
    page.get_by_text("Removed odd.zip").wait_for()
    wait_until_idle(page)
    assert "demo:test" in shown(page, "Dataset")
    page.locator('[data-testid="stSelectbox"]', has_text="Dataset").first.locator(
        '[role="combobox"], input'
    ).first.click()
    assert page.get_by_role("option", name="odd.zip (uploaded)").count() == 0
    page.keyboard.press("Escape")
