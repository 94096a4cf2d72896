"""The built-in data formats: ``digits``, ``npz:PATH``, ``folder:PATH`` (ImageFolder), ``csv:PATH`` (path,label).

Each loader takes a :class:`~essence.core.inputs.specs.DataRequest` and returns an :class:`ImageData`; it is registered
under its prefix by :mod:`essence.core.inputs.datasets`. The checks every file format shares live here too: which
files are images, labels given as indices or names, paths confined to the data root, unreadable images named
or skipped, and fingerprints of the files and labels (a cache key: a changed image or label is a new dataset).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
import re
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from essence.core.base.errors import DataLoadError, LabelMismatchError, SpecError
from essence.core.base.files import regular_file
from essence.core.inputs.data import ImageData, hash_arrays, open_image
from essence.core.inputs.preprocessing import Preprocessing
from essence.core.inputs.specs import BadImagePolicy, DataRequest

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
# Integer labels without class names name classes 0..max: a label far above any real label set (ImageNet-21k
# has 21,841 classes) is a corrupt label, and would otherwise build a list of that many names.
MAX_CLASSES = 1_000_000
# What an npz's arrays may hold together once decompressed (they are read into memory whole): far above any
# npz a person saves by hand (CIFAR-10: 180 MB), far below what a decompression bomb asks for.
MAX_NPZ_BYTES = 4 * 2**30


def _path_arg(request: DataRequest, form: str) -> Path:
    if not request.arg:
        raise SpecError(f"data spec {request.spec!r} is not understood: {form} needs a path after the colon")
    return Path(request.arg)


# ----------------------------------------------------------------------------------------------- the formats


def load_digits(request: DataRequest) -> ImageData:
    """``digits``: scikit-learn's bundled 8×8 handwritten digits (1,797 images, 10 classes, 0..16 grey).

    Raises:
        SpecError: anything after ``digits``.
    """
    if request.spec != "digits":
        raise SpecError(
            f"data spec {request.spec!r} is not understood: the digits take no argument, use digits"
        )
    from sklearn.datasets import load_digits as sklearn_digits

    d = sklearn_digits()
    images = d.images.astype(np.float32)
    labels = d.target.astype(np.int64)
    recipe = request.preprocessing or Preprocessing(mode="L", mean=(0.0,), std=(1.0,))
    if recipe.scale is None:  # the digits are 0..16 greys: their container's range
        recipe = dataclasses.replace(recipe, scale=16.0)
    return ImageData(
        spec="digits",
        labels=labels,
        class_names=[str(i) for i in range(10)],
        preprocessing=recipe,
        fingerprint=hash_arrays(images, labels),
        arrays=images,
    )


def load_npz(request: DataRequest) -> ImageData:
    """``npz:PATH``: arrays ``images`` (N×C×H×W or N×H×W×C or N×H×W), ``labels``, optional ``class_names``.

    Raises:
        SpecError: no path.
        DataLoadError: a missing or unreadable file, arrays of the wrong kind, shape or count.
        LabelMismatchError: labels that are not the classes.
    """
    path = regular_file(_path_arg(request, "npz:PATH"), "npz:PATH", DataLoadError)
    check_npz_sizes(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = set(f.files)
            if not {"images", "labels"} <= keys:
                raise DataLoadError(
                    f"{path}: an npz needs arrays 'images' and 'labels'; it has {sorted(keys)}"
                )
            images, labels = f["images"], f["labels"]
            if not (isinstance(images, np.ndarray) and isinstance(labels, np.ndarray)):  # a non-.npy member
                raise DataLoadError(f"{path}: 'images' and 'labels' must be .npy arrays; save with np.savez")
            names = [str(n) for n in f["class_names"]] if "class_names" in keys else None
    except DataLoadError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise DataLoadError(
            f"{path}: not a readable .npz of plain arrays ({exc}); save with np.savez"
        ) from exc
    if images.dtype.kind not in "uif" or images.ndim not in (3, 4):
        raise DataLoadError(
            f"{path}: 'images' must be numeric N×H×W(×C) or N×C×H×W, got {images.dtype} {images.shape}"
        )
    if images.ndim == 4 and images.shape[-1] not in (1, 3, 4) and images.shape[1] not in (1, 3, 4):
        raise DataLoadError(f"{path}: images of shape {images.shape} have no channel axis of 1, 3 or 4")
    if not np.isfinite(images).all():
        raise DataLoadError(f"{path}: 'images' holds NaN or infinite values; clean the array")
    file_names = names
    labels, names = labels_to_indices(labels, file_names or request.class_names, str(path))
    # The file's own class_names index its labels; else as the labels were mapped.
    order = "indices" if file_names else label_order(names, request.class_names)
    if len(labels) != len(images):
        raise DataLoadError(f"{path}: {len(images)} images but {len(labels)} labels")
    recipe = request.preprocessing or _default_recipe(images)  # its scale made explicit by ImageData
    return ImageData(
        spec=request.spec,
        labels=labels,
        class_names=names,
        preprocessing=recipe,
        fingerprint=hash_arrays(images, labels),
        arrays=images,
        class_order=order,
    )


def check_npz_sizes(path: Path, limit: int | None = None) -> None:
    """Bound what an npz may decompress to, as images are bounded by their pixel count, before reading it.

    Each ``.npy`` member's header (shape × item size) is read and checked against the member's own
    uncompressed size, and their total against ``limit``: a 1 MB file of zeros can otherwise ask for gigabytes,
    and a header that lies about its size would be answered with an allocation failure.

    Args:
        path: the npz file.
        limit: the most bytes its arrays may hold together (default :data:`MAX_NPZ_BYTES`).

    Raises:
        DataLoadError: a member whose header is unreadable or declares more than the member holds, or arrays
            over the limit. (A file that is not a zip is left to ``np.load``'s own message.)
    """
    limit = MAX_NPZ_BYTES if limit is None else limit
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, ValueError):
        return  # np.load names it (a bare .npy, or not an npz at all)
    total = 0
    with archive:
        for info in archive.infolist():
            if not info.filename.endswith(".npy"):
                continue
            try:
                with archive.open(info) as member:
                    version = np.lib.format.read_magic(member)
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, _, dtype = read_header(member)
                    header_end = member.tell()
            except (ValueError, OSError, EOFError, RuntimeError, zipfile.BadZipFile, zlib.error) as exc:
                raise DataLoadError(
                    f"{path}: member {info.filename!r} has no readable array header ({exc}); save with np.savez"
                ) from exc
            declared = math.prod(shape) * dtype.itemsize
            if declared > info.file_size - header_end:
                raise DataLoadError(
                    f"{path}: member {info.filename!r} declares {tuple(shape)} {dtype} ({declared:,} bytes) but "
                    f"holds {max(info.file_size - header_end, 0):,}: the file is damaged; save it again with "
                    "np.savez"
                )
            total += declared
            if total > limit:
                raise DataLoadError(
                    f"{path}: its arrays decompress to over {limit / 2**30:.3g} GiB (at {info.filename!r}), above "
                    "the limit for an npz dataset: split it into smaller files, or use folder:PATH or csv:PATH "
                    "for a large dataset"
                )


def _default_recipe(images: np.ndarray) -> Preprocessing:
    channels = (
        images.shape[-1]
        if images.ndim == 4 and images.shape[-1] in (1, 3, 4)
        else (images.shape[1] if images.ndim == 4 else 1)
    )
    if channels == 1:
        return Preprocessing(mode="L", mean=(0.0,), std=(1.0,))
    return Preprocessing()


def load_folder(request: DataRequest) -> ImageData:
    """``folder:PATH``: an ImageFolder tree, one subfolder of images per class (sorted names).

    Raises:
        SpecError: no path.
        DataLoadError: not a folder, no classes or images, a path outside the data root, an unreadable image.
        LabelMismatchError: class folders that are not among the model's classes.
    """
    spec, root = request.spec, _path_arg(request, "folder:PATH")
    if not root.is_dir():
        raise DataLoadError(f"{root}: not a folder; folder:PATH needs a folder with one subfolder per class")
    base = Path(request.data_root) if request.data_root else root
    confine(root, base, spec)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataLoadError(
            f"{root}: no class subfolders; put each class's images in a subfolder named after it"
        )
    names, order = folder_class_names(classes, request.class_names)
    unknown = [c for c in classes if c not in names]
    if unknown:
        raise LabelMismatchError(
            f"{root}: class folders {unknown[:5]} are not among the model's classes {names[:8]}"
        )
    files, labels = [], []
    for c in classes:
        for f in sorted((root / c).rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES and (f.is_file() or f.is_symlink()):
                confine(f, base, spec)
                files.append(f)
                labels.append(names.index(c))
    if not files:
        raise DataLoadError(
            f"{root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in the class folders"
        )
    files, labels, skipped = check_images(files, labels, request.on_bad_image, spec)
    return ImageData(
        spec=spec,
        labels=np.array(labels),
        class_names=list(names),
        preprocessing=request.preprocessing or Preprocessing(),
        fingerprint=fingerprint_files(files, labels, names),
        paths=files,
        skipped=skipped,
        class_order=order,
    )


def load_csv(request: DataRequest) -> ImageData:
    """``csv:PATH``: rows of ``path,label`` (optional header); relative paths are from the CSV's folder.

    Raises:
        SpecError: no path.
        DataLoadError: an unreadable CSV, a malformed row, a missing image, a path outside the data root.
        LabelMismatchError: labels that are not the classes.
    """
    spec, path = request.spec, regular_file(_path_arg(request, "csv:PATH"), "csv:PATH", DataLoadError)
    base = Path(request.data_root) if request.data_root else path.parent
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (UnicodeDecodeError, csv.Error, OSError) as exc:
        raise DataLoadError(f"{path}: not a readable UTF-8 CSV of path,label ({exc})") from exc
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        rows = rows[1:]
    if not rows:
        raise DataLoadError(f"{path}: no rows; the CSV needs lines of path,label")
    files, raw_labels = [], []
    for n, row in enumerate(rows, start=1):
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise DataLoadError(f"{path} row {n}: expected path,label, got {row!r}")
        p = Path(row[0].strip())
        p = p if p.is_absolute() else path.parent / p
        confine(p, base, f"{path} row {n}")
        if not p.is_file():
            raise DataLoadError(
                f"{path} row {n}: image {row[0].strip()!r} not found; fix the path or remove the row"
            )
        files.append(p)
        raw_labels.append(row[1].strip())
    labels_arr, names = labels_to_indices(np.array(raw_labels), request.class_names, str(path))
    files, labels, skipped = check_images(files, labels_arr.tolist(), request.on_bad_image, spec)
    return ImageData(
        spec=spec,
        labels=np.array(labels),
        class_names=names,
        preprocessing=request.preprocessing or Preprocessing(),
        fingerprint=fingerprint_files(files, labels, names),
        paths=files,
        skipped=skipped,
        class_order=label_order(names, request.class_names),
    )


# ----------------------------------------------------------------------------------- the checks they share


def folder_class_names(classes: list[str], given: list[str] | None) -> tuple[list[str], str]:
    """The class names of a tree of class folders, and how their indices were assigned (``ImageData.class_order``).

    Given names (the model's) are used as they are. Folders named ``0``, ``1``, ... ``K-1`` are class indices,
    in numeric order (``10`` after ``9``). Any other folder names are sorted: an order of the data's own.

    Examples:
        >>> folder_class_names(["nodule", "normal"], None)
        (['nodule', 'normal'], 'sorted')
        >>> folder_class_names([str(i) for i in range(11)], None)[0][-2:]
        ['9', '10']
    """
    if given:
        return list(given), "given"
    if sorted(classes, key=lambda c: int(c) if c.isdigit() else -1) == [str(i) for i in range(len(classes))]:
        return [str(i) for i in range(len(classes))], "indices"
    return sorted(classes), "sorted"


def label_order(names: list[str], given: list[str] | None) -> str:
    """``ImageData.class_order`` of labels mapped by :func:`labels_to_indices`."""
    if given:
        return "given"
    return "indices" if list(names) == [str(i) for i in range(len(names))] else "sorted"


def labels_to_indices(raw: Any, names: list[str] | None, where: str) -> tuple[np.ndarray, list[str]]:
    """Map labels given as integers or names to indices, with the class names they index.

    Integer-valued labels mean those integers whatever their type: ``3``, ``3.0`` and the strings ``"3"`` and
    ``"3.0"`` all index class 3, alike in CSV and npz. Other strings are class names. A non-integral number
    (``1.5``) is refused, and so are digit strings that are also class names meaning other classes (labels
    "1".."4" for classes named "1".."5"): neither is guessed.

    Args:
        raw: one label per instance: integers, integer-valued floats, or strings (digits or class names).
        names: the classes, if known; otherwise ``0..max`` for integers, the sorted distinct names for strings.
        where: the source, for messages.

    Returns:
        ``(labels [N] int64, class names)``.

    Raises:
        DataLoadError: labels that are not one per instance.
        LabelMismatchError: a non-integral number, a label outside the classes (or implying over
            :data:`MAX_CLASSES` of them), or digit labels whose names and indices disagree.
    """
    arr = np.asarray(raw)
    if arr.ndim != 1:
        raise DataLoadError(f"{where}: labels must be one per instance (1-D), got shape {arr.shape}")
    if arr.dtype.kind in "iub":
        return _checked_indices(arr.astype(np.int64), names, where)
    if arr.dtype.kind == "f":
        return _checked_indices(_integral(arr.tolist(), arr.tolist(), where), names, where)
    as_str = [str(v).strip() for v in arr.tolist()]
    numeric = all(_NUMBER.fullmatch(v) for v in as_str) and len(as_str) > 0
    by_name = (
        [names.index(v) for v in as_str] if names is not None and all(v in names for v in as_str) else None
    )
    if numeric:
        ints = _integral(
            [float(v) for v in as_str], as_str, where, names_tried=by_name is None and bool(names)
        )
        in_range = names is not None and bool(ints.min() >= 0 and ints.max() < len(names))
        if by_name is not None and names is not None and in_range and by_name != ints.tolist():
            k = next(n for n, (a, b) in enumerate(zip(by_name, ints.tolist(), strict=True)) if a != b)
            raise LabelMismatchError(
                f"{where}: labels such as {as_str[k]!r} are both class names and class indices, and they disagree "
                f"({as_str[k]!r} names class {by_name[k]} but indexes class {names[ints[k]]!r}); write the labels "
                "as indices 0..K-1, or as names that are not numbers"
            )
        if by_name is None or in_range:
            return _checked_indices(ints, names, where)
    if names is None:
        names = sorted(set(as_str))
    lookup = {n: i for i, n in enumerate(names)}
    unknown = sorted({v for v in as_str if v not in lookup})
    if unknown:
        raise LabelMismatchError(f"{where}: labels {unknown[:5]} are not among the classes {names[:8]}")
    return np.array([lookup[v] for v in as_str], dtype=np.int64), list(names)


# A number as a label file writes it: 3, -1, 3.0, 2.5, 1e1 (not "nan", "inf" or "0x10": those are names).
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _integral(values: list[float], shown: list[Any], where: str, names_tried: bool = False) -> np.ndarray:
    """The labels as integers, refusing any that is not integer-valued (NaN, 1.5)."""
    for v, s in zip(values, shown, strict=True):
        if not (math.isfinite(v) and v == int(v)):
            among = " and are not among the class names" if names_tried else ""
            raise LabelMismatchError(
                f"{where}: label {s!r} is not an integer{among}: labels must be class indices (integers such as "
                "3 or 3.0) or class names; map such labels to classes before loading"
            )
    return np.array([int(v) for v in values], dtype=np.int64)


def _checked_indices(arr: np.ndarray, names: list[str] | None, where: str) -> tuple[np.ndarray, list[str]]:
    if names is None:
        if arr.size and int(arr.max()) >= MAX_CLASSES:
            raise LabelMismatchError(
                f"{where}: label {int(arr.max())} would mean over {MAX_CLASSES:,} classes: labels must be "
                "class indices 0..K-1 (or give the class names)"
            )
        names = [str(i) for i in range(int(arr.max()) + 1 if arr.size else 0)]
    if arr.size and (arr.min() < 0 or arr.max() >= len(names)):
        raise LabelMismatchError(
            f"{where}: labels range {arr.min()}..{arr.max()} but there are {len(names)} classes {names[:6]}: "
            "labels must index the model's classes"
        )
    return arr.astype(np.int64), list(names)


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """SHA-256 of a file's contents, streamed, cached by (path, mtime, size)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def confine(path: Path, root: Path, where: str) -> Path:
    """Resolve ``path`` (following symlinks) and check it lies under ``root``.

    Raises:
        DataLoadError: the path escapes the data root (``..`` or a symlink pointing outside).
    """
    try:
        resolved = path.resolve()
        root = root.resolve()
    except (RuntimeError, OSError) as exc:  # Python 3.11 raises RuntimeError on a symlink loop
        raise DataLoadError(
            f"{where}: {path} (or the data root {root}) is a symlink loop or cannot be resolved ({exc}); remove "
            "the link or point it at a real file"
        ) from exc
    if resolved != root and root not in resolved.parents:
        raise DataLoadError(
            f"{where}: {path} lies outside the data root {root}; move the file under it or set the data root"
        )
    return resolved


def check_images(
    files: list[Path], labels: list[int], policy: BadImagePolicy, spec: str
) -> tuple[list[Path], list[int], list[tuple[str, str]]]:
    """Open every image once: stop at the first unreadable one, or leave it out (``policy="skip"``).

    Returns:
        ``(kept files, their labels, [(skipped file, why)])``.

    Raises:
        DataLoadError: an unreadable image under ``"error"``, or no readable image at all.
    """
    kept, kept_labels, skipped = [], [], []
    for f, y in zip(files, labels, strict=True):
        try:
            open_image(f)
        except DataLoadError as exc:
            if policy == "error":
                raise DataLoadError(f"{exc} (or pass on_bad_image='skip' to leave such files out)") from exc
            skipped.append((str(f), str(exc)))
            continue
        kept.append(f)
        kept_labels.append(y)
    if not kept:
        raise DataLoadError(f"{spec}: no readable image left ({len(skipped)} skipped)")
    return kept, kept_labels, skipped


def fingerprint_files(files: list[Path], labels: list[int], names: list[str]) -> str:
    """Hash of every file's contents with its label, and the class names (16 hex digits)."""
    h = hashlib.sha256()
    for f, y in zip(files, labels, strict=True):
        h.update(file_digest(f).encode())
        h.update(f"{y}\n".encode())
    h.update(repr(names).encode())
    return h.hexdigest()[:16]
