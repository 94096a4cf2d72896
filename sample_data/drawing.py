"""Drawing one synthetic fundus: the patient (field, disc, vessels, texture, noise) and its lesions.

Nothing is rendered here: a :class:`Fundus` holds what was drawn, so the same patient can be rendered with and
without its lesions (:func:`without_lesions`; the tests use this to check that severity 2 differs from severity
1 in a few pixels only). Every number comes from the seeded ``numpy.random.Generator`` passed in, in a fixed
order: the same generator state gives the same fundus.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import ndimage

from essence.sample_data.lesions import Lesions, draw_lesions
from essence.sample_data.vessels import draw_vessels

CLASS_NAMES: list[str] = [f"severity {k}" for k in range(1, 6)]

DEFAULT_SIZE = 64


@dataclass(frozen=True)
class Fundus:
    """One drawn image before rendering: the patient's anatomy and texture, and the lesions.

    Attributes:
        size: image side in pixels.
        centre: ``(y, x)`` of the field's centre; ``radius`` its radius in pixels.
        gain: per-channel colour gain of this patient/camera ``[3]``.
        tilt: ``(gy, gx)`` linear illumination gradient across the field.
        texture: multiplicative texture ``[size, size]`` around 1.
        noise: additive sensor noise ``[size, size, 3]`` in grey levels.
        disc: ``(y, x, radius)`` of the optic disc.
        vessels: segments ``[K, 5]`` as ``(y0, x0, y1, x1, sigma)``.
        lesions: the lesions.
    """

    size: int
    centre: tuple[float, float]
    radius: float
    gain: np.ndarray
    tilt: tuple[float, float]
    texture: np.ndarray
    noise: np.ndarray
    disc: tuple[float, float, float]
    vessels: np.ndarray
    lesions: Lesions


def draw_fundus(rng: np.random.Generator, label: int, size: int = DEFAULT_SIZE) -> Fundus:
    """Draw one patient and the lesions of severity ``label + 1`` (nothing is rendered yet).

    Args:
        rng: the generator to draw from (consumed).
        label: 0..4 for severities 1..5.
        size: image side in pixels.

    Returns:
        The drawn :class:`Fundus`.

    Raises:
        ValueError: a label outside 0..4.
    """
    if not 0 <= label < len(CLASS_NAMES):
        raise ValueError(f"label must be in 0..{len(CLASS_NAMES) - 1}, got {label}")
    radius = size * rng.uniform(0.44, 0.475)
    centre = (size / 2 + rng.normal(0, 0.012 * size), size / 2 + rng.normal(0, 0.012 * size))
    side = float(rng.choice([-1.0, 1.0]))
    disc = (
        centre[0] + rng.normal(0, 0.06) * radius,
        centre[1] + side * rng.uniform(0.36, 0.48) * radius,
        radius * rng.uniform(0.11, 0.14),
    )
    vessels = draw_vessels(rng, disc[:2], side, radius)
    gain = np.exp(rng.normal([0.0, 0.0, 0.0], [0.05, 0.12, 0.15]) + rng.normal(-0.08, 0.12)).astype(
        np.float32
    )
    tilt = (rng.uniform(-0.12, 0.12), rng.uniform(-0.12, 0.12))
    texture = _texture(rng, size)
    noise = rng.normal(0, 1.5, (size, size, 3)).astype(np.float32)
    lesions = draw_lesions(rng, label, (centre, radius, disc, vessels))
    return Fundus(size, centre, radius, gain, tilt, texture, noise, disc, vessels, lesions)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Choroidal mottling: smooth low-frequency shading plus mid-frequency blobs (σ≈1.5 px)."""
    coarse = ndimage.zoom(rng.normal(0, 1, (6, 6)), size / 6, order=3)[:size, :size]
    fine = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 1.5, mode="reflect")
    fine /= fine.std() + 1e-9
    return (1.0 + 0.045 * coarse + 0.035 * fine).astype(np.float32)


def without_lesions(fundus: Fundus, keep: Sequence[str] = ()) -> Fundus:
    """The same fundus with all lesion kinds removed except those named in ``keep``."""
    empty = Lesions()
    kept = {
        k: getattr(fundus.lesions, k) if k in keep else getattr(empty, k)
        for k in ("microaneurysms", "haemorrhages", "exudates")
    }
    return replace(fundus, lesions=Lesions(**kept))
