"""The synthetic fundus generator: determinism, the class skew, the splits and their on-disk cache."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from essence.sample_data import fundus

SEVERITY_2 = 1
# Modules of sample_data that decide no generated pixel: everything else must be in GENERATOR_SOURCES.
NOT_GENERATOR = {"__init__.py", "build.py", "model.py", "specs.py"}


def test_same_seed_gives_byte_identical_images() -> None:
    a_img, a_lab = fundus.generate([3, 2, 2, 2, 2], seed=5)
    b_img, b_lab = fundus.generate([3, 2, 2, 2, 2], seed=5)
    assert a_img.tobytes() == b_img.tobytes() and np.array_equal(a_lab, b_lab)
    assert a_img.dtype == np.uint8 and a_img.shape == (11, 64, 64, 3)
    assert a_lab.dtype == np.int64 and np.bincount(a_lab).tolist() == [3, 2, 2, 2, 2]


def test_different_seeds_differ() -> None:
    a, _ = fundus.generate([2, 0, 0, 0, 0], seed=1)
    b, _ = fundus.generate([2, 0, 0, 0, 0], seed=2)
    assert not np.array_equal(a, b)


def test_an_image_is_its_drawing_rendered() -> None:
    images, labels = fundus.generate([1, 1, 0, 0, 0], seed=9)
    root = np.random.SeedSequence(9)
    root.spawn(1)  # the shuffle's seed comes first
    child = root.spawn(3)[1]  # then one per image after a spare one: the first image's own seed
    drawn = fundus.draw_fundus(np.random.default_rng(child), int(labels[0]))
    assert np.array_equal(images[0], fundus.render(drawn))


def test_splits_are_skewed_and_use_their_own_seeds() -> None:
    sizes = {s: fundus.scaled_sizes(s) for s in ("train", "val", "test")}
    for counts in sizes.values():
        assert all(counts[0] >= 9.5 * c for c in counts[1:])
    assert sizes["test"][SEVERITY_2] >= 40
    seeds = {fundus.split_seed(s, 0) for s in sizes} | {fundus.split_seed(s, 1) for s in sizes}
    assert len(seeds) == 6
    train, _ = fundus.load_split("train", scale=0.02)
    test, _ = fundus.load_split("test", scale=0.05)
    assert not np.array_equal(train[:2], test[:2])


def test_load_split_is_cached_and_read_only() -> None:
    a, _ = fundus.load_split("val", scale=0.05)
    b, _ = fundus.load_split("val", scale=0.05)
    assert a is b and not a.flags.writeable
    with pytest.raises(ValueError, match="unknown split"):
        fundus.load_split("holdout")  # type: ignore[arg-type]


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="n_per_class"):
        fundus.generate([1, 2, 3], seed=0)
    with pytest.raises(ValueError, match="size"):
        fundus.generate([1] * 5, seed=0, size=8)


def test_the_disk_cache_is_keyed_by_every_generator_module() -> None:
    folder = Path(fundus.__file__).parent
    listed = {p.name for p in fundus.GENERATOR_SOURCES}
    assert all(p.parent == folder and p.is_file() for p in fundus.GENERATOR_SOURCES)
    assert listed == {p.name for p in folder.glob("*.py")} - NOT_GENERATOR
    assert {"fundus.py", "drawing.py", "lesions.py", "vessels.py", "rendering.py"} <= listed


def test_a_change_to_any_generator_module_changes_the_cache_key(tmp_path: Path) -> None:
    copies = [Path(shutil.copy(p, tmp_path / p.name)) for p in fundus.GENERATOR_SOURCES]
    key = fundus.source_hash(copies)
    assert key == fundus.source_hash(fundus.GENERATOR_SOURCES) and len(key) == 12
    for copy in copies:
        original = copy.read_bytes()
        copy.write_bytes(original + b"# changed\n")
        assert fundus.source_hash(copies) != key, copy.name
        copy.write_bytes(original)
    assert fundus.source_hash(copies) == key


def test_a_split_on_disk_is_served_byte_identical(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ESSENCE_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("ESSENCE_NO_DATA_CACHE", raising=False)
    path = fundus._disk_cache_path("val", 3, 0.001)
    assert path is not None and fundus.source_hash(fundus.GENERATOR_SOURCES) in path.name
    made = fundus._generate_split("val", 3, 0.001)
    assert path.is_file() and len(made[1]) == 10
    monkeypatch.setattr(fundus, "generate", lambda *a, **k: pytest.fail("regenerated, not read from disk"))
    served = fundus._generate_split("val", 3, 0.001)
    assert served[0].tobytes() == made[0].tobytes() and np.array_equal(served[1], made[1])
    monkeypatch.setenv("ESSENCE_NO_DATA_CACHE", "1")
    assert fundus._disk_cache_path("val", 3, 0.001) is None
