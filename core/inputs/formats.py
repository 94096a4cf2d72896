"""The built-in data formats: ``digits``, ``npz:PATH``, ``folder:PATH`` (ImageFolder), ``csv:PATH`` (path,label).

Each loader takes a :class:`~essence.core.inputs.specs.DataRequest` and returns an :class:`ImageData`; it is registered
under its prefix by :mod:`essence.core.inputs.datasets`. The checks every file format shares live here too: which
files are images, paths confined to the data root, unreadable images named or skipped, and fingerprints of the
files and labels (a cache key: a changed image or label is a new dataset). Labels given as indices or names are
mapped by :mod:`essence.core.inputs.labels`.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
import zipfile
import zlib
from pathlib import Path

import numpy as np

from essence.core.base.errors import DataLoadError, LabelMismatchError, SpecError
from essence.core.base.files import regular_file
from essence.core.inputs.data import ImageData, hash_arrays, open_image
from essence.core.inputs.labels import folder_class_names, label_order, labels_to_indices
from essence.core.inputs.preprocessing import Preprocessing
from essence.core.inputs.specs import BadImagePolicy, DataRequest

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
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
