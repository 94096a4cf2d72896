"""The synthetic fundus generator: determinism, the class skew, and lesions that a σ=2 px blur does or does not erase."""

from __future__ import annotations

import numpy as np
import pytest

from essence.core.preprocessing import Preprocessing
from essence.sample_data import fundus
from essence.sample_data.build import BLUR_SIGMA

SEVERITY_1, SEVERITY_2, SEVERITY_3 = 0, 1, 2


def _blurred(image: np.ndarray) -> np.ndarray:
    """The image as the blurred model sees it, in grey levels (0..255), ``[3, H, W]``."""
    return Preprocessing(blur_sigma=BLUR_SIGMA).apply_array(image[None].copy())[0].numpy() * 255.0


def _pair(seed: int, label: int, keep: tuple[str, ...] = ()) -> tuple[np.ndarray, np.ndarray, fundus.Fundus]:
    """One patient rendered with its lesions and with only the lesion kinds in ``keep``."""
    drawn = fundus.draw_fundus(np.random.default_rng(seed), label)
    with_all = fundus.render(drawn).astype(np.int16)
    reduced = fundus.render(fundus.without_lesions(drawn, keep)).astype(np.int16)
    return with_all, reduced, drawn


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


def test_images_look_like_a_fundus() -> None:
    images, _ = fundus.generate([4, 0, 0, 0, 0], seed=3)
    corners = images[:, :4, :4].astype(float)
    centre = images[:, 24:40, 24:40].astype(float)
    assert corners.max() < 10  # black outside the round field
    red, green, blue = (centre[..., c].mean() for c in range(3))
    assert red > green > blue and red > 120  # an orange-red field


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


def test_severity_1_has_no_lesions() -> None:
    with_all, reduced, drawn = _pair(0, SEVERITY_1)
    assert np.array_equal(with_all, reduced) and len(drawn.lesions.microaneurysms) == 0


@pytest.mark.parametrize("seed", range(8))
def test_severity_2_differs_from_severity_1_only_by_tiny_dots(seed: int) -> None:
    with_all, reduced, drawn = _pair(seed, SEVERITY_2)
    n_ma = len(drawn.lesions.microaneurysms)
    assert 3 <= n_ma <= 8
    assert len(drawn.lesions.haemorrhages) == len(drawn.lesions.exudates) == 0
    changed = np.abs(with_all - reduced).max(-1)
    assert (changed > 2).sum() <= 10 * n_ma  # a handful of pixels per microaneurysm
    assert changed.max() >= 40  # …with contrast an unblurred CNN can see
    # After the blur the dots are gone: a few grey levels at most.
    residue = np.abs(_blurred(with_all.astype(np.uint8)) - _blurred(reduced.astype(np.uint8))).max()
    assert residue < 12


@pytest.mark.parametrize("seed", range(4))
def test_haemorrhages_of_severity_3_survive_the_blur(seed: int) -> None:
    with_all, without_haem, drawn = _pair(seed, SEVERITY_3, keep=("microaneurysms",))
    assert len(drawn.lesions.haemorrhages) >= 2
    residue = np.abs(_blurred(with_all.astype(np.uint8)) - _blurred(without_haem.astype(np.uint8))).max()
    assert residue > 30


def test_lesion_load_grows_with_severity() -> None:
    totals = []
    for label in range(5):
        drawn = [fundus.draw_fundus(np.random.default_rng(s), label) for s in range(6)]
        area = [sum(float((les[:, 2] ** 2).sum()) for les in vars(d.lesions).values()) for d in drawn]
        totals.append(np.mean(area))
    assert totals == sorted(totals) and totals[0] == 0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="n_per_class"):
        fundus.generate([1, 2, 3], seed=0)
    with pytest.raises(ValueError, match="size"):
        fundus.generate([1] * 5, seed=0, size=8)
    with pytest.raises(ValueError, match="label"):
        fundus.draw_fundus(np.random.default_rng(0), 5)


def test_real_fundus_thumbnail() -> None:
    thumb = fundus.real_fundus_thumbnail(96)
    assert thumb.shape == (96, 96, 3) and thumb.dtype == np.uint8
    assert thumb[40:56, 40:56, 0].mean() > thumb[40:56, 40:56, 2].mean()  # red, like a fundus
