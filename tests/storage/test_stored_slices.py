"""Stored slices: z kept by the first question, served memory-mapped to follow-ups, bounded and pruned."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from essence.core.analyses.profiles import class_profiles
from essence.core.engine.activation_source import StoredSlice
from essence.storage import Store
from essence.storage.activation_manifest import SliceKey
from essence.storage.activations import LIMIT_ENV

LAYER = "act"  # below it: the conv, whose forwards are counted


def counting(model) -> list[int]:
    calls = [0]
    model.module.conv.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    return calls


def profiles(store, model, data, kind, layer=LAYER):
    source = store.slice_source(model, data)

    def compute():
        return class_profiles(
            model.module, data, layer, kind=kind, keep_instances=True, device="cpu", activations=source
        )

    return store.cached_profiles(
        model, data, layer, "channel", kind, compute, keep_instances=True, activations=source
    )


def test_first_question_stores_z_and_a_follow_up_runs_above_the_slice_only(tmp_path, model, data):
    path = tmp_path / "essence.sqlite"
    with Store.open(path) as store:
        first = profiles(store, model, data, "logit")
        assert store.info().slices == 1 and store.info().slice_bytes > 0
    calls = counting(model)
    with Store.open(path) as store:  # another session: the z is on disk
        follow = profiles(store, model, data, "prob")
        assert calls[0] == 0, "a follow-up re-ran the layers below the slice"
    fresh = class_profiles(model.module, data, LAYER, kind="prob", keep_instances=True, device="cpu")
    assert not first.cached and not follow.cached
    torch.testing.assert_close(follow.mean, fresh.mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(follow.stderr, fresh.stderr, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(follow.instances.instance_vectors, fresh.instances.instance_vectors)
    torch.testing.assert_close(follow.instances.outputs, fresh.instances.outputs, rtol=1e-5, atol=1e-6)


def test_the_stored_z_is_memory_mapped_and_serves_cache_slice(tmp_path, model, data):
    from essence.core.engine.activation_cache import cache_slice

    with Store.open(tmp_path / "s.sqlite") as store:
        profiles(store, model, data, "logit")
        calls = counting(model)
        source = store.slice_source(model, data)
        cache = cache_slice(model.module, data, LAYER, device="cpu", activations=source)
        assert isinstance(cache, StoredSlice) and calls[0] == 0
        assert cache.layout == "channels_first" and cache.nbytes > 0
        z = cache.z.numpy()
        assert isinstance(z.base, np.memmap) or isinstance(z, np.memmap) or z.base is not None
        fresh = cache_slice(model.module, data, LAYER, device="cpu")
        torch.testing.assert_close(cache.z, fresh.z)
        torch.testing.assert_close(cache.outputs, fresh.outputs, rtol=1e-5, atol=1e-6)


def test_another_model_or_data_gets_no_stored_z(tmp_path, model, data, make_model, make_data):
    with Store.open(tmp_path / "s.sqlite") as store:
        profiles(store, model, data, "logit")
        other = make_model(seed=5)
        assert store.slice_source(other, data).find(other.module, data, LAYER) is None
        more = make_data(seed=9)
        assert store.slice_source(model, more).find(model.module, more, LAYER) is None
        # the source vouches only for its own objects: an equal-looking module is not taken on trust
        assert store.slice_source(model, data).find(other.module, data, LAYER) is None


def test_zero_limit_turns_stored_slices_off(tmp_path, model, data, monkeypatch):
    monkeypatch.setenv(LIMIT_ENV, "0")
    with Store.open(tmp_path / "s.sqlite") as store:
        profiles(store, model, data, "logit")
        assert store.info().slices == 0 and store.slice_source(model, data) is None


def test_a_slice_larger_than_the_limit_is_not_stored_and_old_ones_make_room(
    tmp_path, model, make_data, monkeypatch
):
    data = make_data(n=300)  # z large beside the files' headers
    z_bytes = len(data) * 5 * 4 * 4 * 4  # N × [5, 4, 4] float32
    monkeypatch.setenv(LIMIT_ENV, str(z_bytes / 2 / (1 << 20)))
    with Store.open(tmp_path / "s.sqlite") as store:
        profiles(store, model, data, "logit")
        assert store.info().slices == 0
    monkeypatch.setenv(LIMIT_ENV, str(1.5 * z_bytes / (1 << 20)))  # room for one slice, not two
    with Store.open(tmp_path / "t.sqlite") as store:
        profiles(store, model, data, "logit", layer="act")
        profiles(store, model, data, "logit", layer="conv")
        kept = store.slice_files.entries()
        assert [e.key.layer for e in kept] == ["conv"]  # the least recently used went first


def test_a_damaged_slice_is_recomputed_with_a_warning(tmp_path, model, data):
    with Store.open(tmp_path / "s.sqlite") as store:
        profiles(store, model, data, "logit")
        folder = store.slice_files.folder(SliceKey.of(model, data, LAYER))
        with open(folder / "z.npy", "r+b") as f:
            f.truncate(200)
        with pytest.warns(UserWarning, match="damaged"):
            got = profiles(store, model, data, "prob")
    fresh = class_profiles(model.module, data, LAYER, kind="prob", device="cpu")
    torch.testing.assert_close(got.mean, fresh.mean, rtol=1e-5, atol=1e-6)


def test_a_stale_z_is_not_served(tmp_path, model, data):
    with Store.open(tmp_path / "s.sqlite") as store:
        profiles(store, model, data, "logit")
        folder = store.slice_files.folder(SliceKey.of(model, data, LAYER))
        z = np.load(folder / "z.npy", mmap_mode="r+")
        z[:] = z[:] + 1.0  # same size, other values: g no longer gives the stored outputs
        z.flush()
        del z
        assert store.slice_source(model, data).find(model.module, data, LAYER) is None


def test_prune_removes_slices_by_model_age_or_all(tmp_path, model, data, make_model):
    other = make_model(seed=3)
    with Store.open(tmp_path / "s.sqlite") as store:
        profiles(store, model, data, "logit")
        profiles(store, other, data, "logit")
        assert store.info().slices == 2
        report = store.prune(model_fp=other.fingerprint, dry_run=True)
        assert report.slices == 1 and report.slice_bytes > 0 and store.info().slices == 2
        assert store.prune(model_fp=other.fingerprint).slices == 1
        assert [e.key.model_fp for e in store.slice_files.entries()] == [model.fingerprint]
        assert store.prune(older_than_days=1).slices == 0  # used just now
        assert store.prune().slices == 0  # no filter: slices stay
        assert store.prune(slices=True).slices == 1
        assert store.info().slices == 0 and store.info().slice_bytes == 0


FACTORY = """
from collections import OrderedDict
from torch import nn

