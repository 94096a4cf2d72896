"""The image pools and every planted mark, texture and colour, drawn by code on uint8 ``[N, H, W, 3]`` arrays.

Three pools, each deterministic per seed and split into a training and a review half:

- ``digits``: scikit-learn's bundled 8×8 digits (real handwriting), upsampled bilinearly to 16×16, grey in three
  equal channels, 0..255; a seeded half trains, the other half is reviewed.
- ``shapes``: coloured shapes drawn here (disc, ring, square, diamond, cross, triangle) at 24×24, of random
  size, place and hue (colour is never a class cue) on a dim noise background; 150 training and 100 review
  images per class.
- ``fundus``: the bundled synthetic fundus generator (:mod:`essence.sample_data.fundus`) at 32×32, five
  severities, balanced; training and review images are drawn with different seeds. At this size and training
  budget the healthy model does not learn severities 2 and 3 (the microaneurysms that tell them apart are a
  pixel wide), so its cases start from a model that is not healthy.

The planted things are of two kinds. A **cue** is a shortcut the model may learn instead of the class (a mark,
a tint, a frame, a texture patch). A **feature** is the one difference between a planted class and its parent
(a fine texture, a hue of equal luma, a stripe at the border, a few dots): what a lossy step may erase.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

# The weights of the RGB → L conversion (ITU-R 601, as PIL and the recipe use): a hue pair of equal luma under
# them is told apart in colour and identical in grey.
LUMA = np.array([0.299, 0.587, 0.114])
# Planted textures and hues need headroom: images carrying them are drawn at this share of full intensity so
# that a ×(1 ± ½) modulation or a hue of luma 1 never clips (clipping would leave a brightness difference that
# a low-pass step keeps).
HEADROOM = 0.6


@dataclass(frozen=True)
class Pool:
    """A generator's images for one seed, split in two.

    Attributes:
        name: ``"digits"`` or ``"fundus"``.
        class_names: one name per class.
        train_images, review_images: uint8 ``[N, H, W, 3]``.
        train_labels, review_labels: int64 ``[N]`` (the true classes).
    """

    name: str
    class_names: tuple[str, ...]
    train_images: np.ndarray
    train_labels: np.ndarray
    review_images: np.ndarray
    review_labels: np.ndarray

    @property
    def size(self) -> int:
        return int(self.train_images.shape[1])


GENERATORS = ("digits", "shapes", "fundus")
SHAPES = ("disc", "ring", "square", "diamond", "cross", "triangle")


def pool(name: str, seed: int) -> Pool:
    """The named generator's pool for ``seed`` (built once per process; the arrays are read-only)."""
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}: use one of {', '.join(GENERATORS)}")
    return {"digits": _digits, "shapes": _shapes, "fundus": _fundus}[name](seed)


