"""Data specs: npz layouts, folder trees, CSVs, digits; bad files, escapes from the data root, fingerprints."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
from PIL import Image

from essence.core.base.errors import DataLoadError, LabelMismatchError, SpecError
from essence.core.inputs.datasets import load_dataset
from essence.core.inputs.models import check_compatible
from essence.core.inputs.preprocessing import Preprocessing

RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, size=(6, 8, 8, 3), dtype=np.uint8)
LABELS = np.array([0, 1, 2, 0, 1, 2])


def nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(x).permute(0, 3, 1, 2).float()


@pytest.mark.parametrize("layout", ["nhwc", "nchw", "gray", "float"])
def test_npz_layouts(tmp_path, layout):
    images = {
        "nhwc": IMAGES,
        "nchw": IMAGES.transpose(0, 3, 1, 2),
        "gray": IMAGES[..., 0],
        "float": IMAGES.astype(np.float32) / 255,
    }[layout]
    path = tmp_path / "d.npz"
    np.savez(path, images=images, labels=LABELS, class_names=np.array(["x", "y", "z"]))
    data = load_dataset(f"npz:{path}")
    assert data.class_names == ["x", "y", "z"] and data.labels.tolist() == LABELS.tolist()
    x, y, idx = next(data.batches(4))
    assert y.tolist() == LABELS[:4].tolist() and idx.tolist() == [0, 1, 2, 3]
    if layout == "gray":
        assert x.shape == (4, 1, 8, 8)
        torch.testing.assert_close(x[:, 0], torch.from_numpy(IMAGES[:4, ..., 0]).float() / 255)
    else:
        torch.testing.assert_close(x, nchw(IMAGES[:4]) / 255, atol=1e-6, rtol=1e-6)
    assert data.raw_image(1).shape[:2] == (8, 8)


def test_npz_name_labels_and_mismatch(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, images=IMAGES, labels=np.array(["cat", "dog", "cat", "dog", "cat", "dog"]))
    data = load_dataset(f"npz:{path}", class_names=["dog", "cat"])
    assert data.labels.tolist() == [1, 0, 1, 0, 1, 0]
    with pytest.raises(LabelMismatchError, match="bird"):
        load_dataset(f"npz:{path}", class_names=["bird", "dog"])
    np.savez(path, images=IMAGES, labels=LABELS[:4])
    with pytest.raises(DataLoadError, match="6 images but 4 labels"):
        load_dataset(f"npz:{path}")
    np.savez(path, pictures=IMAGES, labels=LABELS)
    with pytest.raises(DataLoadError, match="'images'"):
        load_dataset(f"npz:{path}")


def write_tree(root, bad: bytes | None = None):
    for c, name in enumerate(["cat", "dog"]):
        (root / name).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(IMAGES[c * 3 + i]).save(root / name / f"{i}.png")
    if bad is not None:
        (root / "dog" / "broken.png").write_bytes(bad)


def png_bytes() -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(IMAGES[0]).save(buf, format="PNG")
    return buf.getvalue()


def test_folder_tree(tmp_path):
    write_tree(tmp_path / "d")
    data = load_dataset(f"folder:{tmp_path / 'd'}")
    assert data.class_names == ["cat", "dog"] and data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    torch.testing.assert_close(data.tensors([4]), nchw(IMAGES[4:5]) / 255)
    assert data.raw_image(4).tolist() == IMAGES[4].tolist()


@pytest.mark.parametrize(
    "content", [b"this is not an image", b"", "truncated"], ids=["text", "empty", "truncated"]
)
def test_bad_images_are_named_or_skipped(tmp_path, content):
    bad = png_bytes()[:60] if content == "truncated" else content
    write_tree(tmp_path / "d", bad=bad)
    with pytest.raises(DataLoadError, match="broken.png"):
        load_dataset(f"folder:{tmp_path / 'd'}")
    data = load_dataset(f"folder:{tmp_path / 'd'}", on_bad_image="skip")
    assert len(data) == 6 and len(data.skipped) == 1 and "broken.png" in data.skipped[0][0]


def test_csv_relative_paths_and_name_labels(tmp_path):
    write_tree(tmp_path / "d")
    csv = tmp_path / "d" / "labels.csv"
    csv.write_text("path,label\ncat/0.png,cat\ndog/1.png,dog\ndog/2.png,dog\n")
    data = load_dataset(f"csv:{csv}")
    assert data.class_names == ["cat", "dog"] and data.labels.tolist() == [0, 1, 1]
    torch.testing.assert_close(data.tensors([1]), nchw(IMAGES[4:5]) / 255)
    csv.write_text("cat/0.png,cat\ncat/9.png,cat\n")
    with pytest.raises(DataLoadError, match=r"row 2.*cat/9\.png"):
        load_dataset(f"csv:{csv}")


def test_paths_outside_the_data_root_are_refused(tmp_path):
    write_tree(tmp_path / "d")
    Image.fromarray(IMAGES[0]).save(tmp_path / "secret.png")
    csv = tmp_path / "d" / "labels.csv"
    csv.write_text("cat/0.png,cat\n../secret.png,dog\n")
    with pytest.raises(DataLoadError, match="outside the data root"):
        load_dataset(f"csv:{csv}")
    os.symlink(tmp_path / "secret.png", tmp_path / "d" / "dog" / "link.png")
    with pytest.raises(DataLoadError, match="outside the data root"):
        load_dataset(f"folder:{tmp_path / 'd'}")
    csv.write_text("cat/0.png,cat\ndog/link.png,dog\n")
    with pytest.raises(DataLoadError, match="outside the data root"):
        load_dataset(f"csv:{csv}")


def test_digits():
    data = load_dataset("digits")
    assert len(data) == 1797 and data.num_classes == 10
    x, y, _ = next(data.batches(5))
    assert x.shape == (5, 1, 8, 8) and float(x.max()) <= 1.0 and float(x.min()) >= 0.0


def test_fingerprints_change_with_an_image_or_a_label(tmp_path):
    path = tmp_path / "d.npz"
    np.savez(path, images=IMAGES, labels=LABELS)
    base = load_dataset(f"npz:{path}").fingerprint
    assert load_dataset(f"npz:{path}").fingerprint == base
    changed = IMAGES.copy()
    changed[2, 3, 3, 0] ^= 1
    np.savez(path, images=changed, labels=LABELS)
    assert load_dataset(f"npz:{path}").fingerprint != base
    np.savez(path, images=IMAGES, labels=np.array([0, 1, 2, 0, 1, 1]))
    assert load_dataset(f"npz:{path}").fingerprint != base

    write_tree(tmp_path / "t")
    tree = load_dataset(f"folder:{tmp_path / 't'}").fingerprint
    edited = IMAGES[1].copy()
    edited[0, 0, 0] ^= 1
    Image.fromarray(edited).save(tmp_path / "t" / "cat" / "1.png")
    assert load_dataset(f"folder:{tmp_path / 't'}").fingerprint != tree
    (tmp_path / "t" / "cat" / "1.png").rename(tmp_path / "t" / "dog" / "9.png")  # a label change
    assert load_dataset(f"folder:{tmp_path / 't'}").fingerprint != tree


def test_malformed_specs_and_compatibility(tmp_path):
    for spec in ("", "npz:", "parquet:x", "digits:x", "folder:", "csv:"):
        with pytest.raises(SpecError):
            load_dataset(spec)
    with pytest.raises(DataLoadError, match="not found"):
        load_dataset(f"npz:{tmp_path / 'none.npz'}")
    path = tmp_path / "d.npz"
    np.savez(path, images=IMAGES, labels=LABELS)
    data = load_dataset(f"npz:{path}", Preprocessing())
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    assert check_compatible(model, data) == 3
    with pytest.raises(LabelMismatchError, match="4 outputs"):
        check_compatible(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4)), data)
    with pytest.raises(DataLoadError, match="cannot run"):
        check_compatible(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(5, 3)), data)
