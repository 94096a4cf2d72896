"""The ``dicom:`` data spec: a folder of DICOM files, labelled by class folders or by a CSV.

Forms (an option string after ``?`` sets the window of the DICOM step, :class:`~essence.core.inputs.dicom.DicomStep`)::

    dicom:FOLDER                  one sub-folder of .dcm files per class (sorted names)
    dicom:LABELS.csv              rows of path,label (optional header); paths relative to the CSV
    dicom:FOLDER?window=40,400    one window (centre, width in the modality's unit) for every file
    dicom:FOLDER?window=range     each file's whole stored range (nothing clipped); default: window=header

Every file is decoded once, through the DICOM step, into 16-bit display values held in memory (2 bytes a
pixel); the recipe's other steps (resize, blur, normalisation) follow as for any dataset. Files of different
sizes are resized to the recipe's size as they are read (without a size they are refused, naming the sizes).
The dataset keeps a pseudonym of each instance's patient (:attr:`DicomData.patients`), never an identifier.

Essence's own form of a file (:func:`write_deidentified`, what the app keeps of an upload): a DICOM file holding
only what the DICOM step reads — the pixel data as stored (still compressed where it was), the image pixel
module (rows, columns, samples, photometric interpretation, bits, representation, planar configuration,
frames), the modality LUT (rescale slope, intercept and type, or a LUT's descriptor and data), the window
(centre, width), the modality and SOP class — and the patient's pseudonym in place of the patient ID, marked
:data:`~essence.core.inputs.dicom_header.PSEUDONYMISED`. No name, birth date, institution, physician, date, description or
instance UID is copied: it reads as the original did (the same display values, pseudonym, window and errors).
"""

from __future__ import annotations

import csv
import hashlib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from essence.core.base.errors import DataLoadError, LabelMismatchError, SpecError
from essence.core.inputs import specs
from essence.core.inputs.data import ImageData, hash_arrays
from essence.core.inputs.dicom import DicomImage, DicomStep, read_dicom, with_dicom_step
from essence.core.inputs.dicom_header import PSEUDONYMISED, open_dicom, patient_of, pydicom_module
from essence.core.inputs.formats import confine
from essence.core.inputs.labels import labels_to_indices
from essence.core.inputs.specs import DataRequest

DICOM_SUFFIXES = {".dcm", ".dicom"}
# What Essence's own form keeps of a file (see the module docstring); nothing else is copied.
_IMAGE = ("SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration", "NumberOfFrames")
_SIZE = ("Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation")
_LUTS = (
    "RescaleIntercept",
    "RescaleSlope",
    "RescaleType",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
)
_PIXELS = ("ExtendedOffsetTable", "ExtendedOffsetTableLengths", "FloatPixelData", "DoubleFloatPixelData")
KEPT = ("SOPClassUID", "Modality", *_IMAGE, *_SIZE, *_LUTS, *_PIXELS, "PixelData")
_LUT_KEPT = ("LUTDescriptor", "ModalityLUTType", "LUTData")
# Text kept only where it has the form its VR allows (a code string, a UID): free text never passes.
_CODE = re.compile(r"[A-Z0-9 _]{1,16}")
_UID = re.compile(r"[0-9.]{1,64}")
FORMS = "dicom:FOLDER (one sub-folder per class) or dicom:LABELS.csv (path,label), optionally ?window=C,W"


@dataclass
class DicomData(ImageData):
    """An :class:`ImageData` read from DICOM files, with what may be kept of each file.

    Attributes:
        patients: ``[N]`` each instance's patient pseudonym (:func:`~essence.core.inputs.dicom_header.patient_hash`) or None.
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
                raise DataLoadError(f"{exc} (or pass on_bad_image='skip' to leave such files out)") from exc
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
            "give the recipe a size (size=(H, W))"
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
    display: np.ndarray = np.clip(y.round().numpy(), 0, 65535).astype(np.uint16)
    return display


def looks_like_dicom(path: Path) -> bool:
    """Whether a file is named as DICOM (``.dcm``, ``.dicom``) or carries the ``DICM`` marker at byte 128."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def in_own_form(path: Path) -> bool:
    """Whether a DICOM file is already in Essence's own form: marked so, holding nothing :data:`KEPT` leaves out."""
    try:
        ds = open_dicom(path)
    except DataLoadError:
        return False
    from pydicom.datadict import keyword_for_tag

    allowed = {*KEPT, "PatientID", "PatientIdentityRemoved", "DeidentificationMethod"}
    if str(ds.get("DeidentificationMethod", "")) != PSEUDONYMISED:
        return False
    tags = ds.keys()  # the tags only: iterating the dataset itself would read the deferred pixel data
    if any(keyword_for_tag(tag) not in allowed for tag in tags):
        return False
    items = [item.keys() for item in ds.get("ModalityLUTSequence") or []]
    return all(keyword_for_tag(tag) in _LUT_KEPT for keys in items for tag in keys)


def write_deidentified(source: Path, dest: Path) -> None:
    """Write ``source`` in Essence's own form (see the module docstring) to ``dest``.

    The header is checked first, as :func:`~essence.core.inputs.dicom.read_dicom` checks it (before any pixel data is
    read); the pixel data is copied, not decoded, in the file's own transfer syntax.

    Raises:
        DataLoadError: the file is not DICOM or is refused (one line naming it, as reading it would).
    """
    pydicom = pydicom_module()
    from pydicom.dataset import Dataset, FileMetaDataset

    ds = open_dicom(source)
    out = Dataset()
    for keyword in KEPT:
        if keyword in ds:
            out[keyword] = ds[keyword]
    for keyword, form in (("Modality", _CODE), ("SOPClassUID", _UID)):
        if keyword in out and not form.fullmatch(str(out[keyword].value or "")):
            del out[keyword]
    if "ModalityLUTSequence" in out:
        out.ModalityLUTSequence = [_only(item, _LUT_KEPT) for item in ds.ModalityLUTSequence]
    patient = patient_of(ds)
    if patient is not None:
        out.PatientID = patient
    out.PatientIdentityRemoved = "YES"
    out.DeidentificationMethod = PSEUDONYMISED
    syntax = ds.file_meta.get("TransferSyntaxUID") or pydicom.uid.ExplicitVRLittleEndian
    pixels = next(out[k].value for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData") if k in out)
    out.file_meta = FileMetaDataset()
    out.file_meta.TransferSyntaxUID = syntax
    out.file_meta.MediaStorageSOPClassUID = out.get("SOPClassUID") or pydicom.uid.SecondaryCaptureImageStorage
    digest = hashlib.sha256(bytes(pixels or b"") + (patient or "").encode()).hexdigest()
    out.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[digest])
    _save(pydicom, out, syntax, dest)


def _only(item: Any, keywords: tuple[str, ...]) -> Any:
    from pydicom.dataset import Dataset

    kept = Dataset()
    for keyword in keywords:
        if keyword in item:
            kept[keyword] = item[keyword]
    return kept


def _save(pydicom: Any, ds: Any, syntax: Any, dest: Path) -> None:
    """Write a DICOM file with its meta information (pydicom 3, or 2.4's spelling of the same)."""
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(dest, enforce_file_format=True)
        return
    ds.is_little_endian, ds.is_implicit_VR = syntax.is_little_endian, syntax.is_implicit_VR
    ds.save_as(dest, write_like_original=False)


specs.register_data_spec("dicom", load_dicom)
