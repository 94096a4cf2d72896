"""Datasets as the engine sees them (preprocessed batches with labels and stable instance indices), and image files."""

from __future__ import annotations

import hashlib
import io
import warnings
from collections.abc import Iterator, Sequence, Sized
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from essence.core.base.errors import DataLoadError, EmptyClassError, EssenceError, SpecError
from essence.core.base.files import regular_file
from essence.core.base.model_state import inference_state
from essence.core.inputs.labels import class_index
from essence.core.inputs.preprocessing import (
    BIT_DEPTH_INFO,
    Preprocessing,
    channels_last,
    image_depth,
    warn_outside_unit_range,
)

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # x [B, C, H, W], labels [B], indices [B]

# Decompression-bomb guard: PIL warns above ~89 Mpx; we refuse above this many pixels.
MAX_IMAGE_PIXELS = 64_000_000
# The preprocessed inputs of one batch may take at most this much memory (float32), before any activation: a
# 256-image batch at 224 px is 154 MB; one image at the largest size (8192 px a side) is 805 MB.
MAX_BATCH_BYTES = 2 * 2**30


@dataclass
class ImageData:
    """A labelled image dataset with its preprocessing recipe.

    Raw images are either held in memory (``arrays``: ``[N, H, W, C]`` or ``[N, H, W]``) or read from
    ``paths`` on demand; either way :meth:`batches` yields preprocessed float tensors.

    Attributes:
        spec: the data spec it was loaded from (``demo:test``, ``folder:PATH``, ...).
        labels: int64 ``[N]``.
        class_names: one name per class index.
        preprocessing: the recipe applied to every image.
        fingerprint: hash of the images' contents and the labels (not of the recipe).
        skipped: files left out as unreadable (only with ``on_bad_image="skip"``), with the reason.
        class_order: how the class indices were assigned: ``"indices"`` (the labels are class indices, as
            in digits or integer labels), ``"given"`` (mapped onto class names the caller gave: the model's),
            or ``"sorted"`` (the data's own class names, sorted — folder names, text labels: an order the
            model may not share, see :func:`essence.core.inputs.cards.class_order`).

    Examples:
        :func:`load_dataset` makes one from a spec; images already in memory are wrapped directly:

        >>> import numpy as np
        >>> from essence.core import ImageData, Preprocessing
        >>> images = np.zeros((4, 8, 8, 3), dtype=np.uint8)  # N×H×W×C
        >>> data = ImageData(
        ...     spec="my:images",
        ...     labels=np.array([0, 1, 1, 0]),
        ...     class_names=["cat", "dog"],
        ...     preprocessing=Preprocessing(),
        ...     fingerprint="my-images-v1",
        ...     arrays=images,
        ... )
        >>> data.preprocessing.scale  # the recipe as applied: uint8 values / 255
        255.0
        >>> data.class_index("dog"), data.indices_of(1).tolist()
        (1, [1, 2])
        >>> tuple(data.tensors([0, 3]).shape)  # preprocessed [B, C, H, W]
        (2, 3, 8, 8)
    """

    spec: str
    labels: np.ndarray
    class_names: list[str]
    preprocessing: Preprocessing
    fingerprint: str
    arrays: np.ndarray | None = None
    paths: list[Path] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    class_order: str = "indices"

    def __post_init__(self) -> None:
        self.labels = np.asarray(self.labels, dtype=np.int64)
        n = len(self.arrays) if self.arrays is not None else len(self.paths or [])
        if n != len(self.labels):
            raise DataLoadError(f"{self.spec}: {n} images but {len(self.labels)} labels")
        if n == 0:
            raise DataLoadError(
                f"{self.spec}: the dataset is empty; point it at a folder or file with images"
            )
        if self.labels.min() < 0 or self.labels.max() >= len(self.class_names):
            raise DataLoadError(
                f"{self.spec}: labels must lie in 0..{len(self.class_names) - 1} (one per class name); "
                f"found {int(self.labels.min())}..{int(self.labels.max())}"
            )
        # The recipe as applied: the scale made explicit for this container (image files: by their bit depths),
        # so every output can show it.
        if self.preprocessing is None:  # a plug-in's loader may leave the recipe to us
            grey = self.arrays is not None and (self.arrays.ndim == 3 or 1 in self.arrays.shape[1:4:2])
            self.preprocessing = Preprocessing(mode="L", mean=(0.0,), std=(1.0,)) if grey else Preprocessing()
        if self.arrays is not None:
            warn_outside_unit_range(self.arrays, self.preprocessing, self.spec)
            self.preprocessing = self.preprocessing.for_container(self.arrays.dtype)
        else:
            self.preprocessing = self.preprocessing.for_files(bit_depths(self.paths or []))

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def class_index(self, cls: int | str) -> int:
        """Resolve a class given by index or by name (case-insensitive)."""
        return class_index(cls, self.class_names)

    def indices_of(self, cls: int) -> np.ndarray:
        idx = np.flatnonzero(self.labels == cls)
        if idx.size == 0:
            raise EmptyClassError(
                f"class {self.class_names[cls]!r} (index {cls}) has no instances in {self.spec}: "
                "choose another class or add its images"
            )
        return idx

    def raw_image(self, index: int) -> np.ndarray:
        """The instance's image before preprocessing, uint8 ``[H, W, C]`` (for display)."""
        if self.arrays is not None:
            a = np.asarray(self.arrays[index])
            if a.dtype != np.uint8:
                a = np.clip(a / self.preprocessing.scale * 255.0, 0, 255).astype(np.uint8)
            if a.ndim == 3 and a.shape[0] in (1, 3) and a.shape[-1] not in (1, 3):
                a = np.moveaxis(a, 0, -1)
            return a[..., None] if a.ndim == 2 else a
        return np.asarray(open_image(self._path(index)).convert("RGB"))

    def tensors(self, indices: Sequence[int] | np.ndarray) -> torch.Tensor:
        """Preprocessed images ``[B, C, H, W]`` of the given instances."""
        indices = np.asarray(indices, dtype=np.int64)
        self.check_batch_memory(len(indices))
        if self.arrays is not None:
            return self.preprocessing.apply_array(self.arrays[indices])
        images = [self.preprocessing.apply_pil(open_image(self._path(i))) for i in indices]
        shapes = {tuple(t.shape) for t in images}
        if len(shapes) > 1:
            raise DataLoadError(
                f"{self.spec}: images have different sizes {sorted(shapes)[:3]}; set a size in the recipe "
                "(size=(H, W))"
            )
        return torch.stack(images)

    def _path(self, index: int) -> Path:
        """The file of instance ``index`` (a dataset without ``arrays`` holds ``paths``)."""
        assert self.paths is not None, "ImageData holds arrays or paths"  # __post_init__ refused neither
        return self.paths[index]

    def max_batch_size(self) -> int | None:
        """The most instances one batch may hold (:data:`MAX_BATCH_BYTES` of preprocessed inputs), or ``None``
        when images are files of their own sizes (each bounded by :data:`MAX_IMAGE_PIXELS` instead)."""
        per_image = self._bytes_per_image()
        return None if per_image is None else max(1, MAX_BATCH_BYTES // per_image)

    def _bytes_per_image(self) -> int | None:
        size = self.preprocessing.size
        if size is None and self.arrays is not None and self.arrays.ndim >= 3:
            last = self.arrays.ndim == 3 or channels_last(self.arrays.shape)
            sides = self.arrays.shape[1:3] if last else self.arrays.shape[2:4]
            size = (int(sides[0]), int(sides[1]))
        return None if size is None else self.preprocessing.channels * size[0] * size[1] * 4

    def check_batch_memory(self, n: int) -> None:
        """Refuse batches of ``n`` whose preprocessed images alone exceed :data:`MAX_BATCH_BYTES` (``size=(8192,
        8192)`` with the default batch asks for over 50 GB), naming the batch size that fits.

        Raises:
            DataLoadError: naming the batch's size in memory and the largest batch that fits.
        """
        n = min(n, len(self))
        per_image, fits = self._bytes_per_image(), self.max_batch_size()
        if per_image is not None and fits is not None and n > fits:
            size = self.preprocessing.size or "their own size"
            size = f"{size[0]}×{size[1]} px" if isinstance(size, tuple) else size
            raise DataLoadError(
                f"{self.spec}: a batch of {n} images of {size} is {n * per_image / 2**30:.1f} GiB "
                f"of inputs alone, above the {MAX_BATCH_BYTES / 2**30:.0f} GiB a batch may take: use batch_size={fits} "
                "(or less), or choose a smaller size"
            )

    def batches(self, batch_size: int, indices: Sequence[int] | np.ndarray | None = None) -> Iterator[Batch]:
        """Yield ``(x [B, C, H, W], labels [B], indices [B])`` in dataset order (or the given order)."""
        order = np.arange(len(self)) if indices is None else np.asarray(indices, dtype=np.int64)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            yield self.tensors(idx), torch.from_numpy(self.labels[idx]), torch.from_numpy(idx)


def open_image(path: Path | str | bytes) -> Image.Image:
    """Open and fully decode an image, turning every PIL failure into a :class:`DataLoadError`."""
    name = "uploaded image" if isinstance(path, bytes) else str(path)
    if not isinstance(path, bytes):  # a FIFO or a device would block or never end: only regular files
        regular_file(path, "the image", DataLoadError)
    try:
        src = io.BytesIO(path) if isinstance(path, bytes) else path
        with warnings.catch_warnings():
            # PIL's warnings (corrupt EXIF, its own bomb warning) would break the CLI's one-line errors;
            # every failure that matters is raised below, and the size limit is ours.
            warnings.simplefilter("ignore")
            with Image.open(src) as img:
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise DataLoadError(
                        f"{name}: {img.width}×{img.height} pixels is above the limit of {MAX_IMAGE_PIXELS:,}; "
                        "downscale the image first"
                    )
                depth = image_depth(img)  # known from the undecoded file only (16-bit colour is read as 8)
                img.load()
                image = img.copy()
                image.info[BIT_DEPTH_INFO] = depth
                return image
    except DataLoadError:
        raise
    except FileNotFoundError as exc:
        raise DataLoadError(f"{name}: file not found; check the path") from exc
    except (UnidentifiedImageError, Image.DecompressionBombError) as exc:
        raise DataLoadError(
            f"{name}: not a readable image ({exc.__class__.__name__}); remove or replace it"
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DataLoadError(f"{name}: image is truncated or corrupt ({exc}); remove or replace it") from exc


def bit_depths(paths: Sequence[Path]) -> set[int]:
    """The bit depths of image files as they are read (:func:`~essence.core.inputs.preprocessing.image_depth`), from
    their headers alone. A file that cannot be opened is passed over: reading it fails with its own message."""
    found = set()
    for path in paths:
        try:
            regular_file(path, "the image", DataLoadError)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                with Image.open(path) as img:
                    found.add(image_depth(img))
        except (DataLoadError, Image.DecompressionBombError, OSError, SyntaxError, ValueError):
            continue
    return found


def read_image(
    source: str | Path | bytes,
    preprocessing: Preprocessing,
    *,
    model: nn.Module | None = None,
    expected_size: tuple[int, int] | None = None,
    convert_mode: bool = False,
) -> torch.Tensor:
    """Read one image file and preprocess it with the model's recipe, checking it fits the model.

    A recipe with a size resizes any image to it. Without one, the image must already have the size the model
    was built for: ``expected_size`` (from the model's card) when known, otherwise the model is run once and a
    failure names the image's size. An image whose channels differ
    from the recipe's mode (a greyscale photo for an RGB model, or the reverse) is refused unless
    ``convert_mode``: making up or dropping colour changes what the model is asked.

    Args:
        source: a file path, or the file's bytes (an upload).
        preprocessing: the model's recipe.
        model: the model, run once on the image when the recipe has no size, to check it can take it.
        expected_size: ``(H, W)`` the model was built for, when known.
        convert_mode: convert a greyscale image to RGB or the reverse, instead of refusing it.

    Returns:
        float32 ``[C, H, W]``.

    Raises:
        DataLoadError: unreadable file, wrong mode (without ``convert_mode``), a size the model cannot take.
    """
    img = open_image(source)
    name = "uploaded image" if isinstance(source, bytes) else str(source)
    has_colour = img.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LAB", "HSV", "RGBX", "RGBa", "PA")
    if not convert_mode and has_colour != (preprocessing.mode == "RGB"):
        want = "colour (RGB)" if preprocessing.mode == "RGB" else "greyscale (L)"
        raise DataLoadError(
            f"{name} is mode {img.mode}, but the model takes {want} images: pass an image of that mode, or "
            "allow the conversion (convert_mode=True)"
        )
    if (
        preprocessing.size is None
        and expected_size is not None
        and (img.height, img.width) != tuple(expected_size)
    ):
        h, w = expected_size
        raise DataLoadError(
            f"{name} is {img.height}×{img.width} px but the model takes {h}×{w} images: resize it to {h}×{w}, "
            f"or give the recipe a size (size=({h}, {w}))"
        )
    x = preprocessing.apply_pil(img)
    if model is not None and preprocessing.size is None:
        try:
            with inference_state(model), torch.no_grad():
                dev = next(iter(model.parameters()), torch.empty(0)).device
                model(x[None].to(dev))
        except RuntimeError as exc:
            raise DataLoadError(
                f"{name} is {img.height}×{img.width} px, which the model cannot take ({str(exc).splitlines()[0][:120]}); "
                "resize it to the size the model was trained on, or give the recipe a size (size=(H, W))"
            ) from exc
        except EssenceError:
            raise
        except Exception as exc:  # the user's own forward raised: one line naming it, not an internal error
            from essence.core.inputs.models import forward_failure

            raise DataLoadError(forward_failure(exc, tuple(x.shape))) from exc
    return x


def hash_arrays(*arrays: np.ndarray, extra: str = "") -> str:
    """Content hash of arrays (dtype, shape and bytes) plus an optional string."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype}{a.shape}".encode())
        h.update(a.reshape(-1).view(np.uint8).data)  # the bytes as they are (also of an empty array), no copy
    h.update(extra.encode())
    return h.hexdigest()[:16]


def as_batches(
    data: object, batch_size: int, indices: Sequence[int] | np.ndarray | None = None
) -> tuple[Iterator[Batch], int]:
    """Adapt the engine's accepted data forms to an iterator of batches, and the number of instances.

    Accepts an :class:`ImageData`, a tuple ``(x [N, ...], labels [N])``, a bare tensor ``x`` (labels 0),
    or a ``torch.utils.data.Dataset`` of ``(x, label)`` pairs.
    """
    if batch_size < 1:
        raise SpecError(f"batch size must be ≥ 1, got {batch_size}")
    if isinstance(data, ImageData):
        n = len(data) if indices is None else len(indices)
        return data.batches(batch_size, indices), n
    if isinstance(data, torch.Tensor):
        data = (data, torch.zeros(len(data), dtype=torch.long))
    if isinstance(data, tuple | list) and len(data) == 2 and isinstance(data[0], torch.Tensor | np.ndarray):
        x = torch.as_tensor(data[0])
        y = torch.as_tensor(np.asarray(data[1])).long().view(-1)
        if len(x) != len(y):
            raise DataLoadError(f"{len(x)} inputs but {len(y)} labels")
        order = torch.arange(len(x)) if indices is None else torch.as_tensor(np.asarray(indices)).long()

        def gen() -> Iterator[Batch]:
            for s in range(0, len(order), batch_size):
                idx = order[s : s + batch_size]
                yield x[idx], y[idx], idx

        return gen(), len(order)
    if isinstance(data, torch.utils.data.Dataset):
        positions = list(range(_dataset_len(data))) if indices is None else [int(i) for i in indices]

        def gen_ds() -> Iterator[Batch]:
            for s in range(0, len(positions), batch_size):
                idx = positions[s : s + batch_size]
                items = [data[i] for i in idx]
                xs = torch.stack([torch.as_tensor(it[0]) for it in items])
                ys = torch.as_tensor([int(it[1]) for it in items])
                yield xs, ys, torch.as_tensor(idx)

        return gen_ds(), len(positions)
    raise SpecError(
        f"cannot read data of type {type(data).__name__}: pass an ImageData, (x, labels) tensors or a Dataset"
    )


def labels_of(data: object) -> np.ndarray:
    """All labels of a dataset form accepted by :func:`as_batches`."""
    if isinstance(data, ImageData):
        return data.labels
    if isinstance(data, torch.Tensor):
        return np.zeros(len(data), dtype=np.int64)
    if isinstance(data, tuple | list) and len(data) == 2:
        return np.asarray(torch.as_tensor(np.asarray(data[1])).long().view(-1))
    if isinstance(data, torch.utils.data.Dataset):
        # torchvision-style datasets list their labels in ``targets``: reading them there avoids decoding
        # every image once just for its label.
        targets = getattr(data, "targets", None)
        if targets is not None and len(targets) == _dataset_len(data):
            return np.asarray(torch.as_tensor(np.asarray(targets)).long().view(-1))
        return np.asarray([int(data[i][1]) for i in range(_dataset_len(data))], dtype=np.int64)
    raise SpecError(f"cannot read labels of {type(data).__name__}")


def _dataset_len(data: torch.utils.data.Dataset[Any]) -> int:
    """The length of a map-style dataset (torch's ``Dataset`` declares no ``__len__``, its subclasses do)."""
    return len(cast(Sized, data))
