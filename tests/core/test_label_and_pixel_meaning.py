"""What labels and pixel values mean, whatever the container: no silent re-ordering, no scale chosen from the data.

Each test here failed on the loaders as they were (issue 18, "Data"): float and digit-string labels sorted as text,
uint16 arrays divided by 255, float arrays scaled by a guess from their maximum, ``--class 2`` read as an index
when a class is named "2".
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

from essence.core.base.errors import ClassNotFoundError, DataLoadError, LabelMismatchError
from essence.core.inputs.datasets import load_dataset
from essence.core.inputs.labels import class_index
from essence.core.inputs.preprocessing import Preprocessing

RNG = np.random.default_rng(0)
LABELS = np.arange(24) % 12  # 12 classes: "10" and "11" sort before "2" as text
IDENTITY = Preprocessing(mode="L", mean=(0.0,), std=(1.0,))


def _npz(tmp_path, images: np.ndarray, labels: np.ndarray, name: str = "d.npz") -> str:
    path = tmp_path / name
    np.savez(path, images=images, labels=labels)
    return f"npz:{path}"


def _grey(n: int = 24, dtype=np.uint8, top: int = 255) -> np.ndarray:
    return RNG.integers(0, top + 1, size=(n, 4, 4)).astype(dtype)


def _csv(tmp_path, labels: list[str]) -> str:
    for i in range(len(labels)):
        Image.fromarray(np.full((4, 4), i * 10, np.uint8), mode="L").save(tmp_path / f"{i}.png")
    (tmp_path / "d.csv").write_text("path,label\n" + "".join(f"{i}.png,{y}\n" for i, y in enumerate(labels)))
    return f"csv:{tmp_path / 'd.csv'}"


# ------------------------------------------------------------------------------------------------- labels


@pytest.mark.parametrize(
    "labels",
    [LABELS.astype(np.float32), LABELS.astype(np.float64), LABELS.astype(str), LABELS.astype(np.uint8)],
    ids=["float32", "float64", "digit strings", "uint8"],
)
def test_integer_valued_npz_labels_mean_those_integers(tmp_path, labels):
    data = load_dataset(_npz(tmp_path, _grey(), labels), IDENTITY)
    assert data.labels.tolist() == LABELS.tolist()
    assert data.class_names == [str(i) for i in range(12)]


@pytest.mark.parametrize("written", ["{}", "{}.0", " {} "])
def test_csv_labels_mean_the_same_integers_as_npz(tmp_path, written):
    csv_data = load_dataset(_csv(tmp_path, [written.format(y) for y in LABELS]), IDENTITY)
    npz_data = load_dataset(_npz(tmp_path, _grey(), LABELS.astype(np.float64)), IDENTITY)
    assert csv_data.labels.tolist() == npz_data.labels.tolist() == LABELS.tolist()
    assert csv_data.class_names == npz_data.class_names


@pytest.mark.parametrize(
    "bad", [np.array([0.0, 1.5] * 12), np.array(["0", "1.5"] * 12)], ids=["float", "str"]
)
def test_non_integral_labels_are_refused_with_the_fix(tmp_path, bad):
    with pytest.raises(LabelMismatchError, match=r"1\.5.*integer"):
        load_dataset(_npz(tmp_path, _grey(), bad), IDENTITY)


def test_non_integral_csv_label_is_refused(tmp_path):
    with pytest.raises(LabelMismatchError, match=r"1\.5"):
        load_dataset(_csv(tmp_path, ["0", "1.5", "1"]), IDENTITY)


def test_name_labels_still_sort_as_names(tmp_path):
    data = load_dataset(_npz(tmp_path, _grey(4), np.array(["dog", "cat", "dog", "eel"])), IDENTITY)
    assert data.class_names == ["cat", "dog", "eel"] and data.labels.tolist() == [1, 0, 1, 2]


def test_digit_labels_against_digit_class_names_that_disagree_are_refused(tmp_path):
    """Labels "1".."4" with classes named "1".."5": names say 0..3, integers say 1..4 — refuse, never guess."""
    spec = _csv(tmp_path, ["1", "2", "3", "4"])
    with pytest.raises(LabelMismatchError, match="both"):
        load_dataset(spec, IDENTITY, class_names=["1", "2", "3", "4", "5"])
    agree = load_dataset(spec, IDENTITY, class_names=["0", "1", "2", "3", "4"])
    assert agree.labels.tolist() == [1, 2, 3, 4]
    only_names = load_dataset(_csv(tmp_path, ["5", "1"]), IDENTITY, class_names=["1", "2", "3", "4", "5"])
    assert only_names.labels.tolist() == [4, 0]  # 5 is no index of five classes: the names are meant


# ------------------------------------------------------------------------------------------------- pixels


def _x(data) -> np.ndarray:
    return data.tensors(np.arange(len(data))).numpy()


def test_uint16_arrays_scale_by_their_range_like_16_bit_pngs(tmp_path):
    images = _grey(6, np.uint16, 65535)
    npz = load_dataset(_npz(tmp_path, images, np.arange(6) % 2), IDENTITY)
    for c in ("0", "1"):
        (tmp_path / "f" / c).mkdir(parents=True)
    for i, img in enumerate(images):
        Image.fromarray(img).save(tmp_path / "f" / str(i % 2) / f"{i:02d}.png")
    folder = load_dataset(f"folder:{tmp_path / 'f'}", IDENTITY)
    order = np.argsort(np.arange(6) % 2, kind="stable")  # the folder lists class 0's files first
    assert _x(npz).max() <= 1.0 and _x(npz).max() > 0.9
    np.testing.assert_allclose(_x(npz)[order], _x(folder), atol=0.5 / 255 + 1e-6)
    # Both are divided by 65535, and both records say so (the PNGs are read at 8 bits on the way).
    assert npz.preprocessing.scale == 65535.0 and folder.preprocessing.scale == 65535.0


@pytest.mark.parametrize("dtype,top", [(np.uint8, 255.0), (np.uint16, 65535.0)])
def test_integer_arrays_scale_by_their_dtype_not_their_values(tmp_path, dtype, top):
    dark = np.zeros((2, 4, 4), dtype)
    dark[0, 0, 0] = 3  # a nearly black set is still that dtype's range
    data = load_dataset(_npz(tmp_path, dark, np.array([0, 1])), IDENTITY)
    assert data.preprocessing.scale == top
    assert _x(data).max() == pytest.approx(3 / top)


def test_float_arrays_are_used_as_they_are_and_one_bright_pixel_flips_nothing(tmp_path):
    images = RNG.random((24, 4, 4)).astype(np.float32)
    clean = load_dataset(_npz(tmp_path, images, LABELS, "clean.npz"), IDENTITY)
    noisy_images = images.copy()
    noisy_images[3, 1, 1] = 1.05
    with pytest.warns(UserWarning, match=r"outside \[0, 1\]") as caught:
        noisy = load_dataset(_npz(tmp_path, noisy_images, LABELS, "noisy.npz"), IDENTITY)
    assert len([w for w in caught if "outside [0, 1]" in str(w.message)]) == 1
    assert len(str(caught[0].message).splitlines()) == 1
    np.testing.assert_allclose(_x(clean)[:, 0], images, rtol=1e-6)
    np.testing.assert_allclose(_x(noisy)[:, 0], noisy_images, rtol=1e-6)  # not divided by 255
    assert clean.preprocessing.scale == noisy.preprocessing.scale == 1.0


def test_floats_in_range_do_not_warn_and_an_explicit_scale_is_honoured(tmp_path):
    images = RNG.random((4, 4, 4)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_dataset(_npz(tmp_path, images, np.arange(4) % 2), IDENTITY)
        as_bytes = Preprocessing(mode="L", mean=(0.0,), std=(1.0,), scale=255.0)
        data = load_dataset(_npz(tmp_path, images * 255, np.arange(4) % 2, "b.npz"), as_bytes)
    np.testing.assert_allclose(_x(data)[:, 0], images, rtol=1e-5)


def test_an_already_normalised_batch_warns_once_under_a_normalising_recipe(tmp_path):
    normalised = RNG.normal(size=(8, 3, 4, 4)).astype(np.float32)
    imagenet = Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
    with pytest.warns(UserWarning, match="outside") as caught:
        load_dataset(_npz(tmp_path, normalised, np.arange(8) % 2), imagenet)
    assert len(caught) == 1
    identity = Preprocessing(mean=(0.0,), std=(1.0,), scale=1.0)  # "these are the model's inputs already"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = load_dataset(_npz(tmp_path, normalised, np.arange(8) % 2, "n.npz"), identity)
    np.testing.assert_allclose(_x(data), normalised, rtol=1e-6)


def test_wide_integer_arrays_without_a_scale_are_refused(tmp_path):
    with pytest.raises(DataLoadError, match="uint8"):
        load_dataset(_npz(tmp_path, _grey(4, np.int64), np.arange(4) % 2), IDENTITY)
    scaled = Preprocessing(mode="L", mean=(0.0,), std=(1.0,), scale=255.0)
    data = load_dataset(_npz(tmp_path, _grey(4, np.int64), np.arange(4) % 2, "s.npz"), scaled)
    assert _x(data).min() >= 0 and _x(data).max() <= 1


def test_the_recipe_as_applied_says_the_scale(tmp_path):
    data = load_dataset(_npz(tmp_path, _grey(4), np.arange(4) % 2))
    assert data.preprocessing.scale == 255.0 and data.preprocessing.to_dict()["scale"] == 255.0
    assert "255" in data.preprocessing.describe()


# ------------------------------------------------------------------------------------------------- classes


FOLDERS = ["1", "2", "3", "4", "5"]


def test_a_digit_class_that_is_a_name_and_another_index_is_refused():
    with pytest.raises(ClassNotFoundError, match="name:2.*index:2"):
        class_index("2", FOLDERS)


def test_digit_classes_match_names_first_and_accept_explicit_forms():
    assert class_index("5", FOLDERS) == 4  # no index 5: the name is meant
    assert class_index("name:2", FOLDERS) == 1 and class_index("index:2", FOLDERS) == 2
    assert class_index("2", ["0", "1", "2"]) == 2  # name and index agree
    assert class_index(2, FOLDERS) == 2  # a Python int is an index
    assert class_index("2", ["cat", "dog", "eel"]) == 2
    assert class_index("Dog", ["cat", "dog", "eel"]) == 1
    with pytest.raises(ClassNotFoundError):
        class_index("index:9", FOLDERS)
