"""Schema migrations: a store made by an older version is upgraded in place with its data kept, and the
ORM models agree with the migrated schema."""

from __future__ import annotations

import json

import torch
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text

from essence.core.analyses.profiles import class_profiles
from essence.storage import ProfileKey, Store, head_revision
from essence.storage.connect import MIGRATIONS, resolve
from essence.storage.matrices import to_bytes
from essence.storage.models import Base


def _engine_at(url: str, revision: str):
    location = resolve(url)
    if location.path is not None:
        location.path.parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(location.url)
    with engine.begin() as conn:
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS))
        config.attributes["connection"] = conn
        command.upgrade(config, revision)
    return engine


def test_a_store_of_the_first_schema_is_upgraded_with_its_data(store_url, model, data):
    engine = _engine_at(store_url, "0001")  # what the first release created
    profiles = class_profiles(model.module, data, "conv")
    key = ProfileKey.for_profiles(model, data, "conv", "channel", "logit")
    sum_b, dtype, _ = to_bytes(profiles.sums.sum)
    with engine.begin() as conn:
        run_id = conn.execute(
            text(
                "INSERT INTO runs (created_at, kind, description, model_fp, dataset_fp, layer, device, seconds, "
                "essence_version) VALUES (CURRENT_TIMESTAMP, 'profiles', 'old run', :m, :d, 'conv', 'cpu', 1.5, "
                "'0.0.1') RETURNING id"
            ),
            {"m": key.model_fp, "d": key.dataset_fp},
        ).scalar()
        conn.execute(
            text(
                "INSERT INTO profiles (key_digest, model_fp, dataset_fp, preprocessing_fp, layer, granularity, "
                "quantity, distribution, engine_version, class_names, unit_shape, num_groups, num_units, dtype, "
                "sum, sumsq, counts, created_at, run_id) VALUES (:k, :m, :d, :p, 'conv', 'channel', "
                "'logit[label]', 'class', :v, :names, :shape, 3, 5, :dtype, :s, :sq, :c, CURRENT_TIMESTAMP, :r)"
            ),
            {
                "k": key.digest(),
                "m": key.model_fp,
                "d": key.dataset_fp,
                "p": key.preprocessing_fp,
                "v": key.engine_version,
                "names": json.dumps(profiles.class_names),
                "shape": json.dumps(list(profiles.unit_shape)),
                "dtype": dtype,
                "s": sum_b,
                "sq": to_bytes(profiles.sums.sumsq)[0],
                "c": to_bytes(profiles.sums.count)[0],
                "r": run_id,
            },
        )
        for i, verdict in enumerate(["fine", "label error", "ambiguous"]):
            conn.execute(
                text(
                    "INSERT INTO verdicts (dataset_fp, instance_id, verdict, note, reviewer, created_at) "
                    "VALUES (:d, :i, :v, 'old note', 'ana', CURRENT_TIMESTAMP)"
                ),
                {"d": key.dataset_fp, "i": i, "v": verdict},
            )
    with engine.connect() as conn:
        assert MigrationContext.configure(conn).get_current_revision() == "0001"
    engine.dispose()

    with Store.open(store_url) as store:
        assert store.schema_version == head_revision() != "0001"
        got = store.get_profiles(key)
        assert got is not None and torch.equal(got.sums.sum, profiles.sums.sum)
        assert torch.equal(got.mean, profiles.mean)
        latest = store.latest_verdicts(key.dataset_fp)
        assert {i: v.verdict for i, v in latest.items()} == {0: "fine", 1: "label error", 2: "ambiguous"}
        assert all(v.note == "old note" and v.reviewer == "ana" for v in latest.values())
        (run,) = store.runs()
        assert (run.description, run.seconds, run.command) == ("old run", 1.5, "")
        # The new schema's features work on the upgraded store.
        store.put_profiles(key, class_profiles(model.module, data, "conv", keep_instances=True))
        assert store.get_profiles(key, with_instances=True) is not None


def test_models_match_the_migrated_schema(store_url):
    Store.open(store_url).close()
    engine = create_engine(resolve(store_url).url)
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    engine.dispose()
    assert diffs == []


def test_reopening_a_current_store_changes_nothing(tmp_path):
    path = tmp_path / "essence.sqlite"
    with Store.open(path) as store:
        store.record_verdict("ds", 1, "fine")
    before = path.read_bytes()
    with Store.open(path) as store:
        assert store.schema_version == head_revision()
    assert path.read_bytes() == before
