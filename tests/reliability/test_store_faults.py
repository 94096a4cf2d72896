"""Faults of the store a hostile or unlucky user finds (issue 15, round two).

What these prove (see docs/reliability.md):

- ``store prune`` racing a write never deletes a matrix file of a profile that is (or is about to be) stored:
  whichever of the two takes SQLite's write lock first, every stored profile loads whole afterwards.
- SQLite URLs in URI form (``sqlite:///file:PATH?uri=true``, percent-encoded) reach the same foreign-database
  check as plain paths; query parameters that change how SQLite opens the file are refused.
- Text that reviewers typed (notes) cannot become a formula in a spreadsheet opening the CSV export.
"""

from __future__ import annotations

import csv
import io
import os
import sqlite3
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from essence.core.analyses.profiles import class_profiles
from essence.core.base.errors import StoreError
from essence.core.inputs.data import ImageData, hash_arrays
from essence.core.inputs.model_fingerprints import model_fingerprint
from essence.core.inputs.models import LoadedModel
from essence.core.inputs.preprocessing import Preprocessing
from essence.storage import Store
from essence.storage.records import ProfileKey

HOUR = 3600.0


def _model() -> LoadedModel:
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(64, 3)).eval()
    return LoadedModel(module, "test:rel", model_fingerprint(module, "test:rel"), class_names=["a", "b", "c"])


def _data() -> ImageData:
    images = np.random.default_rng(1).integers(0, 256, (12, 4, 4, 3), dtype=np.uint8)
    labels = np.arange(12) % 3
    return ImageData(
        "test:rel", labels, ["a", "b", "c"], Preprocessing(), hash_arrays(images, labels), arrays=images
    )


def _profiles(model: LoadedModel, data: ImageData, layer: str):
    return class_profiles(model.module, data, layer, keep_instances=True)


def _age(files: list[Path], seconds: float) -> None:
    then = time.time() - seconds
    for p in files:
        os.utime(p, (then, then))


def _loads_whole(path: Path) -> int:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "matrix ... missing; recomputed" is the failure looked for
        with Store.open(path) as store:
            keys = store.profile_keys()
            for key in keys:
                got = store.get_profiles(key, with_instances=True)
                assert got is not None and got.instances is not None, key
    return len(keys)


def _racing_prune(store: Store, other: Store, *, age_new_files: bool) -> None:
    """Make ``store``'s next write run ``other.prune()`` after its matrix files are written, before its rows."""
    files = store._files
    assert files is not None
    put = files.put
    pruned: list[bool] = []

    def put_then_prune(data: bytes) -> str:
        digest = put(data)
        if not pruned:  # once, after the first file: prune's lock would wait on this writer's afterwards
            pruned.append(True)
            if age_new_files:  # as if the computation between writing a file and committing took hours
                _age([files.path(digest)], 2 * HOUR)
            other.prune()
        return digest

    files.put = put_then_prune  # type: ignore[method-assign]


def test_prune_racing_a_write_that_reuses_an_old_orphan_file(tmp_path: Path) -> None:
    """A pruned profile's old files are unreferenced; a new profile of the same data reuses them by content."""
    model, data, path = _model(), _data(), tmp_path / "essence.sqlite"
    with Store.open(path) as writer, Store.open(path) as pruner:
        first = ProfileKey.for_profiles(model, data, "0", "channel", "logit")
        writer.put_profiles(first, _profiles(model, data, "0"))
        pruner.prune(model_fp=model.fingerprint)  # the profile goes; its files stay (younger than the grace)
        _age(sorted((tmp_path / "essence.blobs").glob("??/*")), 2 * HOUR)
        _racing_prune(writer, pruner, age_new_files=False)
        writer.put_profiles(first, _profiles(model, data, "0"))
    assert _loads_whole(path) == 1


def test_prune_racing_a_write_whose_new_files_look_old(tmp_path: Path) -> None:
    model, data, path = _model(), _data(), tmp_path / "essence.sqlite"
    with Store.open(path) as writer, Store.open(path) as pruner:
        _racing_prune(writer, pruner, age_new_files=True)
        key = ProfileKey.for_profiles(model, data, "0", "channel", "logit")
        writer.put_profiles(key, _profiles(model, data, "0"))
    assert _loads_whole(path) == 1


# ------------------------------------------------------------------------------------- SQLite URLs, URI form


@pytest.fixture
def foreign(tmp_path: Path) -> Path:
    db = tmp_path / "other program.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE patients (id INTEGER PRIMARY KEY, name TEXT)")
    return db


@pytest.mark.parametrize(
    "form",
    [
        "sqlite:///file:{path}?uri=true",
        "sqlite:///file:{quoted}?uri=true",
        "sqlite+pysqlite:///file://localhost{quoted}?uri=true",
        "sqlite:///{path}?uri=true",
    ],
)
def test_sqlite_uri_forms_reach_the_foreign_database_check(foreign: Path, form: str) -> None:
    before = foreign.read_bytes()
    url = form.format(path=foreign, quoted=str(foreign).replace(" ", "%2520"))
    with pytest.raises(StoreError, match="not an Essence store"):
        Store.open(url)
    assert foreign.read_bytes() == before
    with sqlite3.connect(foreign) as conn:
        assert {r[0] for r in conn.execute("SELECT name FROM sqlite_master")} == {"patients"}


@pytest.mark.parametrize("query", ["mode=rwc", "immutable=1", "vfs=unix-none", "nolock=1", "cache=shared"])
def test_sqlite_url_options_that_bypass_the_checks_are_refused(foreign: Path, query: str) -> None:
    before = foreign.read_bytes()
    with pytest.raises(StoreError, match="query"):
        Store.open(f"sqlite:///file:{foreign}?uri=true&{query}")
    assert foreign.read_bytes() == before


def test_a_uri_form_url_of_a_new_store_opens_it_at_that_path(tmp_path: Path) -> None:
    target = tmp_path / "fresh store.sqlite"
    with Store.open(f"sqlite:///file:{str(target).replace(' ', '%2520')}?uri=true") as store:
        assert store.path == target
    assert target.is_file()


# ------------------------------------------------------------------------------------- spreadsheet injection


def test_csv_export_neutralises_formulas(tmp_path: Path) -> None:
    notes = ['=HYPERLINK("http://evil.example","x")', "+1+1", "-2+3", "@SUM(A1)", "\tTAB", "\rCR", "fine"]
    with Store.open(tmp_path / "essence.sqlite") as store:
        for i, note in enumerate(notes):
            store.record_verdict("ds", i, "custom", note=f"{note}", reviewer="=cmd|' /C calc'!A0")
        text = store.export_verdicts("csv")
        as_json = store.export_verdicts("json")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == len(notes)
    for row in rows:
        for name, cell in row.items():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), (name, cell)
    got = {row["note"] for row in rows}
    assert '\'=HYPERLINK("http://evil.example","x")' in got and "fine" in got
    assert all(row["reviewer"] == "'=cmd|' /C calc'!A0" for row in rows)
    assert "=HYPERLINK" in as_json and "'=HYPERLINK" not in as_json  # JSON keeps the text as typed
