"""Drawing one patient: determinism from the generator's state, bad labels refused, lesions removable."""

from __future__ import annotations

import numpy as np
import pytest

from essence.sample_data.drawing import CLASS_NAMES, DEFAULT_SIZE, draw_fundus, without_lesions


def test_the_same_generator_state_draws_the_same_patient() -> None:
    a = draw_fundus(np.random.default_rng(3), 2)
    b = draw_fundus(np.random.default_rng(3), 2)
    assert a.size == DEFAULT_SIZE and a.texture.shape == (64, 64) and a.noise.shape == (64, 64, 3)
    assert np.array_equal(a.vessels, b.vessels) and np.array_equal(a.noise, b.noise) and a.disc == b.disc
    assert not np.array_equal(a.noise, draw_fundus(np.random.default_rng(4), 2).noise)


def test_the_field_is_centred_and_the_disc_inside_it() -> None:
    for seed in range(5):
        drawn = draw_fundus(np.random.default_rng(seed), 0, size=96)
        (cy, cx), (dy, dx, dr) = drawn.centre, drawn.disc
        assert 0.44 * 96 <= drawn.radius <= 0.475 * 96 and abs(cy - 48) < 5 and abs(cx - 48) < 5
        assert np.hypot(dy - cy, dx - cx) + dr < drawn.radius


def test_without_lesions_keeps_the_patient_and_the_named_kinds() -> None:
    drawn = draw_fundus(np.random.default_rng(1), 4)
    kept = without_lesions(drawn, keep=("exudates",))
    assert np.array_equal(kept.lesions.exudates, drawn.lesions.exudates) and len(kept.lesions.exudates) > 0
    assert len(kept.lesions.microaneurysms) == len(kept.lesions.haemorrhages) == 0
    assert kept.vessels is drawn.vessels and kept.noise is drawn.noise


def test_a_label_outside_the_classes_is_refused() -> None:
    assert len(CLASS_NAMES) == 5
    with pytest.raises(ValueError, match="label"):
        draw_fundus(np.random.default_rng(0), 5)
