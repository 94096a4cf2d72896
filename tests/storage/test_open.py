"""Opening a store: where it lives, its SQLite settings, and bad locations refused with nothing changed."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from sqlalchemy import text

from essence.core.base.errors import StoreError
from essence.storage import Store, default_store_path, head_revision


def _snapshot(path: Path) -> tuple[bytes, list[str]]:
    return path.read_bytes(), sorted(p.name for p in path.parent.iterdir())


def test_default_location_is_essence_home(tmp_path, monkeypatch):
    monkeypatch.setenv("ESSENCE_HOME", str(tmp_path / "home"))
    assert default_store_path() == tmp_path / "home" / "essence.sqlite"
    with Store.open() as store:
        assert store.path == tmp_path / "home" / "essence.sqlite" and store.path.is_file()
        assert store.schema_version == head_revision()
    monkeypatch.delenv("ESSENCE_HOME")
    import platformdirs

    assert default_store_path() == Path(platformdirs.user_data_dir("essence")) / "essence.sqlite"


def test_a_folder_or_a_sqlite_url_names_the_same_store(tmp_path):
    with Store.open(tmp_path) as a:
        a.record_verdict("ds", 1, "fine")
    with Store.open(f"sqlite:///{tmp_path / 'essence.sqlite'}") as b:
        assert set(b.latest_verdicts("ds")) == {1}


def test_sqlite_runs_in_wal_mode_with_foreign_keys_and_a_busy_timeout(tmp_path):
    with Store.open(tmp_path / "s.sqlite", timeout=2.5) as store, store._engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 2500
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == 2  # FULL


def test_a_file_that_is_not_a_database_is_refused_untouched(tmp_path):
    path = tmp_path / "essence.sqlite"
    path.write_bytes(b"patient notes, not a database\n" * 100)
    before = _snapshot(path)
    with pytest.raises(StoreError, match=r"essence\.sqlite is not an SQLite database.*nothing was changed"):
        Store.open(path)
    assert _snapshot(path) == before


def test_another_programs_database_is_refused_untouched(tmp_path):
    path = tmp_path / "other.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, total REAL)")
    conn.execute("INSERT INTO invoices VALUES (1, 9.5)")
    conn.commit()
    conn.close()
    before = _snapshot(path)
    with pytest.raises(
        StoreError, match=r"other\.db is an SQLite database but not an Essence store.*invoices"
    ):
        Store.open(path)
    assert _snapshot(path) == before


def test_a_newer_schema_is_refused_untouched(tmp_path):
    path = tmp_path / "essence.sqlite"
    with Store.open(path) as store:
        store.record_verdict("ds", 1, "fine")
    conn = sqlite3.connect(path)
    conn.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    conn.commit()
    conn.close()
    before = _snapshot(path)
    with pytest.raises(StoreError, match=r"essence\.sqlite was written by a newer version.*upgrade Essence"):
        Store.open(path)
    assert _snapshot(path) == before


def test_a_newer_schema_is_refused_on_postgresql(pg_schema_url):
    url = pg_schema_url()
    with Store.open(url) as store:
        store.record_verdict("ds", 1, "fine")
        with store._engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '9999_from_the_future'"))
    with pytest.raises(StoreError, match="newer version of Essence.*upgrade Essence"):
        Store.open(url)
    from sqlalchemy import create_engine

    engine = create_engine(url)
    with engine.connect() as conn:
        assert (
            conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "9999_from_the_future"
        )
        assert conn.execute(text("SELECT count(*) FROM verdicts")).scalar() == 1
    engine.dispose()


READ_ONLY_CHILD = """
import sys
from essence.core.base.errors import StoreError
from essence.storage import Store
try:
    Store.open(sys.argv[1])
except StoreError as exc:
    print("STORE-ERROR", exc)
else:
    print("OPENED")
"""


def _run_unprivileged(path: Path) -> str:
    """Open the store in a real process that cannot write there.

    As root, file permissions do not bind; the child then runs without the capabilities that override them
    (``setpriv`` drops them from its bounding set at exec), so the read-only folder is read-only to it.
    """
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        assert setpriv, "running as root, this test needs util-linux's setpriv to drop CAP_DAC_OVERRIDE"
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search", "--"]
    out = subprocess.run(
        [*prefix, sys.executable, "-c", READ_ONLY_CHILD, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.fixture
def shared_dir():
    """A folder an unprivileged user can reach (pytest's tmp_path is private to its owner)."""
    folder = Path(tempfile.mkdtemp(prefix="essence-ro-"))
    folder.chmod(0o755)
    yield folder
    for p in sorted(folder.rglob("*"), reverse=True):
        p.chmod(0o700)
    subprocess.run(["rm", "-rf", str(folder)], check=False)


@pytest.mark.slow  # a fresh interpreter as another user
def test_a_read_only_location_is_refused_untouched(shared_dir):
    folder = shared_dir / "ro"
    folder.mkdir()
    path = folder / "essence.sqlite"
    with Store.open(path) as store:
        store.record_verdict("ds", 1, "fine")
    for p in folder.iterdir():
        p.chmod(0o444)
    folder.chmod(0o555)
    before = _snapshot(path)
    out = _run_unprivileged(path)
    assert out.startswith("STORE-ERROR") and str(path) in out and "read-only location" in out, out
    assert "--store" in out
    assert _snapshot(path) == before
    # A new store in a folder that cannot be written is refused as clearly.
    out = _run_unprivileged(folder / "sub" / "new.sqlite")
    assert out.startswith("STORE-ERROR") and "cannot create the store's folder" in out, out


def test_a_lock_held_past_the_timeout_is_reported(tmp_path):
    path = tmp_path / "essence.sqlite"
    Store.open(path).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another process writing and not finishing
    holder.execute(
        "INSERT INTO verdicts (dataset_fp, instance_id, verdict, note, reviewer, created_at) "
        "VALUES ('ds', 5, 'fine', '', '', '2025-01-01 00:00:00')"
    )
    try:
        with Store.open(path, timeout=0.3) as store:  # opening a current store needs no write lock
            assert store.latest_verdicts("ds") == {}  # readers are not blocked (WAL)
            start = time.perf_counter()
            with pytest.raises(
                StoreError, match=r"essence\.sqlite is locked by another process for more than 0\.3 s"
            ):
                store.record_verdict("ds", 1, "fine")
            assert time.perf_counter() - start >= 0.25  # it did wait
    finally:
        holder.execute("COMMIT")
        holder.close()
    with Store.open(path) as store:
        store.record_verdict("ds", 1, "fine")
        assert set(store.latest_verdicts("ds")) == {1, 5}


def test_bad_urls_and_unreachable_servers_are_store_errors(tmp_path, monkeypatch):
    with pytest.raises(StoreError, match="not a database URL"):
        Store.open("postgresql+psycopg://user@host:notaport/db")
    with pytest.raises(StoreError, match="cannot use the store URL"):
        Store.open("nosuchdialect://x/y")
    missing = tmp_path / "no-server-here"
    with pytest.raises(StoreError, match="cannot use the database.*server is running"):
        Store.open(f"postgresql+psycopg://nobody@/essence?host={missing}&port=5999", timeout=1)
    monkeypatch.setenv("ESSENCE_STORE_TIMEOUT", "soon")
    with pytest.raises(StoreError, match="ESSENCE_STORE_TIMEOUT='soon'"):
        Store.open(tmp_path)


@pytest.mark.slow  # a fresh interpreter
def test_the_store_never_imports_streamlit_or_the_app():
    code = "import sys, essence.storage; print(sorted(m for m in sys.modules if m.startswith(('streamlit', 'essence.app'))))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
