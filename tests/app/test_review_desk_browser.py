"""The review desk's defects that only a real browser shows: a click on a queue cell (not the row marker) opens the
row, and one press of Back leaves a page.

Like ``test_browser.py`` (whose helpers this uses): one ``streamlit run`` server for the module on a copy of the
warm store, Debian's Chromium driven by Playwright, every request outside 127.0.0.1 refused.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_browser import (
    CHROMIUM,
    Served,
    browser_page,
    go,
    heading_index,
    settled,
    wait_until_idle,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

OPENS_MS = 30_000  # a row opens within a rerun: far less than a page's first computation
ROUNDS = 4


@pytest.fixture(scope="module")
def desk(warm_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (make browser-deps)")
    home = tmp_path_factory.mktemp("desk_home")
    shutil.copytree(warm_home, home, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*-wal", "*-shm"))
    server = Served(home)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def page(desk: Served) -> Iterator[object]:
    """A fresh browser session with a reviewer named on Triage; no request leaves 127.0.0.1, no error box."""
    outside: list[str] = []
    with browser_page(outside=outside) as pg:
        pg.goto(desk.url)  # type: ignore[attr-defined]
        pg.get_by_text("Classes never predicted").wait_for()  # type: ignore[attr-defined]
        wait_until_idle(pg)
        go(pg, "Triage")
        pg.get_by_label("Your name").fill("Dr. Desk")  # type: ignore[attr-defined]
        pg.get_by_role("button", name="Start reviewing").click()  # type: ignore[attr-defined]
        pg.get_by_role("button", name="Label error (1)").wait_for()  # type: ignore[attr-defined]
        wait_until_idle(pg)
        yield pg
        assert pg.locator('[data-testid="stException"]').count() == 0  # type: ignore[attr-defined]
    assert not outside, f"requests left 127.0.0.1: {outside}"


def _title(page: object) -> str:
    return page.locator("h1").first.inner_text()  # type: ignore[attr-defined]


def test_a_click_on_a_cell_of_the_queue_opens_its_row(page) -> None:
    grid = page.locator('[data-testid="stDataFrame"]').first
    grid.evaluate("e => e.scrollIntoView({block: 'center'})")
    page.wait_for_timeout(300)
    box = grid.bounding_box()
    # The third row's "label" cell, well right of the row marker (rows and header are 35 px high).
    x, y = box["x"] + 200, box["y"] + 35 * 3 + 17
    page.mouse.click(x, y)
    page.locator("h3", has_text="3 of ").wait_for(timeout=OPENS_MS)
    wait_until_idle(page)
    settled(page.get_by_label("Note (optional)"))
    assert heading_index(page)[0] == 3


def test_one_press_of_back_leaves_class_profiles_and_explain(page) -> None:
    assert "reviewer=" in page.url
    # A page that wrote the address after the page change added a second history entry, or not, as the
    # browser's rendering and the server's messages raced: a few rounds each.
    for title in ("Class profiles", "Explain an image") * ROUNDS:
        go(page, "Overview")
        go(page, title)
        page.locator("h1", has_text=title).wait_for()
        wait_until_idle(page)
        page.wait_for_timeout(1000)  # anything the page would still write into the address, written
        assert "reviewer=" in page.url, page.url  # the name stays in the address on every page
        page.go_back()
        page.locator("h1", has_text="Overview").wait_for(timeout=OPENS_MS)
        wait_until_idle(page)
        assert _title(page) == "Overview"
        assert "reviewer=" in page.url, page.url
    page.reload()  # the name is still remembered after a reload on another page than Triage
    wait_until_idle(page)
    go(page, "Triage")
    assert page.get_by_label("Your name").count() == 0
    page.get_by_role("button", name="Label error (1)").wait_for()
