"""The ``dicom:`` data spec: a folder of DICOM files, labelled by class folders or by a CSV.

Forms (an option string after ``?`` sets the window of the DICOM step, :class:`~essence.core.dicom.DicomStep`)::

    dicom:FOLDER                  one sub-folder of .dcm files per class (sorted names)
    dicom:LABELS.csv              rows of path,label (optional header); paths relative to the CSV
    dicom:FOLDER?window=40,400    one window (centre, width in the modality's unit) for every file
    dicom:FOLDER?window=range     each file's whole stored range (nothing clipped); default: window=header

Every file is decoded once, through the DICOM step, into 16-bit display values held in memory (2 bytes a
pixel); the recipe's other steps (resize, blur, normalisation) follow as for any dataset. Files of different
sizes are resized to the recipe's size as they are read (without a size they are refused, naming the sizes).
The dataset keeps a pseudonym of each instance's patient (:attr:`DicomData.patients`), never an identifier.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from essence.core import specs
from essence.core.data import ImageData, hash_arrays
from essence.core.dicom import DicomImage, DicomStep, read_dicom, with_dicom_step
from essence.core.errors import DataLoadError, LabelMismatchError, SpecError
from essence.core.formats import confine, labels_to_indices
from essence.core.specs import DataRequest

DICOM_SUFFIXES = {".dcm", ".dicom"}
FORMS = "dicom:FOLDER (one sub-folder per class) or dicom:LABELS.csv (path,label), optionally ?window=C,W"


@dataclass
class DicomData(ImageData):
    """An :class:`ImageData` read from DICOM files, with what may be kept of each file.

    Attributes:
        patients: ``[N]`` each instance's patient pseudonym (:func:`~essence.core.dicom.patient_hash`) or None.
        sources: ``[N]`` each instance's file, relative to the dataset's folder (or the CSV's).
        modalities: ``[N]`` each file's modality (``CT``, ``MR``...).
    """

    patients: list[str | None] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)


def parse_spec(arg: str) -> tuple[Path, DicomStep]:
    """Split ``PATH?window=...`` into the path and the DICOM step.

    Raises:
        SpecError: no path, or an option that is not ``window``.
    """
    path, _, options = arg.partition("?")
    if not path.strip():
        raise SpecError(f"data spec dicom:{arg} needs a path: use {FORMS}")
    step = DicomStep()
    for option in filter(None, options.split("&")):
        key, eq, value = option.partition("=")
        if key.strip().lower() != "window" or not eq:
            raise SpecError(
                f"dicom: option {option!r} is not known: the only option is window=C,W|header|range"
            )
        step = DicomStep.parse(value)
    return Path(path.strip()), step


def load_dicom(request: DataRequest) -> DicomData:
    """The ``dicom:`` loader (see the module docstring).

    Raises:
        SpecError: a malformed spec. DataLoadError: no DICOM files, a file that cannot be read (each refusal
            names its fix), images of different sizes without a recipe size. LabelMismatchError: labels that
            are not the classes.
    """
    path, step = parse_spec(request.arg)
    files, raw_labels, names = _listing(path, request)
    base = Path(request.data_root) if request.data_root else (path if path.is_dir() else path.parent)
    images: list[DicomImage] = []
    kept: list[int] = []
    skipped: list[tuple[str, str]] = []
    for i, f in enumerate(files):
        confine(f, base, request.spec)
        try:
            images.append(read_dicom(f, step))
        except DataLoadError as exc:
            if request.on_bad_image == "error":
                raise DataLoadError(f"{exc} (or pass --skip-bad-images to leave such files out)") from exc
            skipped.append((f.name, str(exc)))
            continue
        kept.append(i)
    if not images:
        raise DataLoadError(f"{request.spec}: no readable DICOM image left ({len(skipped)} skipped)")
    labels, names = labels_to_indices(np.array([raw_labels[i] for i in kept]), names, request.spec)
    channels = 3 if any(im.pixels.ndim == 3 for im in images) else 1
    recipe = with_dicom_step(request.preprocessing, step, channels)
    arrays = _stack([im.pixels for im in images], channels, recipe.size, request.spec)
    root = path if path.is_dir() else path.parent
    return DicomData(
        spec=request.spec,
        labels=labels,
        class_names=list(names),
        preprocessing=recipe,
        fingerprint=hash_arrays(arrays, labels, extra=repr(list(names))),
        arrays=arrays,
        skipped=skipped,
        patients=[im.patient for im in images],
        sources=[_relative(files[i], root) for i in kept],
        modalities=[im.modality for im in images],
    )


def _relative(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.name


def _listing(path: Path, request: DataRequest) -> tuple[list[Path], list[str], list[str] | None]:
    """The files, their raw labels and the class names (None: from the labels)."""
    if path.is_dir():
        classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
        if not classes:
            raise DataLoadError(
                f"{path}: no class sub-folders; put each class's .dcm files in a sub-folder named after it, or "
                "label them with a CSV (dicom:LABELS.csv)"
            )
        names = request.class_names or classes
        unknown = [c for c in classes if c not in names]
        if unknown:
            raise LabelMismatchError(
                f"{path}: class folders {unknown[:5]} are not among the model's classes {names[:8]}"
            )
        files, labels = [], []
        for c in classes:
            for f in sorted((path / c).rglob("*")):
                if f.suffix.lower() in DICOM_SUFFIXES and f.is_file():
                    files.append(f)
                    labels.append(c)
        if not files:
            raise DataLoadError(f"{path}: no DICOM files (.dcm, .dicom) in the class folders")
        return files, labels, list(names)
    if path.is_file() and path.suffix.lower() == ".csv":
        return _csv_listing(path, request.class_names)
    raise DataLoadError(f"{path}: neither a folder nor a CSV file; use {FORMS}")


def _csv_listing(path: Path, class_names: list[str] | None) -> tuple[list[Path], list[str], list[str] | None]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (UnicodeDecodeError, csv.Error, OSError) as exc:
        raise DataLoadError(f"{path}: not a readable UTF-8 CSV of path,label ({exc})") from exc
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        rows = rows[1:]
    if not rows:
        raise DataLoadError(f"{path}: no rows; the CSV needs lines of path,label")
    files, labels = [], []
    for n, row in enumerate(rows, start=1):
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise DataLoadError(f"{path} row {n}: expected path,label, got {row!r}")
        p = Path(row[0].strip())
        p = p if p.is_absolute() else path.parent / p
        if not p.is_file():
            raise DataLoadError(
                f"{path} row {n}: file {row[0].strip()!r} not found; fix the path or remove the row"
            )
        files.append(p)
        labels.append(row[1].strip())
    return files, labels, class_names


def _stack(pixels: list[np.ndarray], channels: int, size: tuple[int, int] | None, spec: str) -> np.ndarray:
    """One uint16 array ``[N, H, W]`` or ``[N, H, W, 3]``; differing sizes resized to ``size`` (or refused)."""
    if channels == 3:
        pixels = [p if p.ndim == 3 else np.repeat(p[..., None], 3, axis=-1) for p in pixels]
    shapes = sorted({p.shape[:2] for p in pixels})
    if len(shapes) == 1:
        return np.stack(pixels)
    if size is None:
        raise DataLoadError(
            f"{spec}: the DICOM images have different sizes ({', '.join(f'{h}×{w}' for h, w in shapes[:3])}); "
            "give the recipe a size (CLI: --size H W)"
        )
    return np.stack([_resized(p, size) for p in pixels])


def _resized(p: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear, antialiased resize of 16-bit display values (the recipe's own resize, done as read)."""
    if p.shape[:2] == tuple(size):
        return p
    x = torch.from_numpy(p.astype(np.float32))
    x = x[None, None] if x.ndim == 2 else x.permute(2, 0, 1)[None]
    y = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    y = y[0] if p.ndim == 2 else y.permute(1, 2, 0)
    return np.clip(y.round().numpy(), 0, 65535).astype(np.uint16)


specs.register_data_spec("dicom", load_dicom)
