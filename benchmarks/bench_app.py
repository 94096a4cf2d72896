"""How long each page of the app takes to render once the caches are warm (AppTest, the bundled demo).

Run: ``.venv/bin/python benchmarks/bench_app.py [--repeats 5]``. Each page is rendered once to warm the caches
(profiles computed and stored, the diagnosis and comparison remembered), then ``repeats`` more times; the
median and the worst of those are reported per page, in seconds of wall time. Also reported: the first (cold)
render of each page in a fresh process-wide cache with a store that already holds the profiles (a restarted
server: the reload case).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

ENTRY = Path(__file__).resolve().parents[1] / "app" / "main.py"
PAGES = [
    "views/overview.py",
    "views/profiles.py",
    "views/triage.py",
    "views/experts.py",
    "views/compare.py",
    "views/explain.py",
    "views/store.py",
    "views/upload.py",
]


def render(page: str):  # noqa: ANN201 - an AppTest
    from streamlit.testing.v1 import AppTest

    from essence.app.state import STATE_KEY, RecipeState

    at = AppTest.from_file(str(ENTRY), default_timeout=600)
    at.session_state[STATE_KEY] = RecipeState(reviewer="bench")
    at.switch_page(page)
    start = time.perf_counter()
    at.run()
    seconds = time.perf_counter() - start
    if at.exception:
        raise RuntimeError(f"{page}: {at.exception[0].value}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    import streamlit as st

    with tempfile.TemporaryDirectory() as home:
        os.environ["ESSENCE_HOME"] = home
        cold = {p: render(p) for p in PAGES}
        warm = {p: [render(p) for _ in range(args.repeats)] for p in PAGES}
        st.cache_resource.clear()  # a restarted server: the store holds the profiles, memory holds nothing
        reload = {p: render(p) for p in PAGES}
    print(f"{'page':24} {'first':>8} {'reload':>8} {'warm median':>12} {'warm max':>9}  (seconds)")
    for p in PAGES:
        name = Path(p).stem
        print(
            f"{name:24} {cold[p]:8.2f} {reload[p]:8.2f} {statistics.median(warm[p]):12.3f} {max(warm[p]):9.3f}"
        )


if __name__ == "__main__":
    main()
