"""Rendering: a round orange-red field on black, and the real photograph it takes its colours from."""

from __future__ import annotations

import numpy as np

from essence.sample_data.drawing import draw_fundus
from essence.sample_data.rendering import real_fundus_thumbnail, render


def test_images_look_like_a_fundus() -> None:
    images = np.stack([render(draw_fundus(np.random.default_rng(s), 0)) for s in range(4)])
    assert images.dtype == np.uint8 and images.shape == (4, 64, 64, 3)
    corners = images[:, :4, :4].astype(float)
    centre = images[:, 24:40, 24:40].astype(float)
    assert corners.max() < 10  # black outside the round field
    red, green, blue = (centre[..., c].mean() for c in range(3))
    assert red > green > blue and red > 120  # an orange-red field


def test_lesions_false_renders_the_patient_alone() -> None:
    drawn = draw_fundus(np.random.default_rng(2), 4)
    assert not np.array_equal(render(drawn), render(drawn, lesions=False))
    assert np.array_equal(render(drawn, lesions=False), render(drawn, lesions=False))


def test_real_fundus_thumbnail() -> None:
    thumb = real_fundus_thumbnail(96)
    assert thumb.shape == (96, 96, 3) and thumb.dtype == np.uint8
    assert thumb[40:56, 40:56, 0].mean() > thumb[40:56, 40:56, 2].mean()  # red, like a fundus