def build():
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(3, 6, 3, padding=1), act=nn.Softplus(), pool=nn.AdaptiveAvgPool2d(2),
        flatten=nn.Flatten(), fc=nn.Linear(24, 3)))
"""


def test_the_cli_stores_the_slice_shows_it_and_prunes_it(tmp_path, monkeypatch, capsys):
    from safetensors.torch import save_file

    from essence.cli import main

    (tmp_path / "essence_slices_net.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("ESSENCE_HOME", str(tmp_path / "home"))
    import importlib

    torch.manual_seed(0)
    save_file(
        importlib.import_module("essence_slices_net").build().state_dict(), str(tmp_path / "w.safetensors")
    )
    images = np.random.default_rng(0).integers(0, 256, (30, 8, 8, 3), dtype=np.uint8)
    np.savez(tmp_path / "d.npz", images=images, labels=np.arange(30) % 3)
    spec = ["--model", "essence_slices_net:build", "--weights", str(tmp_path / "w.safetensors")]
    spec += ["--data", f"npz:{tmp_path / 'd.npz'}", "--layer", "act", "--device", "cpu"]

    def run(*args: str) -> str:
        try:
            main(list(args))
        except SystemExit as exc:
            assert not exc.code, capsys.readouterr().err
        return capsys.readouterr().out

    first = json.loads((lambda o: o[o.index("{") :])(run("profile", *spec, "--kind", "logit", "--json", "-")))
    out = run("store", "info")
    assert "stored slices (z for follow-up questions): 1," in out and LIMIT_ENV in out
    follow = json.loads((lambda o: o[o.index("{") :])(run("profile", *spec, "--kind", "prob", "--json", "-")))
    assert first["cached"] is False and follow["cached"] is False  # computed, from the stored z
    facts = json.loads((lambda o: o[o.index("{") :])(run("store", "info", "--json", "-")))
    assert facts["slices"] == 1 and facts["slice_bytes"] > 30 * 6 * 8 * 8 * 4
    assert "would remove 1 stored slices" in run("store", "prune", "--slices", "--dry-run")
    assert "removed 1 stored slices" in run("store", "prune", "--slices")
    facts = json.loads((lambda o: o[o.index("{") :])(run("store", "info", "--json", "-")))
    assert (facts["slices"], facts["slice_bytes"]) == (0, 0)


def test_an_error_of_the_pass_propagates_and_stores_nothing(tmp_path, model, data):
    from essence.core.base.errors import Cancelled

    calls = [0]

    def cancel() -> bool:
        calls[0] += 1
        return calls[0] > 1  # after the first batch

    with Store.open(tmp_path / "s.sqlite") as store:
        source = store.slice_source(model, data)
        with pytest.raises(Cancelled):
            class_profiles(
                model.module, data, LAYER, batch_size=4, cancel=cancel, device="cpu", activations=source
            )
        assert store.info().slices == 0 and store.slice_files.size() == 0


def test_no_room_for_the_slice_leaves_the_answer_intact(tmp_path, model, data, monkeypatch):
    from essence.storage.activations import SliceWriter

    def full(*_args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(SliceWriter, "_create", full)
    with Store.open(tmp_path / "s.sqlite") as store:
        with pytest.warns(UserWarning, match="not stored"):
            got = profiles(store, model, data, "logit")
        assert store.info().slices == 0
    fresh = class_profiles(model.module, data, LAYER, kind="logit", device="cpu")
    torch.testing.assert_close(got.mean, fresh.mean)


def test_a_command_that_fails_after_its_pass_stores_no_slice(tmp_path, model, data):
    """The z and the profiles are stored together or not at all: an error after the pass (an empty class, a
    locked store) leaves the store as it found it, and the same question then stores both."""
    with Store.open(tmp_path / "s.sqlite") as store:
        source = store.slice_source(model, data)

        def compute_then_fail():
            # the full pass runs
            class_profiles(model.module, data, LAYER, kind="logit", device="cpu", activations=source)
            raise RuntimeError("after the pass")

        with pytest.raises(RuntimeError, match="after the pass"):
            store.cached_profiles(
                model, data, LAYER, "channel", "logit", compute_then_fail, activations=source
            )
        assert store.info().slices == 0
        assert not [p for p in store.slice_files.root.iterdir()], "a temporary folder was left behind"
        profiles(store, model, data, "logit")
        assert store.info().slices == 1
