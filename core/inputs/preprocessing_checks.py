"""The checks of a preprocessing recipe's fields: each value refused with one line that names it and the fix.

:class:`~essence.core.inputs.preprocessing.Preprocessing` runs them as it is made (a recipe read from a model
card or JSON is made the same way), so a recipe that exists is one that can be applied: a mean and std per
channel (the std positive), a positive scale or none, a blur and a size no wider than any image
(:data:`MAX_SIDE`), and bit depths only among those files are read at (:data:`FILE_DEPTHS`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from essence.core.base.errors import SpecError

__all__ = [
    "FILE_DEPTHS",
    "MAX_SIDE",
    "checked_blur",
    "checked_file_depths",
    "checked_normalisation",
    "checked_scale",
    "checked_size",
]

# Resizing larger than this is refused: a 3×8192×8192 float32 image alone is 805 MB.
MAX_SIDE = 8192
# How an image file's values are read, by its bit depth (:func:`~essence.core.inputs.preprocessing.image_depth`):
# 8-bit files as they are, 16-bit ones mapped onto 0..255 by 255/65535, 32-bit integer and float ones by their
# own range (:func:`~essence.core.inputs.preprocessing.read_8bit`).
FILE_DEPTHS = {
    8: "8-bit files / 255",
    16: "16-bit files / 65535",
    32: "32-bit and float files by their own range",
}


def checked_normalisation(
    mode: str, channels: int, mean: Iterable[float], std: Iterable[float]
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """A recipe's mean and std as one float per channel (a single value stands for all three of RGB).

    Raises:
        SpecError: a count that is not the mode's channels, a std that is not positive and finite, or a mean
            that is not finite.
    """
    per_channel = []
    for name, values in (("mean", mean), ("std", std)):
        value = tuple(float(v) for v in values)
        if len(value) == 1 and channels == 3:
            value = value * 3
        if len(value) != channels:
            raise SpecError(f"preprocessing {name} has {len(value)} values, mode {mode} needs {channels}")
        per_channel.append(value)
    mean_c, std_c = per_channel
    if not all(s > 0 and math.isfinite(s) for s in std_c):
        raise SpecError(f"preprocessing std must be positive and finite, got {std_c}")
    if not all(math.isfinite(m) for m in mean_c):
        raise SpecError(f"preprocessing mean must be finite, got {mean_c}")
    return mean_c, std_c


def checked_scale(scale: float | None) -> float | None:
    """A recipe's scale as a float, or None (the container's range).

    Raises:
        SpecError: not a positive finite number.
    """
    if scale is not None and (
        isinstance(scale, bool | str) or not (float(scale) > 0 and math.isfinite(float(scale)))
    ):
        raise SpecError(
            f"preprocessing scale (the raw value that maps to 1.0) must be > 0 or null (the container's "
            f"range), got {scale!r}"
        )
    return None if scale is None else float(scale)


def checked_blur(sigma: float) -> float:
    """A recipe's blur sigma as a float.

    Raises:
        SpecError: negative, not finite, or wider than any image (:data:`MAX_SIDE`).
    """
    if sigma < 0 or not math.isfinite(sigma):
        raise SpecError(f"blur sigma must be a finite number ≥ 0, got {sigma}")
    if sigma > MAX_SIDE:  # a kernel of billions of taps; any image is flat long before
        raise SpecError(
            f"blur sigma {sigma:g} px is above {MAX_SIDE} px, wider than any image: choose a sigma "
            "of a few pixels (the paper's blur erased lesions at about 2 px)"
        )
    return float(sigma)


def checked_size(size: Iterable[int]) -> tuple[int, int]:
    """A recipe's size as ``(height, width)`` ints.

    Raises:
        SpecError: not two positive sides, or a side above :data:`MAX_SIDE`.
    """
    sides = tuple(int(v) for v in size)
    if len(sides) != 2 or min(sides) < 1:
        raise SpecError(f"preprocessing size must be (height, width) of positive ints, got {size}")
    if max(sides) > MAX_SIDE:
        raise SpecError(
            f"preprocessing size {sides} is above {MAX_SIDE} px a side: no classifier takes such inputs, "
            "and one batch would not fit in memory; choose the size the model was trained at"
        )
    return sides[0], sides[1]


def checked_file_depths(file_depths: Iterable[int]) -> tuple[int, ...]:
    """Recorded bit depths, sorted and distinct.

    Raises:
        SpecError: anything but a non-empty collection of the depths of :data:`FILE_DEPTHS`.
    """
    try:
        depths = tuple(file_depths)
    except TypeError:
        depths = ()
    if (
        isinstance(file_depths, str)
        or not depths
        or not all(isinstance(d, int) and not isinstance(d, bool) and d in FILE_DEPTHS for d in depths)
    ):
        raise SpecError(
            f"preprocessing file_depths {file_depths!r} must be bit depths among "
            f"{sorted(FILE_DEPTHS)}, or null (they are recorded from the files, not chosen)"
        )
    return tuple(sorted(set(depths)))
