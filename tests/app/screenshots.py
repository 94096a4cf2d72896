"""Screenshots of every page of the app for the docs (``docs/img/*.png``), on the bundled demo.

Run: ``.venv/bin/python tests/app/screenshots.py`` (needs Debian's chromium: ``make browser-deps``). It serves the
app with a fresh store in a temporary ``ESSENCE_HOME``, walks the recipe in a real browser and saves one PNG per
page.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_browser import browser_page, serve_app, wait_until_idle  # noqa: E402

OUT = Path(__file__).resolve().parents[2] / "docs" / "img"
PAGES = [
    ("Overview", "overview"),
    ("Class profiles", "profiles"),
    ("Triage", "triage"),
    ("Experts & diagnosis", "experts"),
    ("Compare models", "compare"),
    ("Explain an image", "explain"),
    ("Your model & data", "upload"),
    ("Store & runs", "store"),
]


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory() as home,
        serve_app(Path(home)) as url,
        browser_page(1400, 1000) as page,
    ):
        page.goto(url)
        wait_until_idle(page)
        for link, name in PAGES:
            page.locator('[data-testid="stSidebarNavLink"]', has_text=link).click()
            wait_until_idle(page)
            if name == "triage" and page.get_by_label("Your name").count():
                page.get_by_label("Your name").fill("Dr. Demo")
                page.get_by_role("button", name="Start reviewing").click()
                wait_until_idle(page)
            page.wait_for_timeout(1500)  # let Vega draw the charts
            path = OUT / f"{name}.png"
            page.screenshot(path=str(path), full_page=True)
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
