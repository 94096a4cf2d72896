"""A deterministic generator of synthetic colour fundus images with diabetic-retinopathy severities 1–5.

It re-creates the paper's case study (Leino et al. 2018, §3.4) without the Kaggle data: severity 2 differs
from severity 1 *only* by a few microaneurysms — dots one or two pixels wide — so a Gaussian blur of σ≈2 px
in preprocessing erases exactly what tells class 2 apart, while the larger lesions of classes 3–5 survive it.

What comes from real photographs: the field's colour and its radial fall-off (vignetting) are the median
colour per ring of scikit-image's real fundus photo ``skimage.data.retina()`` (CC0, shipped in the wheel, read
offline); everything else (optic disc, vessels, lesions, texture) is drawn here from a seeded
``numpy.random.Generator``. Each image is a *patient* (field, disc, vessels, texture, noise) plus its
*lesions*; both are drawn first and then rendered, so the same patient can be rendered without its lesions
(the tests use this to check that class 2 differs from class 1 in a few pixels only).
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import numpy as np
import platformdirs
from scipy import ndimage

CLASS_NAMES: list[str] = [f"severity {k}" for k in range(1, 6)]

# Images per class of each split: class 1 ten times any other class, as in the paper's skewed data.
SPLIT_SIZES: dict[str, tuple[int, ...]] = {
    "train": (2140, 214, 214, 214, 214),
    "val": (430, 43, 43, 43, 43),
    "test": (570, 57, 57, 57, 57),
}
# Each split gets its own seed derived from the base seed, so no image is shared between splits.
SPLIT_OFFSETS: dict[str, int] = {"train": 0, "val": 1, "test": 2}

DEFAULT_SIZE = 64

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
_VESSEL_TINT = np.array([0.78, 0.58, 0.66], dtype=np.float32)
_EXUDATE_RGB = np.array([250.0, 225.0, 110.0], dtype=np.float32)
_DISC_RGB = np.array([252.0, 215.0, 140.0], dtype=np.float32)


@dataclass(frozen=True)
class Lesions:
    """Lesions of one image, in pixels: rows ``(y, x, sigma)`` per kind."""

    microaneurysms: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))
    haemorrhages: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))
    exudates: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.float32))


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
    """
    from PIL import Image

    if size < 1:
        raise ValueError(f"thumbnail size must be a positive int, got {size}")
    img = Image.fromarray(_real_retina()).resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8)


# -- drawing -------------------------------------------------------------------------------------------------


def _draw_vessels(
    rng: np.random.Generator, disc: tuple[float, float], side: float, radius: float
) -> np.ndarray:
    """Four arcades leaving the disc, each with a few branches, as segments ``[K, 5]``."""
    segments: list[np.ndarray] = []
    step = 0.075 * radius
    # (start heading, turn per step): the temporal arcades bend around the macula, the nasal ones spread out.
    arcades = [(-np.pi / 2, -0.11), (np.pi / 2, 0.11), (-np.pi / 2, 0.07), (np.pi / 2, -0.07)]
    for k, (heading, turn) in enumerate(arcades):
        temporal = k < 2
        # Mirror for a disc on the left (the other eye): headings reflect about the vertical axis.
        heading = heading if side > 0 else np.pi - heading
        turn = turn if side > 0 else -turn
        heading += rng.normal(0, 0.15) - side * (0.35 if temporal else -0.35)
        n = int(rng.integers(13, 17) if temporal else rng.integers(8, 11))
        width = radius * (0.030 if temporal else 0.025)
        segments += _walk(rng, disc, heading, turn, n, step, width, branch=True)
    return np.concatenate(segments).astype(np.float32)


def _walk(
    rng: np.random.Generator,
    start: tuple[float, float],
    heading: float,
    turn: float,
    n: int,
    step: float,
    width: float,
    branch: bool,
) -> list[np.ndarray]:
    """A wiggly vessel of ``n`` segments that thins along its length; spawns branches if ``branch``."""
    headings = heading + np.cumsum(turn + rng.normal(0, 0.12, n))
    dy, dx = np.sin(headings) * step, np.cos(headings) * step
    ys = start[0] + np.concatenate([[0.0], np.cumsum(dy)])
    xs = start[1] + np.concatenate([[0.0], np.cumsum(dx)])
    widths = width * np.linspace(1.0, 0.6, n)
    out = [np.stack([ys[:-1], xs[:-1], ys[1:], xs[1:], widths], axis=1)]
    if branch:
        for at in rng.choice(np.arange(3, n - 2), size=2, replace=False):
            sign = rng.choice([-1.0, 1.0])
            out += _walk(
                rng,
                (ys[at], xs[at]),
                headings[at] + sign * rng.uniform(0.5, 0.9),
                turn * 0.5,
                int(rng.integers(4, 8)),
                step,
                widths[at] * 0.75,
                branch=False,
            )
    return out