@functools.lru_cache(maxsize=4)
def _digits(seed: int) -> Pool:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False).clamp(0, 1)
    images = (x[:, 0, :, :, None].expand(-1, -1, -1, 3) * 255).round().to(torch.uint8).numpy()
    labels = d.target.astype(np.int64)
    perm = np.random.default_rng(seed).permutation(len(labels))
    tr, rv = np.sort(perm[: len(perm) // 2]), np.sort(perm[len(perm) // 2 :])
    return _frozen(
        Pool("digits", tuple(str(i) for i in range(10)), images[tr], labels[tr], images[rv], labels[rv])
    )


@functools.lru_cache(maxsize=4)
def _fundus(seed: int, train_per_class: int = 120, review_per_class: int = 80, size: int = 32) -> Pool:
    from essence.sample_data.fundus import CLASS_NAMES, generate

    xt, yt = generate([train_per_class] * len(CLASS_NAMES), seed * 1000 + 101, size=size)
    xr, yr = generate([review_per_class] * len(CLASS_NAMES), seed * 1000 + 102, size=size)
    return _frozen(Pool("fundus", tuple(CLASS_NAMES), xt, yt, xr, yr))


@functools.lru_cache(maxsize=4)
def _shapes(seed: int, train_per_class: int = 150, review_per_class: int = 100, size: int = 24) -> Pool:
    rng = np.random.default_rng([seed, 24])
    halves = []
    for per_class in (train_per_class, review_per_class):
        labels = rng.permutation(np.repeat(np.arange(len(SHAPES)), per_class))
        halves.append((np.stack([draw_shape(SHAPES[c], size, rng) for c in labels]), labels.astype(np.int64)))
    (xt, yt), (xr, yr) = halves
    return _frozen(Pool("shapes", SHAPES, xt, yt, xr, yr))


def draw_shape(shape: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """One ``shape`` of random radius (size/5 to size/3), centre (±size/8) and bright hue on dim noise, uint8
    ``[size, size, 3]``."""
    r = rng.uniform(size / 5, size / 3)
    cy, cx = size / 2 + rng.uniform(-size / 8, size / 8, size=2)
    dy, dx = np.indices((size, size)) - np.array([cy, cx])[:, None, None]
    dist = np.hypot(dx, dy)
    masks = {
        "disc": dist <= r,
        "ring": (dist <= r) & (dist >= r - 2.5),
        "square": (np.abs(dx) <= 0.8 * r) & (np.abs(dy) <= 0.8 * r),
        "diamond": np.abs(dx) + np.abs(dy) <= r,
        "cross": ((np.abs(dx) <= 1.5) & (np.abs(dy) <= r)) | ((np.abs(dy) <= 1.5) & (np.abs(dx) <= r)),
        "triangle": (dy >= -r) & (dy <= 0.7 * r) & (np.abs(dx) <= 0.6 * (dy + r)),
    }
    colour = rng.uniform(0.2, 1.0, size=3)
    colour = colour / colour.max() * rng.uniform(170, 255)
    image = rng.uniform(0, 40, size=(size, size, 3))
    image[masks[shape]] = colour
    return image.round().astype(np.uint8)


def _frozen(p: Pool) -> Pool:
    for a in (p.train_images, p.train_labels, p.review_images, p.review_labels):
        a.setflags(write=False)
    return p


def _square(n: int) -> int:
    """The side of a small planted square on an image of side ``n`` (2 px at 16, 4 px at 32)."""
    return max(2, n // 8)


# ------------------------------------------------------------------------------------------------------ cues

CUES = ("mark", "frame", "tint", "texture")


def add_cue(images: np.ndarray, cue: str) -> np.ndarray:
    """A copy of ``images`` with the shortcut ``cue`` on every one.

    - ``mark``: a full-intensity square in the top-left corner (blank in every digit, black in every fundus);
    - ``frame``: a one-pixel full-intensity border;
    - ``tint``: a reddish colour cast (green and blue × 0.6);
    - ``texture``: a one-pixel black/white checkerboard patch in the bottom-right corner.
    """
    x = images.copy()
    n = x.shape[1]
    s = _square(n)
    if cue == "mark":
        x[:, :s, :s] = 255
    elif cue == "frame":
        x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1] = 255, 255, 255, 255
    elif cue == "tint":
        x[..., 1:] = (x[..., 1:] * 0.6).round().astype(np.uint8)
    elif cue == "texture":
        p = 2 * s
        checker = (np.indices((p, p)).sum(0) % 2 * 255).astype(np.uint8)
        x[:, -p:, -p:] = checker[None, :, :, None]
    else:
        raise ValueError(f"unknown cue {cue!r}: use one of {', '.join(CUES)}")
    return x


# --------------------------------------------------------------------------------------------------- features

FEATURES = ("checker", "hue", "stripe", "dots")


def dimmed(images: np.ndarray) -> np.ndarray:
    """The images at :data:`HEADROOM` of their intensity (every image of a case that plants a feature)."""
    return (images.astype(np.float32) * HEADROOM).round().astype(np.uint8)


def add_feature(
    images: np.ndarray, feature: str, rng: np.random.Generator, parent: bool = False
) -> np.ndarray:
    """A copy of ``images`` with the planted class's distinguishing ``feature``.

    - ``checker``: intensities × (1 ± ½) in a one-pixel checkerboard: the mean is kept, so a blur or a halving
      of the size erases it (needs :func:`dimmed` images: it never clips);
    - ``hue``: the image's luma painted in a warm hue, or (``parent=True``, for the parent class) in a cool hue
      of the same luma: told apart in colour, identical after RGB → L;
    - ``stripe``: a full-intensity stripe along the bottom edge (a crop of ``n // 8`` px per side removes it);
    - ``dots``: four single pixels at full intensity at random places.
    """
    x = images.astype(np.float32)
    n = x.shape[1]
    if feature == "checker":
        checker = np.where(np.indices((n, n)).sum(0) % 2 == 0, 1.5, 0.5)
        x = x * checker[None, :, :, None]
    elif feature == "hue":
        hue = np.array([0.4, 1.0, 1.0]) if parent else np.array([1.0, 0.6, 0.3])
        luma = x @ LUMA
        x = luma[..., None] * (hue / (hue @ LUMA))[None, None, None, :]
    elif feature == "stripe":
        x[:, -max(1, n // 16) :] = 255
    elif feature == "dots":
        for i in range(len(x)):
            r, c = rng.integers(0, n, size=(2, 4))
            x[i, r, c] = 255
    else:
        raise ValueError(f"unknown feature {feature!r}: use one of {', '.join(FEATURES)}")
    return np.clip(x, 0, 255).round().astype(np.uint8)


def noise_images(count: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """``count`` images of uniform noise, uint8 ``[count, size, size, 3]`` (what replaces a class's training
    images in the "not learned" case)."""
    return rng.integers(0, 256, size=(count, size, size, 3), dtype=np.uint8)


def crop(images: np.ndarray) -> np.ndarray:
    """The images without a border of ``n // 8`` px on each side (what the "crop" case's pipeline does)."""
    c = images.shape[1] // 8
    return np.ascontiguousarray(images[:, c:-c, c:-c])
