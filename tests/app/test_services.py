"""The app's services are plain Python: no Streamlit, no CLI; their shared resources are swapped in by the cache."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

from essence.app import shared
from essence.app.shared import ModelLocks, Results, Shared


@pytest.mark.slow  # a fresh interpreter
def test_services_load_neither_streamlit_nor_the_cli() -> None:
    code = (
        "import sys\n"
        "import essence.app.services, essence.app.evaluation, essence.app.uploads, essence.app.report\n"
        "import essence.app.limits, essence.app.state, essence.app.charts\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('streamlit', 'typer') "
        "or m.startswith('essence.cli'))\n"
        "print(bad)\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def test_results_keep_the_most_recently_used() -> None:
    table = Results(size=2)
    table.put("a", 1)
    table.put("b", 2)
    assert table.get("a") == 1  # "a" is now the most recent
    table.put("c", 3)
    assert table.get("b") is None and table.get("a") == 1 and table.get("c") == 3


class _Model:
    def __init__(self, fingerprint: str) -> None:
        self.fingerprint = fingerprint


def test_models_are_locked_in_fingerprint_order() -> None:
    locks = ModelLocks()
    taken: list[str] = []
    real = locks.lock

    def recording(fp: str) -> threading.RLock:
        taken.append(fp)
        return real(fp)

    locks.lock = recording  # type: ignore[method-assign]
    with locks.holding(_Model("b"), _Model("a"), _Model("b")):  # type: ignore[arg-type]
        assert not _free_elsewhere(real("a")) and not _free_elsewhere(real("b"))
    assert taken == ["a", "b"]  # sorted (no deadlock between sessions), each once
    assert _free_elsewhere(real("a")) and _free_elsewhere(real("b"))


def _free_elsewhere(lock: threading.RLock) -> bool:
    """Whether another thread (another browser session) could take ``lock`` now."""
    got: list[bool] = []

    def take() -> None:
        ok = lock.acquire(blocking=False)
        got.append(ok)
        if ok:
            lock.release()

    worker = threading.Thread(target=take)
    worker.start()
    worker.join()
    return got == [True]


def test_remembered_computes_once_through_the_provided_resources() -> None:
    calls = []
    mine = Shared(store=None, results=Results(), locks=ModelLocks())  # type: ignore[arg-type]
    shared.provide(lambda: mine)
    try:
        for _ in range(3):
            assert shared.remembered("k", lambda: calls.append(1) or "v") == "v"
        assert calls == [1]
        assert mine.results.get("k") == "v"
    finally:
        shared.provide(None)
    assert shared.shared().results is not mine.results


def test_the_cache_module_hands_streamlit_held_resources_to_the_services(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import streamlit as st

    from essence.app import cache

    monkeypatch.setenv("ESSENCE_HOME", str(tmp_path))
    st.cache_resource.clear()
    cache.install()
    try:
        first = shared.shared()
        assert first.results is shared.shared().results  # one table per process
        assert first.store.path == tmp_path / "essence.sqlite"
        shared.remembered("k", lambda: 1)
        st.cache_resource.clear()  # what the app tests' fixture does between tests
        assert shared.shared().results.get("k") is None
    finally:
        shared.provide(None)
        st.cache_resource.clear()
