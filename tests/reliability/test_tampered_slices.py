"""A stored slice that is not byte for byte what was written is detected, named once, removed and recomputed.

Each kind of damage is made to a real stored slice after a first question; the follow-up question must then
warn once (``StoredSliceWarning``, one line) and give exactly the numbers of a fresh run with no store, and the
question after it must be served from a newly stored, sound slice without any warning. Before the manifest's
hashes were checked, the row, label and symlink kinds changed the follow-up's profiles silently (only sizes and
the first four rows were checked) and a manifest of the wrong shape raised an internal error on every question.
"""

from __future__ import annotations

import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from essence.core.analyses.profiles import class_profiles
from essence.storage import Store
from essence.storage.activation_manifest import SliceKey
from essence.storage.activations import StoredSliceWarning
from tests.storage.conftest import tiny_data, tiny_model

LAYER = "act"


def _profiles(store: Store, model, data, kind: str):
    source = store.slice_source(model, data)

    def compute():
        return class_profiles(
            model.module, data, LAYER, kind=kind, keep_instances=True, device="cpu", activations=source
        )

    return store.cached_profiles(
        model, data, LAYER, "channel", kind, compute, keep_instances=True, activations=source
    )


def _scale_late_rows(folder: Path) -> None:
    z = np.load(folder / "z.npy", mmap_mode="r+")
    z[6:] = z[6:] * 3  # the first rows, which g re-checks, are left alone
    z.flush()


def _rotate_labels(folder: Path) -> None:
    labels = np.load(folder / "labels.npy")
    np.save(folder / "labels.npy", np.roll(labels, 1))


def _zero_half(folder: Path) -> None:
    z = np.load(folder / "z.npy", mmap_mode="r+")
    z[len(z) // 2 :] = 0
    z.flush()


def _change_late_outputs(folder: Path) -> None:
    out = np.load(folder / "outputs.npy")
    out[6:] += 1.0
    np.save(folder / "outputs.npy", out)


def _symlink_to_same_size_file(folder: Path) -> None:
    elsewhere = folder.parent.parent / "elsewhere.npy"
    z = np.load(folder / "z.npy")
    np.save(elsewhere, z[::-1].copy())  # same header, same size, other rows
    (folder / "z.npy").unlink()
    (folder / "z.npy").symlink_to(elsewhere)


def _folder_linked_to_a_copy(folder: Path) -> None:
    copy = folder.parent.parent / "copy"
    shutil.copytree(folder, copy)
    z = np.load(copy / "z.npy", mmap_mode="r+")
    z[6:] = -z[6:]
    z.flush()
    manifest = json.loads((copy / "slice.json").read_text())
    from essence.storage.activation_manifest import (
        file_sha256,
    )  # the copy's manifest matches the copy: only the link is wrong

    manifest["files"]["z.npy"]["sha256"] = file_sha256(copy / "z.npy")
    (copy / "slice.json").write_text(json.dumps(manifest))
    shutil.rmtree(folder)
    folder.symlink_to(copy)


def _edit_manifest(change: Callable[[dict], None]) -> Callable[[Path], None]:
    def edit(folder: Path) -> None:
        manifest = json.loads((folder / "slice.json").read_text())
        change(manifest)
        (folder / "slice.json").write_text(json.dumps(manifest))

    return edit


def _files_as_list(m: dict) -> None:
    m["files"] = list(m["files"].values())


def _count_as_text(m: dict) -> None:
    m["num_instances"] = str(m["num_instances"])


def _manifest_not_json(folder: Path) -> None:
    (folder / "slice.json").write_text("{not json")


def _manifest_a_list(folder: Path) -> None:
    (folder / "slice.json").write_text("[1, 2, 3]")


DAMAGE = {
    "z rows multiplied by 3": _scale_late_rows,
    "labels rotated": _rotate_labels,
    "half of z zeroed": _zero_half,
    "stored outputs changed": _change_late_outputs,
    "z a symlink to a same-size file": _symlink_to_same_size_file,
    "the folder a symlink to a consistent copy": _folder_linked_to_a_copy,
    "manifest files a list": _edit_manifest(_files_as_list),
    "manifest count as text": _edit_manifest(_count_as_text),
    "manifest not JSON": _manifest_not_json,
    "manifest a list": _manifest_a_list,
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_a_damaged_slice_is_named_once_recomputed_and_stored_again(tmp_path: Path, kind: str) -> None:
    model, data = tiny_model(), tiny_data()
    path = tmp_path / "store" / "essence.sqlite"
    with Store.open(path) as store:
        _profiles(store, model, data, "logit")
        folder = store.slice_files.folder(SliceKey.of(model, data, LAYER))
        assert folder.is_dir()
    DAMAGE[kind](folder)
    fresh = class_profiles(model.module, data, LAYER, kind="prob", keep_instances=True, device="cpu")
    with Store.open(path) as store, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = _profiles(store, model, data, "prob")
    named = [w for w in caught if issubclass(w.category, StoredSliceWarning)]
    assert len(named) == 1 and "\n" not in str(named[0].message), [str(w.message) for w in caught]
    assert "damaged" in str(named[0].message)
    torch.testing.assert_close(got.mean, fresh.mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got.counts, fresh.counts)
    torch.testing.assert_close(got.instances.instance_vectors, fresh.instances.instance_vectors)

    # The next question finds a sound slice again: no warning, the layers below the slice not re-run.
    calls = [0]
    model.module.conv.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    with Store.open(path) as store, warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = _profiles(store, model, data, "prob")  # a profile cached by now: ask another quantity too
        source = store.slice_source(model, data)
        other = store.cached_profiles(
            model,
            data,
            LAYER,
            "neuron",
            "logit",
            lambda: class_profiles(
                model.module,
                data,
                LAYER,
                kind="logit",
                granularity="neuron",
                device="cpu",
                activations=source,
            ),
            activations=source,
        )
    assert not [w for w in caught if issubclass(w.category, StoredSliceWarning)]
    assert calls[0] == 0, "the re-stored slice was not served"
    torch.testing.assert_close(again.mean, fresh.mean, rtol=1e-5, atol=1e-6)
    want = class_profiles(model.module, data, LAYER, kind="logit", granularity="neuron", device="cpu")
    torch.testing.assert_close(other.mean, want.mean, rtol=1e-5, atol=1e-6)
