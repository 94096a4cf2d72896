"""The vessel tree: arcades leaving the disc, and the distance to segments that places lesions and paints vessels."""

from __future__ import annotations

import numpy as np

from essence.sample_data.vessels import distance_to_segments, draw_vessels, segment_d2, vessel_strength

# One horizontal segment from (y=2, x=0) to (y=2, x=4), σ = 1 px.
SEGMENT = np.array([[2.0, 0.0, 2.0, 4.0, 1.0]], np.float32)


def test_distance_to_a_segment_is_to_its_nearest_point() -> None:
    ys, xs = np.array([2.0, 5.0, 2.0, 0.0]), np.array([2.0, 2.0, 7.0, -3.0])
    # on the segment; 3 px above its middle; 3 px past its end; (2, 3) from its start
    assert np.allclose(distance_to_segments(ys, xs, SEGMENT), [0.0, 3.0, 3.0, np.hypot(2.0, 3.0)])
    two = np.concatenate([SEGMENT, [[10.0, 0.0, 10.0, 4.0, 1.0]]]).astype(np.float32)
    d2 = segment_d2(ys, xs, two)
    assert d2.shape == (4, 2) and d2.dtype == np.float32 and np.isclose(d2[1, 1], 25.0)


def test_vessel_strength_is_a_gaussian_cross_section() -> None:
    yy, xx = np.mgrid[0:5, 0:5].astype(np.float32)
    strength = vessel_strength(yy, xx, SEGMENT)
    assert strength.shape == (5, 5) and np.allclose(strength[2], 1.0)
    assert np.isclose(strength[0, 2], np.exp(-2.0)) and np.isclose(strength[3, 2], np.exp(-0.5))


def test_arcades_leave_the_disc_and_thin_out() -> None:
    disc = (32.0, 45.0)
    seg = draw_vessels(np.random.default_rng(0), disc, side=1.0, radius=29.0)
    assert seg.dtype == np.float32 and seg.shape[1] == 5 and len(seg) > 40
    starts = np.hypot(seg[:, 0] - disc[0], seg[:, 1] - disc[1]) < 1e-3
    assert starts.sum() == 4  # four arcades start at the disc
    assert seg[:, 4].max() <= 0.030 * 29.0 + 1e-5 and seg[:, 4].min() > 0
    again = draw_vessels(np.random.default_rng(0), disc, side=1.0, radius=29.0)
    assert np.array_equal(seg, again)
