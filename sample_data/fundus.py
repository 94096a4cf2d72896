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

The generator is split by idea: :mod:`~essence.sample_data.drawing` draws a patient,
:mod:`~essence.sample_data.vessels` its vessels, :mod:`~essence.sample_data.lesions` its lesions, and
:mod:`~essence.sample_data.rendering` turns the drawing into pixels. This module makes images and the fixed
splits of them, cached in memory and on disk, and re-exports the names above for its callers.
"""

from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import zipfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import platformdirs

from essence.sample_data import drawing, lesions, rendering, vessels
from essence.sample_data.drawing import CLASS_NAMES, DEFAULT_SIZE, Fundus, draw_fundus, without_lesions
from essence.sample_data.lesions import Lesions
from essence.sample_data.rendering import real_fundus_thumbnail, render

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_SIZE",
    "GENERATOR_SOURCES",
    "SPLIT_OFFSETS",
    "SPLIT_SIZES",
    "Fundus",
    "Lesions",
    "draw_fundus",
    "generate",
    "load_split",
    "real_fundus_thumbnail",
    "render",
    "scaled_sizes",
    "source_hash",
    "split_seed",
    "without_lesions",
]

# Images per class of each split: class 1 ten times any other class, as in the paper's skewed data.
SPLIT_SIZES: dict[str, tuple[int, ...]] = {
    "train": (2140, 214, 214, 214, 214),
    "val": (430, 43, 43, 43, 43),
    "test": (570, 57, 57, 57, 57),
}
# Each split gets its own seed derived from the base seed, so no image is shared between splits.
SPLIT_OFFSETS: dict[str, int] = {"train": 0, "val": 1, "test": 2}

# Every source file whose code decides a generated pixel: the on-disk cache is keyed by their hash together.
GENERATOR_SOURCES: tuple[Path, ...] = tuple(
    Path(str(m.__file__)) for m in (drawing, lesions, rendering, vessels)
) + (Path(__file__),)


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


def source_hash(paths: Iterable[Path]) -> str:
    """A short hash of the files' contents, in the order given (12 hex digits).

    Args:
        paths: the source files (:data:`GENERATOR_SOURCES` for the cache).

    Returns:
        The first 12 hex digits of the SHA-256 of each file's name and bytes, one after the other.
    """
    digest = hashlib.sha256()
    for path in paths:
        # Each file's name and a separator delimit it: text moved across a file boundary changes the hash.
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def _disk_cache_path(split: str, seed: int, scale: float) -> Path | None:
    """Where a generated split is kept between processes (``ESSENCE_CACHE_DIR``, else the user cache folder).

    The name carries the hash of every generator module (:data:`GENERATOR_SOURCES`), so a change to any of them
    never serves old images.
    """
    if os.environ.get("ESSENCE_NO_DATA_CACHE"):
        return None
    root = os.environ.get("ESSENCE_CACHE_DIR") or platformdirs.user_cache_dir("essence")
    source = source_hash(GENERATOR_SOURCES)
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
