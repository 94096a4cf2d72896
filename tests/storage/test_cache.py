"""Cached class profiles: same key → served without running the model; any change → recomputed."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from essence.core.analyses.profiles import ClassProfiles, class_profiles
from essence.core.base.errors import StoreError
from essence.core.engine.sums import InfluenceSums
from essence.core.inputs.data import ImageData, hash_arrays
from essence.core.inputs.model_fingerprints import model_fingerprint
from essence.core.inputs.preprocessing import Preprocessing
from essence.storage import ENGINE_VERSION, ProfileKey, RunInfo, Store


def computer(model, data, layer="conv", granularity="channel", kind="logit", keep=False):
    """A compute callable that counts its calls."""
    calls = []

    def compute() -> ClassProfiles:
        calls.append(1)
        return class_profiles(
            model.module,
            data,
            layer,
            granularity=granularity,
            kind=kind,
            keep_instances=keep,
            class_names=model.class_names,
        )

    compute.calls = calls  # type: ignore[attr-defined]
    return compute


def test_round_trip_is_exact(store_url, model, data):
    profiles = class_profiles(model.module, data, "conv", granularity="neuron")
    key = ProfileKey.for_profiles(model, data, "conv", "neuron", "logit")
    with Store.open(store_url) as store:
        assert store.get_profiles(key) is None
        store.put_profiles(key, profiles, RunInfo(command="test", device="cpu", seconds=0.5))
        got = store.get_profiles(key)
    assert got is not None and got.cached and not profiles.cached
    assert torch.equal(got.sums.sum, profiles.sums.sum) and got.sums.sum.dtype == torch.float64
    assert torch.equal(got.sums.sumsq, profiles.sums.sumsq)
    assert torch.equal(got.sums.count, profiles.sums.count)
    assert torch.equal(got.mean, profiles.mean) and torch.equal(
        got.stderr,
        profiles.stderr,
    )
    assert got.unit_shape == profiles.unit_shape == (5, 4, 4)
    assert (got.layer, got.granularity, got.quantity, got.class_names) == (
        "conv",
        "neuron",
        "logit[label]",
        profiles.class_names,
    )


def test_same_key_is_served_without_running_the_model(store_url, model, data, exploding):
    with Store.open(store_url) as store:
        compute = computer(model, data)
        first = store.cached_profiles(model, data, "conv", "channel", "logit", compute)
        assert not first.cached and len(compute.calls) == 1
        stand_in = exploding(model)  # same fingerprint, forward raises
        second = store.cached_profiles(stand_in, data, "conv", "channel", "logit", computer(stand_in, data))
    assert second.cached
    assert torch.equal(second.mean, first.mean) and torch.equal(second.counts, first.counts)


def test_served_in_well_under_a_second(store_url, model, data):
    import time

    with Store.open(store_url) as store:
        store.cached_profiles(
            model, data, "conv", "neuron", "logit", computer(model, data, granularity="neuron")
        )
        start = time.perf_counter()
        hit = store.cached_profiles(model, data, "conv", "neuron", "logit", computer(model, data))
        assert hit.cached and time.perf_counter() - start < 1.0


def test_changed_weight_is_recomputed(store_url, model, data):
    with Store.open(store_url) as store:
        before = store.cached_profiles(model, data, "conv", "channel", "logit", computer(model, data))
        with torch.no_grad():
            model.module.fc.weight[0, 0] += 0.5
        changed = dataclasses.replace(model, fingerprint=model_fingerprint(model.module, "test:tiny"))
        compute = computer(changed, data)
        after = store.cached_profiles(changed, data, "conv", "channel", "logit", compute)
    assert changed.fingerprint != model.fingerprint
    assert len(compute.calls) == 1 and not after.cached
    assert not torch.equal(after.mean, before.mean)


def test_changed_image_is_recomputed(store_url, model, data):
    images = data.arrays.copy()
    images[0, 0, 0, 0] ^= 1  # one bit of one pixel
    changed = ImageData(
        data.spec,
        data.labels,
        data.class_names,
        data.preprocessing,
        hash_arrays(images, data.labels),
        arrays=images,
    )
    assert changed.fingerprint != data.fingerprint
    with Store.open(store_url) as store:
        store.cached_profiles(model, data, "conv", "channel", "logit", computer(model, data))
        compute = computer(model, changed)
        again = store.cached_profiles(model, changed, "conv", "channel", "logit", compute)
    assert len(compute.calls) == 1 and not again.cached


def test_every_part_of_the_key_matters(model, data):
    base = ProfileKey.for_profiles(model, data, "conv", "channel", "logit")
    blurred = dataclasses.replace(data, preprocessing=Preprocessing(blur_sigma=1.0))
    variants = [
        ProfileKey.for_profiles(model, blurred, "conv", "channel", "logit"),
        ProfileKey.for_profiles(model, data, "fc", "channel", "logit"),
        ProfileKey.for_profiles(model, data, "conv", "neuron", "logit"),
        ProfileKey.for_profiles(model, data, "conv", "channel", "prob"),
        dataclasses.replace(base, model_fp="0" * 16),
        dataclasses.replace(base, dataset_fp="0" * 16),
        dataclasses.replace(base, distribution="dataset"),
        dataclasses.replace(base, engine_version=ENGINE_VERSION + 1),
    ]
    digests = {base.digest(), *(v.digest() for v in variants)}
    assert len(digests) == 1 + len(variants)
    assert base.digest() == ProfileKey.for_profiles(model, data, "conv", "channel", "logit").digest()
    assert (base.quantity, base.distribution) == ("logit[label]", "class")


def test_engine_version_bump_is_a_miss(store_url, model, data, monkeypatch):
    import essence.storage.records as records

    with Store.open(store_url) as store:
        store.cached_profiles(model, data, "conv", "channel", "logit", computer(model, data))
        monkeypatch.setattr(records, "ENGINE_VERSION", ENGINE_VERSION + 1)  # the numbers' definition changed
        assert (
            ProfileKey.for_profiles(model, data, "conv", "channel", "logit").engine_version
            == ENGINE_VERSION + 1
        )
        compute = computer(model, data)
        assert not store.cached_profiles(model, data, "conv", "channel", "logit", compute).cached
        assert len(compute.calls) == 1


def test_instances_round_trip(store_url, model, data, exploding):
    with Store.open(store_url) as store:
        first = store.cached_profiles(
            model,
            data,
            "conv",
            "channel",
            "prob",
            computer(model, data, kind="prob", keep=True),
            keep_instances=True,
        )
        stand_in = exploding(model)
        got = store.cached_profiles(
            stand_in, data, "conv", "channel", "prob", computer(stand_in, data), keep_instances=True
        )
        info = store.info()
    assert got.cached and got.instances is not None and info.matrices == 4
    a, b = first.instances, got.instances
    assert b.instance_vectors.shape == (len(data), 5) and b.outputs.shape == (len(data), 3)
    for name in ("instance_vectors", "instance_indices", "instance_labels", "outputs"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    assert torch.equal(b.mean, a.mean)


def test_profile_without_instances_is_a_miss_when_instances_are_needed(store_url, model, data):
    with Store.open(store_url) as store:
        store.cached_profiles(model, data, "conv", "channel", "logit", computer(model, data))
        compute = computer(model, data, keep=True)
        got = store.cached_profiles(model, data, "conv", "channel", "logit", compute, keep_instances=True)
        assert len(compute.calls) == 1 and got.instances is not None
        # ... and now both kinds of request are served.
        assert store.cached_profiles(model, data, "conv", "channel", "logit", computer(model, data)).cached
        assert store.info().profiles == 1  # replaced, not duplicated


def test_damaged_matrix_file_is_detected_and_recomputed(tmp_path, model, data):
    path = tmp_path / "essence.sqlite"
    with Store.open(path) as store:
        store.cached_profiles(
            model, data, "conv", "channel", "logit", computer(model, data, keep=True), keep_instances=True
        )
        files = sorted((tmp_path / "essence.blobs").glob("??/*"))
        assert len(files) == 4
        victim = max(files, key=lambda p: p.stat().st_size)
        raw = bytearray(victim.read_bytes())
        raw[-1] ^= 0xFF
        victim.write_bytes(bytes(raw))
        compute = computer(model, data, keep=True)
        with pytest.warns(UserWarning, match="does not match its SHA-256"):
            again = store.cached_profiles(
                model, data, "conv", "channel", "logit", compute, keep_instances=True
            )
    assert len(compute.calls) == 1 and not again.cached
    # A rewrite of the same content restores the file under its hash name.
    assert victim.read_bytes() != bytes(raw)


def test_stored_sums_merge_with_a_new_shard(store_url, model, data):
    """Stored sums are mergeable: shard A (stored) + shard B (new images) = the whole, to float64 rounding."""
    n = len(data)
    full = class_profiles(model.module, data, "conv")
    half = n // 2 + 1
    shard_a = ImageData(
        data.spec, data.labels[:half], data.class_names, data.preprocessing, "a", arrays=data.arrays[:half]
    )
    shard_b = ImageData(
        data.spec, data.labels[half:], data.class_names, data.preprocessing, "b", arrays=data.arrays[half:]
    )
    key = ProfileKey.for_profiles(model, shard_a, "conv", "channel", "logit")
    with Store.open(store_url) as store:
        store.put_profiles(key, class_profiles(model.module, shard_a, "conv"))
        stored = store.get_profiles(key)
    merged: InfluenceSums = stored.sums.merge(class_profiles(model.module, shard_b, "conv").sums)
    whole = ClassProfiles.from_sums(
        merged,
        class_names=full.class_names,
        layer="conv",
        granularity="channel",
        quantity=full.quantity,
        unit_shape=full.unit_shape,
    )
    assert torch.equal(whole.counts, full.counts)
    torch.testing.assert_close(whole.sums.sum, full.sums.sum, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(whole.mean, full.mean, rtol=1e-6, atol=1e-7)


def test_profiles_that_do_not_match_the_key_are_refused(store_url, model, data):
    key = ProfileKey.for_profiles(model, data, "fc", "channel", "logit")
    with Store.open(store_url) as store, pytest.raises(StoreError, match="layer 'conv'"):
        store.put_profiles(key, class_profiles(model.module, data, "conv"))


def test_cached_class_names_follow_the_caller(store_url, model, data, exploding):
    with Store.open(store_url) as store:
        store.cached_profiles(model, data, "conv", "channel", "logit", computer(model, data))
        renamed = dataclasses.replace(exploding(model), class_names=["x", "y", "z"])
        got = store.cached_profiles(renamed, data, "conv", "channel", "logit", computer(renamed, data))
    assert got.cached and got.class_names == ["x", "y", "z"]


def test_runs_record_what_when_where_how_long(store_url, model, data):
    with Store.open(store_url) as store:
        store.cached_profiles(
            model,
            data,
            "conv",
            "channel",
            "logit",
            computer(model, data),
            run_info=RunInfo(command="essence precompute --model m", device="cpu"),
        )
        store.cached_profiles(model, data, "conv", "channel", "logit", computer(model, data))  # a hit: no run
        runs = store.runs()
    assert len(runs) == 1
    run = runs[0]
    assert run.kind == "profiles" and run.command == "essence precompute --model m" and run.device == "cpu"
    assert run.seconds is not None and run.seconds > 0
    assert (run.model_fp, run.dataset_fp, run.layer) == (model.fingerprint, data.fingerprint, "conv")
    assert run.created_at.tzinfo is not None and run.host
