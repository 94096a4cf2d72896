"""Triage verdicts: history kept, the latest one current, exports, validation; prune never touches them."""

from __future__ import annotations

import csv
import io
import json
import os
import time
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import IntegrityError

from essence.core.analyses.profiles import class_profiles
from essence.core.base.errors import SpecError
from essence.storage import VERDICTS, ProfileKey, Store
from essence.storage.matrices import ORPHAN_GRACE_S


def test_history_is_kept_and_the_latest_is_current(store_url):
    with Store.open(store_url) as store:
        store.record_verdict("ds1", 7, "fine", reviewer="ana")
        store.record_verdict("ds1", 7, "label error", note="it is class 3", reviewer="ben")
        store.record_verdict("ds1", 9, "ambiguous", reviewer="ana")
        store.record_verdict("ds2", 7, "model error", reviewer="ana")  # another dataset, same index
        latest = store.latest_verdicts("ds1")
        history = store.verdict_history("ds1", 7)
    assert set(latest) == {7, 9}
    assert (latest[7].verdict, latest[7].note, latest[7].reviewer) == ("label error", "it is class 3", "ben")
    assert [v.verdict for v in history] == ["fine", "label error"]
    assert history[0].created_at <= history[1].created_at and history[0].created_at.tzinfo is not None


def test_every_verdict_kind_and_custom_needs_a_note(store_url):
    with Store.open(store_url) as store:
        for i, v in enumerate(VERDICTS):
            store.record_verdict("ds", i, v, note="a note" if v == "custom" else "")
        with pytest.raises(SpecError, match="custom verdict needs a note"):
            store.record_verdict("ds", 0, "custom", note="   ")
        with pytest.raises(SpecError, match="'wrong'.*label error"):
            store.record_verdict("ds", 0, "wrong")
        with pytest.raises(SpecError, match="non-negative"):
            store.record_verdict("ds", -1, "fine")
        assert {v.verdict for v in store.latest_verdicts("ds").values()} == set(VERDICTS)


def test_database_refuses_an_unknown_verdict_too(store_url):
    """The CHECK constraint holds even for writers that bypass the API."""
    with Store.open(store_url) as store, pytest.raises(IntegrityError), store._engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO verdicts (dataset_fp, instance_id, verdict, note, reviewer, created_at) "
                "VALUES ('ds', 1, 'maybe', '', '', CURRENT_TIMESTAMP)"
            )
        )


def test_exports_csv_and_json_hold_the_full_history(store_url):
    with Store.open(store_url) as store:
        store.record_verdict("ds", 3, "fine", reviewer="ana")
        store.record_verdict("ds", 3, "custom", note='says "maybe", twice', reviewer="ben")
        store.record_verdict("ds", 4, "model error", reviewer="ana")
        as_csv = store.export_verdicts("csv")
        as_json = json.loads(store.export_verdicts("json"))
        with pytest.raises(SpecError, match="csv or json"):
            store.export_verdicts("xml")  # type: ignore[arg-type]
    rows = list(csv.DictReader(io.StringIO(as_csv)))
    assert [(r["instance_id"], r["verdict"], r["latest"]) for r in rows] == [
        ("3", "fine", "False"),
        ("3", "custom", "True"),
        ("4", "model error", "True"),
    ]
    assert rows[1]["note"] == 'says "maybe", twice' and rows[0]["reviewer"] == "ana"
    assert [v["verdict"] for v in as_json["verdicts"]] == ["fine", "custom", "model error"]
    assert as_json["verdicts"][1]["latest"] and not as_json["verdicts"][0]["latest"]
    assert datetime.fromisoformat(as_json["verdicts"][0]["created_at"]).tzinfo is not None


def test_exports_mark_every_reviewer_s_latest_verdict_per_image(store_url):
    with Store.open(store_url) as store:
        store.record_verdict("ds", 3, "fine", reviewer="ana")
        store.record_verdict("ds", 3, "label error", reviewer="ana")  # ana's change of mind
        store.record_verdict("ds", 3, "model error", reviewer="ben")  # newest of all on image 3
        store.record_verdict("ds", 4, "fine", reviewer="ben")
        rows = list(csv.DictReader(io.StringIO(store.export_verdicts("csv"))))
        as_json = json.loads(store.export_verdicts("json"))["verdicts"]
    mine = [(r["instance_id"], r["reviewer"], r["verdict"]) for r in rows if r["reviewer_latest"] == "True"]
    assert mine == [("3", "ana", "label error"), ("3", "ben", "model error"), ("4", "ben", "fine")]
    assert [r["latest"] for r in rows] == [
        "False",
        "False",
        "True",
        "True",
    ]  # the newest of anyone, as before
    assert [v["reviewer_latest"] for v in as_json] == [False, True, True, True]


def _age_profiles(store: Store, days: float) -> None:
    with store._engine.begin() as conn:
        conn.execute(
            text("UPDATE profiles SET created_at = :t"), {"t": datetime.now(UTC) - timedelta(days=days)}
        )


def test_prune_by_age_and_model_never_removes_verdicts(store_url, model, data, make_model):
    other = make_model(seed=5)
    with Store.open(store_url) as store:
        for m in (model, other):
            key = ProfileKey.for_profiles(m, data, "conv", "channel", "logit")
            store.put_profiles(key, class_profiles(m.module, data, "conv", keep_instances=True))
        store.record_verdict(data.fingerprint, 1, "fine")
        _age_profiles(store, 10)
        dry = store.prune(older_than_days=5, dry_run=True)
        assert (dry.profiles, dry.matrices, dry.dry_run) == (2, 8, True)
        assert store.info().profiles == 2  # nothing removed by a dry run
        assert store.prune(older_than_days=30).profiles == 0
        by_model = store.prune(model_fp=other.fingerprint)
        assert (by_model.profiles, by_model.matrices) == (1, 4)
        assert (
            store.get_profiles(ProfileKey.for_profiles(model, data, "conv", "channel", "logit")) is not None
        )
        assert store.prune().profiles == 0  # no filter: no profile removed
        assert store.prune(older_than_days=5).profiles == 1
        info = store.info()
    assert (info.profiles, info.matrices, info.verdicts) == (0, 0, 1)
    assert info.runs == 2  # the record of what was computed stays


def test_prune_removes_unreferenced_matrix_files_after_a_grace_period(tmp_path, model, data):
    path = tmp_path / "essence.sqlite"
    blobs = tmp_path / "essence.blobs"
    with Store.open(path) as store:
        key = ProfileKey.for_profiles(model, data, "conv", "channel", "logit")
        store.put_profiles(key, class_profiles(model.module, data, "conv", keep_instances=True))
        kept = sorted(blobs.glob("??/*"))
        orphan = blobs / "ab" / ("ab" + "0" * 62)  # e.g. left by a process killed before its commit
        orphan.parent.mkdir(exist_ok=True)
        orphan.write_bytes(b"x" * 100)
        assert store.prune().blobs == 0  # young: may belong to a write still in progress
        old = time.time() - ORPHAN_GRACE_S - 60
        os.utime(orphan, (old, old))
        for p in kept:
            os.utime(p, (old, old))
        report = store.prune()
        assert (report.blobs, report.bytes_freed) == (1, 100)
        assert not orphan.exists() and all(p.exists() for p in kept)
        assert store.get_profiles(key, with_instances=True) is not None
