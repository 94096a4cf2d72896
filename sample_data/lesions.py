"""The lesions of diabetic retinopathy on a synthetic fundus: how many of each kind per severity, where, how drawn.

Severity 2 differs from severity 1 *only* by a few microaneurysms, dots one or two pixels wide (σ 0.5–0.65 px):
exactly what a Gaussian blur of σ≈2 px in preprocessing erases, while the larger haemorrhages and exudates of
severities 3–5 survive it (Leino et al. 2018, §3.4).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from essence.sample_data.vessels import distance_to_segments

# Lesions per severity (label 0..4): (min, max) count of microaneurysms, haemorrhages, exudates, and the
# range of haemorrhage radii as a fraction of the field radius.
_LESIONS: tuple[dict[str, tuple[float, float]], ...] = (
    {"ma": (0, 0), "haem": (0, 0), "exu": (0, 0), "haem_r": (0.0, 0.0)},
    {"ma": (4, 8), "haem": (0, 0), "exu": (0, 0), "haem_r": (0.0, 0.0)},
    {"ma": (4, 9), "haem": (2, 4), "exu": (0, 0), "haem_r": (0.060, 0.075)},
    {"ma": (5, 10), "haem": (4, 7), "exu": (3, 6), "haem_r": (0.065, 0.085)},
    {"ma": (6, 12), "haem": (7, 11), "exu": (7, 12), "haem_r": (0.075, 0.10)},
)
# Colour multipliers at a lesion's centre (darker in green and blue: a deep red).
_MA_TINT = np.array([0.58, 0.42, 0.50], dtype=np.float32)
_HAEM_TINT = np.array([0.55, 0.40, 0.48], dtype=np.float32)
_EXUDATE_RGB = np.array([250.0, 225.0, 110.0], dtype=np.float32)

# Where lesions may go: the field's ``(centre, radius, disc (y, x, r), vessel segments [K, 5])``.
Geometry = tuple[tuple[float, float], float, tuple[float, float, float], np.ndarray]


@dataclass(frozen=True)
class Lesions:
    """Lesions of one image, in pixels: rows ``(y, x, sigma)`` per kind."""

    microaneurysms: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))
    haemorrhages: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))
    exudates: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))


def draw_lesions(rng: np.random.Generator, label: int, geom: Geometry) -> Lesions:
    """Draw the lesions of severity ``label + 1``, inside the field, off the disc and off the vessels.

    Args:
        rng: the generator to draw from (consumed).
        label: 0..4 for severities 1..5.
        geom: the field's :data:`Geometry`.

    Returns:
        The drawn :class:`Lesions`.
    """
    spec = _LESIONS[label]
    radius = geom[1]
    n_ma = int(rng.integers(spec["ma"][0], spec["ma"][1] + 1))
    n_haem = int(rng.integers(spec["haem"][0], spec["haem"][1] + 1))
    n_exu = int(rng.integers(spec["exu"][0], spec["exu"][1] + 1))
    # Microaneurysms: σ 0.5–0.65 px, i.e. one or two pixels — exactly what a σ≈2 px blur wipes out.
    ma = _draw_spots(rng, n_ma, (0.5, 0.65), geom)
    haem_r = (spec["haem_r"][0] * radius, spec["haem_r"][1] * radius)
    haem = _draw_spots(rng, n_haem, haem_r, geom) if n_haem else np.zeros((0, 3), np.float32)
    exu = _draw_spots(rng, n_exu, (0.9, 1.4), geom) if n_exu else np.zeros((0, 3), np.float32)
    return Lesions(ma, haem, exu)


def _draw_spots(
    rng: np.random.Generator, count: int, sigma: tuple[float, float], fundus_geom: Geometry
) -> np.ndarray:
    """``count`` spots ``(y, x, sigma)`` inside the field, off the disc and off the vessels."""
    (cy, cx), radius, (dy, dx, dr), vessels = fundus_geom
    spots: list[tuple[float, float, float]] = []
    while len(spots) < count:
        # Candidates in a batch: rejection sampling in a vectorised round is cheaper than one at a time.
        r = radius * 0.82 * np.sqrt(rng.uniform(0, 1, 32))
        a = rng.uniform(0, 2 * np.pi, 32)
        ys, xs = cy + r * np.sin(a), cx + r * np.cos(a)
        ok = np.hypot(ys - dy, xs - dx) > dr * 1.8
        ok &= distance_to_segments(ys, xs, vessels) > 2.0
        for y, x in zip(ys[ok], xs[ok], strict=True):
            if len(spots) < count and all(np.hypot(y - p[0], x - p[1]) > 3.0 for p in spots):
                spots.append((y, x, rng.uniform(*sigma)))
    return np.array(spots, dtype=np.float32).reshape(-1, 3)


def paint_lesions(img: np.ndarray, yy: np.ndarray, xx: np.ndarray, lesions: Lesions) -> np.ndarray:
    """Paint the lesions on a float RGB image ``[H, W, 3]``: dark-red dots and blots, yellow exudates.

    Args:
        img: the image so far, float ``[H, W, 3]`` in grey levels.
        yy, xx: pixel-centre coordinates ``[H, W]``.
        lesions: what :func:`draw_lesions` drew.

    Returns:
        A new float image ``[H, W, 3]``.
    """
    img = darken(img, _spot_strength(yy, xx, lesions.haemorrhages), _HAEM_TINT)
    img = darken(img, _spot_strength(yy, xx, lesions.microaneurysms), _MA_TINT)
    w = (0.85 * _spot_strength(yy, xx, lesions.exudates))[..., None]
    return img * (1 - w) + _EXUDATE_RGB * w


def darken(img: np.ndarray, strength: np.ndarray, tint: np.ndarray) -> np.ndarray:
    """Multiply ``img`` ``[H, W, 3]`` towards ``tint`` ``[3]`` by ``strength`` ``[H, W]`` in [0, 1]."""
    return img * (1 - strength[..., None] * (1 - tint))


def _spot_strength(yy: np.ndarray, xx: np.ndarray, spots: np.ndarray) -> np.ndarray:
    if len(spots) == 0:
        return np.zeros_like(yy)
    d2 = (yy[..., None] - spots[:, 0]) ** 2 + (xx[..., None] - spots[:, 1]) ** 2
    return np.exp(-d2 / (2 * spots[:, 2] ** 2)).max(axis=-1)
