"""The lesions per severity: severity 2 differs from severity 1 only by dots a σ=2 px blur erases."""

from __future__ import annotations

import numpy as np
import pytest

from essence.core.inputs.preprocessing import Preprocessing
from essence.sample_data.build import BLUR_SIGMA
from essence.sample_data.drawing import Fundus, draw_fundus, without_lesions
from essence.sample_data.lesions import Lesions, darken, draw_lesions
from essence.sample_data.rendering import render

SEVERITY_1, SEVERITY_2, SEVERITY_3 = 0, 1, 2


def _blurred(image: np.ndarray) -> np.ndarray:
    """The image as the blurred model sees it, in grey levels (0..255), ``[3, H, W]``."""
    return Preprocessing(blur_sigma=BLUR_SIGMA).apply_array(image[None].copy())[0].numpy() * 255.0


def _pair(seed: int, label: int, keep: tuple[str, ...] = ()) -> tuple[np.ndarray, np.ndarray, Fundus]:
    """One patient rendered with its lesions and with only the lesion kinds in ``keep``."""
    drawn = draw_fundus(np.random.default_rng(seed), label)
    with_all = render(drawn).astype(np.int16)
    reduced = render(without_lesions(drawn, keep)).astype(np.int16)
    return with_all, reduced, drawn


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
        drawn = [draw_fundus(np.random.default_rng(s), label) for s in range(6)]
        area = [sum(float((les[:, 2] ** 2).sum()) for les in vars(d.lesions).values()) for d in drawn]
        totals.append(np.mean(area))
    assert totals == sorted(totals) and totals[0] == 0


def test_lesions_lie_inside_the_field_off_the_disc_and_apart() -> None:
    drawn = draw_fundus(np.random.default_rng(4), 4)
    spots = np.concatenate([drawn.lesions.microaneurysms, drawn.lesions.haemorrhages, drawn.lesions.exudates])
    (cy, cx), (dy, dx, dr) = drawn.centre, drawn.disc
    assert len(spots) >= 20
    assert (np.hypot(spots[:, 0] - cy, spots[:, 1] - cx) <= 0.82 * drawn.radius + 1e-4).all()
    assert (np.hypot(spots[:, 0] - dy, spots[:, 1] - dx) > 1.8 * dr).all()
    for kind in vars(drawn.lesions).values():  # spots of one kind keep 3 px apart
        gaps = np.hypot(kind[:, None, 0] - kind[None, :, 0], kind[:, None, 1] - kind[None, :, 1])
        assert (gaps[~np.eye(len(kind), dtype=bool)] > 3.0).all()


def test_the_same_generator_state_draws_the_same_lesions() -> None:
    geom = ((32.0, 32.0), 29.0, (32.0, 45.0, 3.5), np.array([[0.0, 0.0, 1.0, 1.0, 1.0]], np.float32))
    a = draw_lesions(np.random.default_rng(7), 3, geom)
    b = draw_lesions(np.random.default_rng(7), 3, geom)
    assert all(np.array_equal(getattr(a, k), getattr(b, k)) for k in vars(a))
    assert len(Lesions().microaneurysms) == 0 and Lesions().exudates.shape == (0, 3)


def test_darken_pulls_towards_the_tint_by_the_strength() -> None:
    img = np.full((1, 2, 3), 200.0, np.float32)
    out = darken(img, np.array([[0.0, 1.0]], np.float32), np.array([0.5, 0.25, 1.0], np.float32))
    assert out[0, 0].tolist() == [200.0, 200.0, 200.0] and out[0, 1].tolist() == [100.0, 50.0, 200.0]