def _draw_spots(
    rng: np.random.Generator,
    count: int,
    sigma: tuple[float, float],
    fundus_geom: tuple[tuple[float, float], float, tuple[float, float, float], np.ndarray],
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
        ok &= _distance_to_segments(ys, xs, vessels) > 2.0
        for y, x in zip(ys[ok], xs[ok], strict=True):
            if len(spots) < count and all(np.hypot(y - p[0], x - p[1]) > 3.0 for p in spots):
                spots.append((y, x, rng.uniform(*sigma)))
    return np.array(spots, dtype=np.float32).reshape(-1, 3)


def _distance_to_segments(ys: np.ndarray, xs: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Distance of each point to the nearest of the segments ``[K, 5]``: ``[P]``."""
    return np.sqrt(_segment_d2(ys, xs, seg).min(axis=1))


def _segment_d2(ys: np.ndarray, xs: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Squared distance of points ``[P]`` to segments ``[K, 5]``: ``[P, K]`` (float32)."""
    # Component-wise float32 arithmetic: this is the generator's hot loop, 4x faster than stacked vectors.
    py = ys.reshape(-1, 1).astype(np.float32)
    px = xs.reshape(-1, 1).astype(np.float32)
    ay, ax = seg[:, 0].astype(np.float32), seg[:, 1].astype(np.float32)
    aby, abx = seg[:, 2].astype(np.float32) - ay, seg[:, 3].astype(np.float32) - ax
    inv = 1.0 / np.maximum(aby * aby + abx * abx, np.float32(1e-9))
    apy, apx = py - ay, px - ax
    t = np.clip((apy * aby + apx * abx) * inv, 0.0, 1.0)
    dy, dx = apy - t * aby, apx - t * abx
    return dy * dy + dx * dx


def draw_fundus(rng: np.random.Generator, label: int, size: int = DEFAULT_SIZE) -> Fundus:
    """Draw one patient and the lesions of severity ``label + 1`` (nothing is rendered yet).

    Args:
        rng: the generator to draw from (consumed).
        label: 0..4 for severities 1..5.
        size: image side in pixels.

    Returns:
        The drawn :class:`Fundus`.
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
    vessels = _draw_vessels(rng, disc[:2], side, radius)
    gain = np.exp(rng.normal([0.0, 0.0, 0.0], [0.05, 0.12, 0.15]) + rng.normal(-0.08, 0.12)).astype(
        np.float32
    )
    tilt = (rng.uniform(-0.12, 0.12), rng.uniform(-0.12, 0.12))
    texture = _texture(rng, size)
    noise = rng.normal(0, 1.5, (size, size, 3)).astype(np.float32)
    lesions = _draw_lesions(rng, label, (centre, radius, disc, vessels))
    return Fundus(size, centre, radius, gain, tilt, texture, noise, disc, vessels, lesions)


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Choroidal mottling: smooth low-frequency shading plus mid-frequency blobs (σ≈1.5 px)."""
    coarse = ndimage.zoom(rng.normal(0, 1, (6, 6)), size / 6, order=3)[:size, :size]
    fine = ndimage.gaussian_filter(rng.normal(0, 1, (size, size)), 1.5, mode="reflect")
    fine /= fine.std() + 1e-9
    return (1.0 + 0.045 * coarse + 0.035 * fine).astype(np.float32)


def _draw_lesions(
    rng: np.random.Generator,
    label: int,
    geom: tuple[tuple[float, float], float, tuple[float, float, float], np.ndarray],
) -> Lesions:
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


# -- rendering -----------------------------------------------------------------------------------------------


def render(fundus: Fundus, lesions: bool = True) -> np.ndarray:
    """Render a drawn fundus to a uint8 RGB image ``[size, size, 3]``.

    Args:
        fundus: what :func:`draw_fundus` drew.
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
    img = _darken(img, _strength(yy, xx, fundus.vessels), _VESSEL_TINT)
    if lesions:
        img = _paint_lesions(img, yy, xx, fundus.lesions)
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


def _strength(yy: np.ndarray, xx: np.ndarray, seg: np.ndarray) -> np.ndarray:
    """Vessel strength in [0, 1] per pixel: a Gaussian cross-section around the nearest segment."""
    scaled = _segment_d2(yy, xx, seg) * (0.5 / seg[:, 4].astype(np.float32) ** 2)
    # max_k exp(-a_k) = exp(-min_k a_k): one exp per pixel instead of one per pixel and segment.
    return np.exp(-scaled.min(axis=1)).reshape(yy.shape)


def _spot_strength(yy: np.ndarray, xx: np.ndarray, spots: np.ndarray) -> np.ndarray:
    if len(spots) == 0:
        return np.zeros_like(yy)
    d2 = (yy[..., None] - spots[:, 0]) ** 2 + (xx[..., None] - spots[:, 1]) ** 2
    return np.exp(-d2 / (2 * spots[:, 2] ** 2)).max(axis=-1)


def _darken(img: np.ndarray, strength: np.ndarray, tint: np.ndarray) -> np.ndarray:
    return img * (1 - strength[..., None] * (1 - tint))


def _paint_lesions(img: np.ndarray, yy: np.ndarray, xx: np.ndarray, lesions: Lesions) -> np.ndarray:
    img = _darken(img, _spot_strength(yy, xx, lesions.haemorrhages), _HAEM_TINT)
    img = _darken(img, _spot_strength(yy, xx, lesions.microaneurysms), _MA_TINT)
    w = (0.85 * _spot_strength(yy, xx, lesions.exudates))[..., None]
    return img * (1 - w) + _EXUDATE_RGB * w


# -- public API ----------------------------------------------------------------------------------------------


def generate(
    n_per_class: Sequence[int], seed: int, size: int = DEFAULT_SIZE
) -> tuple[np.ndarray, np.ndarray]:
    """Generate images, shuffled, ``n_per_class[k]`` of class ``k``.

    Args:
        n_per_class: how many images of each class (length 5).
        seed: the seed; the same seed gives byte-identical arrays.
        size: image side in pixels (64–96 are sensible).

    Returns:
        ``(images, labels)``: uint8 ``[N, size, size, 3]`` and int64 ``[N]``.

    Raises:
        ValueError: wrong number of classes, a negative count or a size under 16.
    """
    counts = [int(n) for n in n_per_class]
    if len(counts) != len(CLASS_NAMES) or min(counts) < 0:
        raise ValueError(f"n_per_class must be {len(CLASS_NAMES)} counts ≥ 0, got {list(n_per_class)}")
    if size < 16:
        raise ValueError(f"size must be at least 16 px, got {size}")
    root = np.random.SeedSequence(seed)
    labels = np.repeat(np.arange(len(counts), dtype=np.int64), counts)
    labels = labels[np.random.default_rng(root.spawn(1)[0]).permutation(len(labels))]
    # One child seed per image: image i does not depend on how many images come before it of other classes.
    children = root.spawn(len(labels) + 1)[1:]
    images = np.empty((len(labels), size, size, 3), dtype=np.uint8)
    for i, (label, child) in enumerate(zip(labels, children, strict=True)):
        images[i] = render(draw_fundus(np.random.default_rng(child), int(label), size))
    return images, labels


def split_seed(split: str, seed: int) -> int:
    """The seed of a split, derived from the base seed (distinct per split)."""
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"unknown split {split!r}: use 'train', 'val' or 'test'")
    return int(seed) * 1000 + 17 + SPLIT_OFFSETS[split]


def _disk_cache_path(split: str, seed: int, scale: float) -> Path | None:
    """Where a generated split is kept between processes (``ESSENCE_CACHE_DIR``, else the user cache folder).

    The name carries a hash of this generator's source, so a changed generator never serves old images.
    """
    if os.environ.get("ESSENCE_NO_DATA_CACHE"):
        return None
    root = os.environ.get("ESSENCE_CACHE_DIR") or platformdirs.user_cache_dir("essence")
    source = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    return Path(root) / f"fundus-{source}-{split}-{seed}-{scale:g}.npz"


def _generate_split(split: str, seed: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    path = _disk_cache_path(split, seed, scale)
    if path is not None and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as f:
                return f["images"], f["labels"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):
            pass  # a damaged cache file is regenerated below
    images, labels = generate(scaled_sizes(split, scale), split_seed(split, seed))
    if path is not None:
        try:  # written beside, then renamed: a concurrent reader never sees half a file
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz")
            with os.fdopen(fd, "wb") as f:
                np.savez(f, images=images, labels=labels)
            os.replace(tmp, path)
        except OSError:
            pass  # caching is an optimisation; a read-only cache folder is fine
    return images, labels


@functools.lru_cache(maxsize=8)
def _cached_split(split: str, seed: int, scale: float) -> tuple[np.ndarray, np.ndarray]:
    images, labels = _generate_split(split, seed, scale)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def scaled_sizes(split: str, scale: float = 1.0) -> tuple[int, ...]:
    """Per-class counts of a split, scaled (at least 2 per class)."""
    return tuple(max(2, round(n * scale)) for n in SPLIT_SIZES[split])


def load_split(
    split: Literal["train", "val", "test"], seed: int = 0, scale: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """One of the fixed splits of the demo data (generated once per process, then cached).

    Args:
        split: ``"train"`` (2996 images), ``"val"`` (602) or ``"test"`` (798); class 1 ten times each other.
        seed: base seed; each split uses its own seed derived from it.
        scale: multiply the per-class counts (for quick rebuilds and tests).

    Returns:
        ``(images, labels)``: read-only uint8 ``[N, 64, 64, 3]`` and int64 ``[N]``.
    """
    split_seed(split, seed)  # validates the split name
    return _cached_split(split, int(seed), float(scale))


def without_lesions(fundus: Fundus, keep: Sequence[str] = ()) -> Fundus:
    """The same fundus with all lesion kinds removed except those named in ``keep``."""
    empty = Lesions()
    kept = {
        k: getattr(fundus.lesions, k) if k in keep else getattr(empty, k)
        for k in ("microaneurysms", "haemorrhages", "exudates")
    }
    return replace(fundus, lesions=Lesions(**kept))
