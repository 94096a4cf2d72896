"""Preprocessing as a recorded, hashable recipe.

The recipe is part of the question being asked of a model: in the paper's case study a Gaussian blur in
preprocessing erased the lesions of one class. So it travels with every model and dataset, is shown wherever a
model is shown, and its fingerprint is part of every cache key.

Order of operations: convert mode → resize → scale to [0, 1] → Gaussian blur → normalise. Each field is
checked as the recipe is made (:mod:`essence.core.inputs.preprocessing_checks`); this module applies it.

What raw values mean is decided by their container, never guessed from the values (docs/data.md): integer
arrays by their dtype's range (uint8 / 255, uint16 / 65535), image files by their bit depth (8-bit files / 255,
16-bit files / 65535: each file is read at 8 bits, its range mapped onto 0..255), float arrays are intensities in
[0, 1] and are used as they are. A recipe's explicit ``scale`` overrides this for every container (floats
written as 0..255, the digits' 0..16); for an image file it is in the file's own units (0..65535 for 16 bits).
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from essence.core.base.errors import DataLoadError, SpecError
from essence.core.inputs.preprocessing_checks import (
    FILE_DEPTHS,
    checked_blur,
    checked_file_depths,
    checked_normalisation,
    checked_scale,
    checked_size,
)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The integer dtypes whose range is an image convention (8- and 16-bit images). Wider integers (int32, int64:
# numpy's default for Python ints) carry no convention: 0..255 and 0..65535 data both arrive as int64.
DTYPE_RANGES = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}
# PIL modes read through _to_8bit (PIL's own conversion would clip them at 255).
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
# The info key data.open_image records a file's bit depth under (a decoded image no longer says how it was
# stored).
BIT_DEPTH_INFO = "essence_bit_depth"


@dataclass(frozen=True)
class Preprocessing:
    """A preprocessing recipe.

    Attributes:
        mode: ``"RGB"`` (3 channels) or ``"L"`` (1 channel).
        size: ``(height, width)`` to resize to, or ``None`` to keep the images' own size.
        blur_sigma: standard deviation in pixels of a Gaussian blur applied after resizing (0 = none).
        mean: per-channel mean subtracted after scaling to [0, 1].
        std: per-channel standard deviation divided by.
        scale: the raw value that maps to 1.0, or ``None`` for the container's own range: 255 for uint8
            arrays and 8-bit files, 65535 for uint16 arrays, 1 for float arrays (used as they are). A number
            overrides the container (16 for scikit-learn's digits, 255 for floats written as 0..255); for
            image files it is in the file's own units (65535 for 16-bit files). A dataset's recipe *as applied*
            holds the number (see :meth:`for_container`, :meth:`for_files`), except for image files of bit
            depths that differ in range: then each file is divided by its own (``file_depths``).
        file_depths: the bit depths of the image files the recipe was applied to (8, 16; 32 for 32-bit integer
            and float files), recorded when any is not 8-bit (they are read at 8-bit precision); ``None`` for
            8-bit files, arrays, and a recipe not yet applied. Derived from the files, never chosen.

    Examples:
        A greyscale recipe that resizes to 32×32 and blurs; applied to uint8 arrays, their values are / 255:

        >>> import numpy as np
        >>> from essence.core import Preprocessing
        >>> recipe = Preprocessing(mode="L", size=(32, 32), blur_sigma=2, mean=(0.5,), std=(0.25,))
        >>> print(recipe.for_container(np.dtype(np.uint8)).describe())
        L, resize 32×32, Gaussian blur σ=2 px, values / 255, mean 0.5, std 0.25
        >>> images = np.zeros((2, 64, 64), dtype=np.uint8)  # N×H×W
        >>> tuple(recipe.apply_array(images).shape)  # [N, C, H, W], float32
        (2, 1, 32, 32)

        The recipe travels as JSON (in a model card, beside every output) and comes back the same:

        >>> recipe.to_dict()
        {'mode': 'L', 'size': [32, 32], 'blur_sigma': 2.0, 'mean': [0.5], 'std': [0.25], 'scale': None}
        >>> Preprocessing.from_dict(recipe.to_dict()) == recipe
        True
    """

    mode: Literal["RGB", "L"] = "RGB"
    size: tuple[int, int] | None = None
    blur_sigma: float = 0.0
    mean: tuple[float, ...] = field(default=(0.0, 0.0, 0.0))
    std: tuple[float, ...] = field(default=(1.0, 1.0, 1.0))
    scale: float | None = None
    file_depths: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("RGB", "L"):
            raise SpecError(f"preprocessing mode {self.mode!r} is not supported: use 'RGB' or 'L'")
        mean, std = checked_normalisation(self.mode, self.channels, self.mean, self.std)
        object.__setattr__(self, "mean", mean)
        object.__setattr__(self, "std", std)
        scale = checked_scale(self.scale)
        blur_sigma = checked_blur(self.blur_sigma)
        if self.size is not None:
            object.__setattr__(self, "size", checked_size(self.size))
        object.__setattr__(self, "blur_sigma", blur_sigma)
        object.__setattr__(self, "scale", scale)
        if self.file_depths is not None:
            object.__setattr__(self, "file_depths", checked_file_depths(self.file_depths))

    @property
    def channels(self) -> int:
        return 3 if self.mode == "RGB" else 1

    def for_container(self, dtype: np.dtype | torch.dtype | None) -> Preprocessing:
        """The recipe as applied to raw values of ``dtype`` (``None``: an 8-bit image file): the scale made
        explicit.

        Raises:
            DataLoadError: an integer dtype without an image convention (int32, int64, ...) and no scale.
        """
        if self.scale is not None and self.file_depths is None:
            return self
        scale = self.scale if self.scale is not None else container_scale(dtype)
        return replace(self, scale=scale, file_depths=None)

    def for_files(self, depths: Iterable[int]) -> Preprocessing:
        """The recipe as applied to image files of these bit depths (:func:`image_depth` of each).

        The scale is made explicit where one number holds for every file: 255 for 8-bit files, 65535 for 16-bit
        ones. Files of different ranges (8- and 16-bit together, or 32-bit and float files, whose range is their
        own) keep ``scale`` None: each file is divided by its own range, and ``file_depths`` says which there
        were. An explicit scale stays (in each file's own units).
        """
        found = tuple(sorted(set(depths))) or (8,)
        wide = None if found == (8,) else found
        if self.scale is not None:
            return replace(self, file_depths=wide)
        if wide is None:
            return replace(self, scale=255.0, file_depths=None)
        return replace(self, scale=65535.0 if wide == (16,) else None, file_depths=wide)

    def file_divisor(self, top: float) -> float:
        """What a file's values are divided by once read at 8 bits, its range ``top`` mapped onto 0..255
        (:func:`read_8bit`). The scale is in the file's own units: raw / scale = 8-bit value / (scale · 255 / top).
        Without a scale, each file by its own range: 255."""
        if self.scale is None:
            return 255.0
        return self.scale if top == 255.0 else self.scale * 255.0 / top

    def expects_unit_range(self) -> bool:
        """Whether the recipe expects raw values / scale in [0, 1]: all do but the explicit identity (scale 1,
        mean 0, std 1), which passes the model's inputs through as they are and expects nothing of their range."""
        identity = self.scale == 1.0 and not any(self.mean) and all(s == 1.0 for s in self.std)
        return not identity

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size) if self.size else None
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        if self.file_depths is None:  # recorded for wide files only: every other recipe keeps its fingerprint
            del d["file_depths"]
        else:
            d["file_depths"] = list(self.file_depths)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        known = {"mode", "size", "blur_sigma", "mean", "std", "scale", "file_depths"}
        if not isinstance(d, dict):
            raise SpecError(f"a preprocessing recipe is a mapping of {sorted(known)}, got {type(d).__name__}")
        unknown = set(d) - known
        if unknown:
            raise SpecError(
                f"unknown preprocessing keys {sorted(map(str, unknown))}: allowed are {sorted(known)}"
            )
        try:
            kw = dict(d)
            if kw.get("size") is not None:
                kw["size"] = tuple(kw["size"])
            for k in ("mean", "std", "file_depths"):
                if kw.get(k) is not None:
                    kw[k] = tuple(kw[k])
            return cls(**kw)
        except SpecError:
            raise
        except (TypeError, ValueError, OverflowError) as exc:  # e.g. size "big", mean ["a"], scale None
            raise SpecError(
                f"preprocessing recipe {d!r} has a value of the wrong type ({exc}); see the fields of "
                "Preprocessing"
            ) from exc

    def fingerprint(self) -> str:
        """A stable hash of the recipe (part of every cache key)."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def describe(self) -> str:
        """One line for people, e.g. ``RGB 64×64, Gaussian blur σ=2.0 px, normalised``."""
        parts: list[str] = [self.mode]
        if self.size:
            parts.append(f"resize {self.size[0]}×{self.size[1]}")
        parts.append(f"Gaussian blur σ={self.blur_sigma:g} px" if self.blur_sigma > 0 else "no blur")
        if self.scale is None and self.file_depths:
            parts.append(", ".join(FILE_DEPTHS[d] for d in self.file_depths))
        elif self.scale is None:
            parts.append("values by their type's range (uint8 / 255, uint16 / 65535, floats as they are)")
        else:
            parts.append(f"values / {self.scale:g}")
        if self.file_depths:
            parts[-1] += " (files read at 8-bit precision)"
        if any(m != 0 for m in self.mean) or any(s != 1 for s in self.std):
            parts.append("mean " + ",".join(f"{m:.3g}" for m in self.mean))
            parts.append("std " + ",".join(f"{s:.3g}" for s in self.std))
        return ", ".join(parts)

    # -- application ---------------------------------------------------------------------------------

    def apply_pil(self, image: Image.Image) -> torch.Tensor:
        """Preprocess one PIL image into a float tensor ``[C, H, W]``."""
        try:
            image, top = read_8bit(image)
            image = image.convert(self.mode)
        except (OSError, ValueError) as exc:
            raise DataLoadError(f"image cannot be converted to {self.mode}: {exc}") from exc
        if self.size is not None and (image.height, image.width) != self.size:
            image = image.resize((self.size[1], self.size[0]), Image.Resampling.BILINEAR)
        arr = np.asarray(image, dtype=np.float32)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        # Channels first, so that no image side (a 4-pixel-high image) is taken for the channel axis; files
        # are 8-bit once read (16-bit ones mapped by their range in read_8bit), the scale in the file's units.
        chw = np.ascontiguousarray(arr.transpose(2, 0, 1))[None]
        return replace(self, scale=self.file_divisor(top)).apply_array(chw, already_sized=True)[0]

    def apply_array(self, images: np.ndarray | torch.Tensor, already_sized: bool = False) -> torch.Tensor:
        """Preprocess a batch of raw images.

        Args:
            images: ``[N, H, W, C]`` or ``[N, C, H, W]`` (C in {1, 3, 4}: alpha dropped) or ``[N, H, W]`` of raw values
                (0..``scale``; without a scale, by their dtype's range: see the module docstring).
            already_sized: skip resizing (the caller resized already).

        Returns:
            A float32 tensor ``[N, C, H, W]``.

        Raises:
            DataLoadError: a layout or channel count the recipe cannot take, or wide integers without a scale.
        """
        scale = self.scale if self.scale is not None else container_scale(images.dtype)
        if isinstance(images, torch.Tensor):
            x = images.to(torch.float32)
        else:  # a float32 copy: the source may be a read-only cached array
            x = torch.from_numpy(np.array(images, dtype=np.float32))
        if x.ndim == 3:
            x = x[:, None]
        elif x.ndim == 4 and channels_last(tuple(x.shape)):
            x = x.permute(0, 3, 1, 2)
        elif x.ndim != 4:
            raise DataLoadError(f"images must be N×H×W, N×H×W×C or N×C×H×W; got shape {tuple(x.shape)}")
        if x.shape[1] == 4:  # alpha dropped, as PIL does converting RGBA to RGB or L
            x = x[:, :3]
        if x.shape[1] == 1 and self.channels == 3:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] == 3 and self.channels == 1:
            x = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
        if x.shape[1] != self.channels:
            raise DataLoadError(
                f"images have {x.shape[1]} channels, the recipe needs {self.channels} (mode {self.mode})"
            )
        x = x.contiguous() / scale
        if not already_sized and self.size is not None and tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False, antialias=True)
        if self.blur_sigma > 0:
            x = gaussian_blur(x, self.blur_sigma)
        mean = torch.tensor(self.mean).view(1, -1, 1, 1)
        std = torch.tensor(self.std).view(1, -1, 1, 1)
        return (x - mean) / std


def channels_last(shape: tuple[int, ...]) -> bool:
    """Whether a batch ``[N, A, B, C]`` is channels last: C is 1 or 3 (or 4, RGBA, the npz loader accepts it)
    and A is not a channel count; ``[N, 3, H, W]`` and ambiguous shapes are channels first."""
    return (shape[-1] in (1, 3) and shape[1] not in (1, 3)) or (shape[-1] == 4 and shape[1] not in (1, 3, 4))


def container_scale(dtype: np.dtype | torch.dtype | None) -> float:
    """The raw value that means 1.0 in a container of ``dtype`` (``None``: an image file, 8-bit once read).

    Raises:
        DataLoadError: an integer dtype without an image convention.
    """
    if dtype is None:
        return 255.0
    if isinstance(dtype, torch.dtype):
        if dtype.is_floating_point:
            return 1.0
        dtype = torch.empty(0, dtype=dtype).numpy().dtype
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return 1.0
    if dtype in DTYPE_RANGES:
        return DTYPE_RANGES[dtype]
    raise DataLoadError(
        f"images of dtype {dtype} have no conventional range: store them as uint8 (0..255), uint16 (0..65535) "
        "or floats in [0, 1], or give the recipe a scale (the raw value that means 1.0)"
    )


def warn_outside_unit_range(images: np.ndarray, recipe: Preprocessing, where: str) -> None:
    """One warning line when the values after scaling leave the [0, 1] the recipe expects.

    ``recipe`` is the recipe as given (before :meth:`Preprocessing.for_container`): only an explicit identity
    (scale 1, mean 0, std 1) says "these are the model's inputs already" and silences the check.

    Nothing is changed: the values are what the data says. The warning names the range found and the fixes.
    """
    if images.size == 0 or not recipe.expects_unit_range():
        return
    scale = recipe.for_container(images.dtype).scale or 1.0
    low, high = float(images.min()) / scale, float(images.max()) / scale
    if low >= 0.0 and high <= 1.0:
        return
    warnings.warn(
        f"{where}: image values after scaling (/ {scale:g}) span {low:.4g}..{high:.4g}, outside [0, 1] "
        "where the recipe expects them; they are used as they are: clip them, give the recipe the scale that "
        "means 1.0, or for inputs already normalised a recipe with scale 1, mean 0 and std 1",
        UserWarning,
        stacklevel=3,
    )


def image_depth(image: Image.Image) -> int:
    """An image file's bit depth as it is read: 16 for 16-bit samples (``I;16`` greyscale, or 16-bit colour,
    which PIL reads as its high bytes), 32 for 32-bit integer and float images (read by their own range), else 8.

    Known from the mode, the depth :func:`essence.core.inputs.data.open_image` recorded, or the decoder's raw mode of
    an image opened but not yet decoded.
    """
    if image.mode in ("I", "F"):
        return 32
    if image.mode.startswith("I;16"):
        return 16
    recorded = image.info.get(BIT_DEPTH_INFO)
    if recorded in FILE_DEPTHS:
        return int(recorded)
    rawmodes = [
        t[3][0] if isinstance(t[3], tuple) and t[3] else t[3] for t in getattr(image, "tile", None) or []
    ]
    return 16 if any(";16" in str(r) for r in rawmodes) else 8


def read_8bit(image: Image.Image) -> tuple[Image.Image, float]:
    """An image file at 8 bits, and the value of the file that its 255 stands for (the file's range).

    8-bit files are as they are (255); 16-bit ones (65535) and 32-bit integer and float ones (their own range)
    are mapped onto 0..255 (:func:`_to_8bit`).
    """
    if image.mode in WIDE_MODES:
        return _to_8bit(image)
    return image, 65535.0 if image_depth(image) == 16 else 255.0


def _to_8bit(image: Image.Image) -> tuple[Image.Image, float]:
    """Map a 16-bit, 32-bit integer or float image onto 0..255 by its type's range (PIL would clip at 255);
    also return that range.

    16-bit images (common in medical imaging) are scaled by 255/65535; 32-bit and float images by their own
    maximum, since their range is not fixed by the type.
    """
    arr = np.asarray(image, dtype=np.float64)
    top = 65535.0 if image.mode.startswith("I;16") else max(float(np.nanmax(arr)) if arr.size else 1.0, 1e-12)
    if image.mode == "I" and top <= 65535 and arr.min() >= 0 and top > 255:
        top = 65535.0
    eight = np.clip(np.nan_to_num(arr) / top * 255.0, 0, 255).round().astype(np.uint8)
    return Image.fromarray(eight, mode="L"), top


# A side of at most this many kernel widths is blurred as one matrix product (the blur along it as an n × n
# matrix, reflect padding folded in), else as a depthwise convolution. Both are the same linear map to float
# rounding; on a 2-core x86 CPU the product was 5-14× faster on 64-224 px images and level with the convolution
# on a 1024-px side at σ = 1 (7 taps), the convolution's cost growing with the kernel and the product's with the
# side.
MATRIX_BLUR_WIDTHS = 32


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of ``[N, C, H, W]`` with reflect padding; kernel radius ceil(3σ)."""
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype)
    k = torch.exp(-(t**2) / (2 * sigma**2))
    k = k / k.sum()
    return _blur_along(_blur_along(x, k, radius, -1), k, radius, -2)


def _blur_along(x: torch.Tensor, k: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """The blur of ``x`` along its last (``dim=-1``) or second-last (``-2``) axis: the kernel cut to the side
    (reflect padding reaches at most ``side - 1`` pixels) and renormalised."""
    n = x.shape[dim]
    pad = min(radius, n - 1)
    if not pad:
        return x
    kk = k[radius - pad : radius + pad + 1]
    kk = kk / kk.sum()
    if n <= MATRIX_BLUR_WIDTHS * len(kk):
        out = torch.arange(n).view(-1, 1)
        src = out + torch.arange(-pad, pad + 1).view(1, -1)  # each output's source pixels, reflected
        src = torch.where(src < 0, -src, torch.where(src >= n, 2 * (n - 1) - src, src))
        m = torch.zeros(n, n, dtype=x.dtype)
        m.index_put_((src.reshape(-1), out.expand_as(src).reshape(-1)), kk.repeat(n), accumulate=True)
        return torch.matmul(x, m) if dim == -1 else torch.matmul(m.T, x)
    c = x.shape[1]
    if dim == -1:
        x = F.pad(x, (pad, pad, 0, 0), mode="reflect")
        return F.conv2d(x, kk.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    x = F.pad(x, (0, 0, pad, pad), mode="reflect")
    return F.conv2d(x, kk.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
