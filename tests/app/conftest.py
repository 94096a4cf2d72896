"""Fixtures of the app's tests: a fresh store under a temporary ``ESSENCE_HOME``, Streamlit's caches cleared,
and an :class:`AppTest` opened on a page of the app (the bundled demo is what it opens on).

The pages' first render computes the demo's class profiles. That is done once per session, into a warm store
that ``open_app`` copies into each test's home; a test that is about the computation itself (progress,
cancelling, storing) is marked ``cold_store`` and starts from an empty store as before.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

ENTRY = Path(__file__).resolve().parents[2] / "app" / "main.py"
PAGES = {
    "overview": "views/overview.py",
    "profiles": "views/profiles.py",
    "triage": "views/triage.py",
    "experts": "views/experts.py",
    "compare": "views/compare.py",
    "explain": "views/explain.py",
    "upload": "views/upload.py",
    "store": "views/store.py",
}
# The first render computes profiles and the diagnosis on 2 shared CPU cores: allow for it.
RUN_TIMEOUT = 180
# The pages whose first render computes what the store keeps (the blurred model's profiles and diagnosis).
# Not experts or compare: their sweeps and comparisons are not stored, warming on them would only add work.
WARM_PAGES = ("overview", "profiles")


@pytest.fixture
def essence_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private ``ESSENCE_HOME`` (the app's store and uploads) and empty Streamlit caches."""
    monkeypatch.setenv("ESSENCE_HOME", str(tmp_path))
    st.cache_resource.clear()
    st.cache_data.clear()
    yield tmp_path
    st.cache_resource.clear()
    st.cache_data.clear()


@pytest.fixture(scope="session")
def warm_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home whose store holds what the pages of :data:`WARM_PAGES` compute on the demo, built once."""
    home = tmp_path_factory.mktemp("warm_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ESSENCE_HOME", str(home))
        st.cache_resource.clear()
        st.cache_data.clear()
        at = AppTest.from_file(str(ENTRY), default_timeout=RUN_TIMEOUT)
        at.run()
        for page in WARM_PAGES[1:]:
            at.switch_page(PAGES[page])
            at.run()
            assert_clean(at)
        st.cache_resource.clear()
        st.cache_data.clear()
    with sqlite3.connect(home / "essence.sqlite") as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # everything in the database file: copies need no WAL
    return home


@pytest.fixture(scope="module")
def shared_chromium() -> Iterator[object]:
    """One browser for a module's browser tests (``test_browser.chromium``): each test opens a context of its
    own, a fresh session (no cookies, no storage, a new connection to the app), without starting a browser."""
    from test_browser import chromium

    with chromium() as browser:
        yield browser


def copy_store(source: Path, home: Path) -> None:
    """Copy a home's store (the database and its matrix files, not SQLite's scratch files) into ``home``."""
    shutil.copytree(source, home, dirs_exist_ok=True, ignore=shutil.ignore_patterns("*-wal", "*-shm"))


@pytest.fixture
def open_app(essence_home: Path, request: pytest.FixtureRequest) -> Callable[..., AppTest]:
    """``open_app(page=None)``: the app run once on ``page`` (a key of :data:`PAGES`; the Overview by default).

    The store starts warm (a copy of :func:`warm_home`) unless the test is marked ``cold_store``.
    """
    if request.node.get_closest_marker("cold_store") is None:
        copy_store(request.getfixturevalue("warm_home"), essence_home)

    def open_(page: str | None = None) -> AppTest:
        # Opened on the page itself, as a person following a link to it would (the pages register no custom
        # URL path, so the file names the page before the first run): no Overview render first.
        at = AppTest.from_file(str(ENTRY), default_timeout=RUN_TIMEOUT)
        if page is not None and page != "overview":
            at.switch_page(PAGES[page])
        at.run()
        return at

    return open_


def shown_text(at: AppTest) -> str:
    """Everything the page wrote as markdown, captions, titles and messages, joined."""
    parts = []
    for kind in ("title", "subheader", "markdown", "caption", "error", "warning", "info", "success"):
        parts.extend(str(e.value) for e in getattr(at, kind))
    return "\n".join(parts)


@pytest.fixture
def text_of() -> Callable[[AppTest], str]:
    return shown_text


def assert_clean(at: AppTest) -> None:
    """No exception box and no internal-error message."""
    from essence.app.components.boundary import INTERNAL_ERROR

    assert not at.exception, [e.value for e in at.exception]
    internal = [e.value for e in at.error if INTERNAL_ERROR in str(e.value)]
    assert not internal, internal


@pytest.fixture
def clean() -> Callable[[AppTest], None]:
    return assert_clean


@pytest.fixture
def pages() -> dict[str, str]:
    return dict(PAGES)
