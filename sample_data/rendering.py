"""Rendering a drawn fundus to pixels, with the field's colour taken from a real photograph.

The field's colour and its radial fall-off (vignetting) are the median colour per ring of scikit-image's real
fundus photo ``skimage.data.retina()`` (CC0, shipped in the wheel, read offline); the disc, vessels, lesions,
texture and noise are the ones :func:`~essence.sample_data.drawing.draw_fundus` drew.
"""

from __future__ import annotations

import functools

import numpy as np

from essence.sample_data.drawing import Fundus
from essence.sample_data.lesions import darken, paint_lesions
from essence.sample_data.vessels import vessel_strength

# Colour multipliers of a vessel's axis (darker in green and blue: a deep red), and the optic disc's colour.
_VESSEL_TINT = np.array([0.78, 0.58, 0.66], dtype=np.float32)
_DISC_RGB = np.array([252.0, 215.0, 140.0], dtype=np.float32)


@functools.lru_cache(maxsize=1)
def _real_retina() -> np.ndarray:
    from skimage import data

    return data.retina()


@functools.lru_cache(maxsize=1)
def _radial_profile(bins: int = 24) -> np.ndarray:
    """Median RGB per ring of the real fundus photo, rings over normalised radius [0, 1): ``[bins, 3]``."""
    photo = _real_retina().astype(np.float32)
    inside = photo[..., 0] > 30
    ys, xs = np.nonzero(inside)
    cy, cx, radius = ys.mean(), xs.mean(), np.sqrt(inside.sum() / np.pi)
    # Sub-sample pixels: medians of ~100k pixels are the same as of 2M and ten times faster.
    yy, xx = np.mgrid[0 : photo.shape[0] : 4, 0 : photo.shape[1] : 4]
    r = np.hypot(yy - cy, xx - cx) / radius
    pix = photo[::4, ::4]
    ring = np.minimum((r * bins).astype(int), bins)
    return np.stack([np.median(pix[ring == b], axis=0) for b in range(bins)]).astype(np.float32)


def real_fundus_thumbnail(size: int = 256) -> np.ndarray:
    """The real fundus photograph ``skimage.data.retina()`` (CC0), downscaled to ``size``×``size``.

    Args:
        size: side of the thumbnail in pixels.

    Returns:
        uint8 RGB array ``[size, size, 3]``.

    Raises:
        ValueError: a size under 1.
    """
    from PIL import Image

    if size < 1:
        raise ValueError(f"thumbnail size must be a positive int, got {size}")
    img = Image.fromarray(_real_retina()).resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


def render(fundus: Fundus, lesions: bool = True) -> np.ndarray:
    """Render a drawn fundus to a uint8 RGB image ``[size, size, 3]``.

    Args:
        fundus: what :func:`~essence.sample_data.drawing.draw_fundus` drew.
        lesions: ``False`` renders the same patient without any lesion (for tests and illustrations).

    Returns:
        uint8 array ``[size, size, 3]``.
    """
    s = fundus.size
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) + 0.5
    (cy, cx), radius = fundus.centre, fundus.radius
    r = np.hypot(yy - cy, xx - cx) / radius
    profile = _radial_profile()
    img = np.interp(r.ravel(), (np.arange(len(profile)) + 0.5) / len(profile), np.arange(len(profile)))
    img = _lerp_rows(profile, img).reshape(s, s, 3)
    illum = 1.0 + fundus.tilt[0] * (yy - cy) / radius + fundus.tilt[1] * (xx - cx) / radius
    img = img * fundus.gain * (illum * fundus.texture)[..., None]
    img = _paint_disc(img, yy, xx, fundus.disc)
    img = darken(img, vessel_strength(yy, xx, fundus.vessels), _VESSEL_TINT)
    if lesions:
        img = paint_lesions(img, yy, xx, fundus.lesions)
    img = img + fundus.noise
    # The camera's round aperture: a soft edge about a pixel wide, black outside.
    img = img * (1.0 / (1.0 + np.exp((r - 1.0) * radius / 0.6)))[..., None]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _lerp_rows(table: np.ndarray, pos: np.ndarray) -> np.ndarray:
    lo = np.clip(np.floor(pos).astype(int), 0, len(table) - 1)
    hi = np.minimum(lo + 1, len(table) - 1)
    w = (pos - lo)[:, None]
    return table[lo] * (1 - w) + table[hi] * w


def _paint_disc(
    img: np.ndarray, yy: np.ndarray, xx: np.ndarray, disc: tuple[float, float, float]
) -> np.ndarray:
    dy, dx, dr = disc
    d = np.hypot(yy - dy, xx - dx) / dr
    w = (np.exp(-(d**4)) * 0.85 + 0.15 * np.exp(-((d / 0.45) ** 2)))[..., None]
    return img * (1 - w) + _DISC_RGB * w
