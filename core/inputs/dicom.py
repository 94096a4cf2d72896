"""DICOM images as Essence sees them: one file's pixels mapped to display values by a recorded recipe step.

A DICOM file stores integers (8, 12 or 16 bits, signed or not) whose meaning its header gives: the *modality
LUT* (``RescaleSlope`` / ``RescaleIntercept``, or a LUT sequence) turns them into the modality's unit
(Hounsfield units for CT), and a *window* (``WindowCenter`` / ``WindowWidth``) says which part of that range is
shown. Both decide what the model sees — a narrow window erases everything outside it, as the blur erased the
demo's microaneurysms — so they form a recipe step, :class:`DicomStep`, carried by the dataset's recipe
(:class:`DicomRecipe`): shown in every output beside the blur, and part of every cache key.

The step, per file: stored values → modality LUT → window ``[c − w/2, c + w/2]`` mapped linearly onto [0, 1]
and clipped (``window="header"``: the file's own first window, and where it has none the whole range its
stored bits can hold; ``"range"``: always that range; ``"fixed"``: one window for every file) → MONOCHROME1
inverted (its low values are bright) → kept as 16-bit integers (0..65535, a step of 1.5e-5: below any model's
resolution, and 4× less memory than floats). Colour files (RGB, YBR) have no modality LUT or window: their
values are divided by the largest their stored bits can hold.

Refused, one line each with the fix: a file without pixel data, a multi-frame file (Essence classifies 2-D
images), palette colour, a transfer syntax pydicom does not know, compressed pixel data without its decoder.
The header is checked before any pixel data is read, inflated or decoded (:func:`open_dicom`): ``Rows``,
``Columns``, ``NumberOfFrames``, ``SamplesPerPixel`` and the bits must be whole numbers, their product at most
:data:`~essence.core.inputs.data.MAX_IMAGE_PIXELS` (the images' bound), and ``RescaleSlope`` / ``RescaleIntercept``
finite numbers (a slope of 0 is refused: every pixel would be the intercept). A deflated file is inflated
only as far as its header (at most :data:`HEADER_LIMIT` bytes), then only to the size that header declares.
Patient identifiers are never kept: only a hash of the patient ID (:func:`patient_hash`) leaves this module; a
file rewritten in Essence's own form (:mod:`essence.core.inputs.dicom_spec`) holds that hash already, marked
:data:`PSEUDONYMISED`, and is read as it was.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Literal, cast

import numpy as np

from essence.core.base.errors import DataLoadError, SpecError
from essence.core.inputs.data import MAX_IMAGE_PIXELS
from essence.core.inputs.preprocessing import Preprocessing

WindowPolicy = Literal["header", "range", "fixed"]
EXTRA = "dicom"
INSTALL_HINT = f"pip install 'essence[{EXTRA}]' (or pip install pydicom)"
DECODERS_HINT = (
    "install a decoder for it (pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, or pyjpegls for "
    "JPEG-LS), or decompress the files first (gdcmconv --raw, or dcmdjpeg)"
)
# Patient pseudonyms are hashes of the ID under this fixed label: stable across runs and machines (the same
# patient in two datasets gets the same pseudonym), never the ID itself.
_PATIENT_LABEL = b"essence-patient-v1\x00"
# What a file rewritten in Essence's own form says in DeidentificationMethod: its PatientID is already the
# pseudonym (12 hex digits), read as it is rather than hashed again.
PSEUDONYMISED = "essence-patient-v1 pseudonym; header cut to the pixel module"
_PSEUDONYM = re.compile(r"[0-9a-f]{12}")
# A deflated file is inflated at most this far to read its header (everything before the pixel data).
HEADER_LIMIT = 16 * 2**20
# Values longer than this are left on disk until used (the pixel data, a large private element).
_DEFER = 64 * 2**10
_PIXEL_TAGS = (0x7FE00008, 0x7FE00009, 0x7FE00010)  # FloatPixelData, DoubleFloatPixelData, PixelData
_HEADER_FAULTS = (ValueError, TypeError, KeyError, AttributeError, OverflowError, EOFError, struct.error)
_COLOUR = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420"}
_GREY = {"MONOCHROME1", "MONOCHROME2"}


@dataclass(frozen=True)
class DicomStep:
    """The DICOM step of a recipe: modality LUT, window, MONOCHROME1 inversion, 16-bit display values.

    Attributes:
        window: ``"header"`` (each file's own first window; the range of its stored bits where it has none),
            ``"range"`` (always that range: nothing clipped) or ``"fixed"`` (``center``/``width`` for all).
        center: the window's centre in the modality's unit (HU for CT), with ``"fixed"``.
        width: the window's width (> 0), with ``"fixed"``.
    """

    window: WindowPolicy = "header"
    center: float | None = None
    width: float | None = None

    def __post_init__(self) -> None:
        if self.window not in ("header", "range", "fixed"):
            raise SpecError(f"DICOM window {self.window!r} is not known: use header, range or CENTER,WIDTH")
        if self.window == "fixed":
            if self.center is None or self.width is None or not np.isfinite([self.center, self.width]).all():
                raise SpecError("a fixed DICOM window needs a finite centre and width, e.g. window=40,400")
            if self.width <= 0:
                raise SpecError(f"DICOM window width {self.width:g} must be > 0, e.g. window=40,400")
            object.__setattr__(self, "center", float(self.center))
            object.__setattr__(self, "width", float(self.width))
        elif self.center is not None or self.width is not None:
            raise SpecError(f"DICOM window {self.window!r} takes no centre or width: give window=C,W instead")

    @classmethod
    def parse(cls, text: str) -> DicomStep:
        """``header``, ``range`` or ``CENTER,WIDTH`` (e.g. ``40,400``), as written after ``window=``.

        Raises:
            SpecError: anything else.
        """
        text = text.strip().lower()
        if text == "header":
            return cls(window="header")
        if text == "range":
            return cls(window="range")
        parts = text.split(",")
        try:
            center, width = (float(p) for p in parts)
        except ValueError as exc:
            raise SpecError(
                f"DICOM window {text!r} is not understood: write window=CENTER,WIDTH (e.g. 40,400), "
                "window=header or window=range"
            ) from exc
        return cls(window="fixed", center=center, width=width)

    def to_dict(self) -> dict[str, Any]:
        return {
            "modality_lut": "rescale slope/intercept (or LUT) of each file",
            "window": self.window,
            "center": self.center,
            "width": self.width,
            "monochrome1": "inverted",
            "stored_as": "uint16 display values 0..65535",
        }

    def describe(self) -> str:
        """One line for people, e.g. ``DICOM rescale slope/intercept, window C=40 W=400``."""
        if self.window == "fixed":
            window = f"window C={self.center:g} W={self.width:g}"
        elif self.window == "range":
            window = "window: the stored bits' whole range"
        else:
            window = "window: each file's own (else its stored range)"
        return f"DICOM rescale slope/intercept, {window}, MONOCHROME1 inverted"


@dataclass(frozen=True)
class DicomRecipe(Preprocessing):
    """A recipe whose first step is the DICOM step (see the module docstring); then the usual steps.

    Attributes:
        dicom: the DICOM step that made the dataset's 16-bit display values from the files.
    """

    dicom: DicomStep = field(default_factory=DicomStep)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["dicom"] = self.dicom.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        """A recipe written by :meth:`to_dict` (the ``dicom`` entry as well as the usual keys).

        Raises:
            SpecError: unknown keys or values of the wrong type.
        """
        d = dict(d)
        step = d.pop("dicom", None)
        base = Preprocessing.from_dict(d)
        if not isinstance(step, dict):
            return base
        known: dict[str, Any] = {k: step.get(k) for k in ("window", "center", "width")}
        fields: dict[str, Any] = {**base.__dict__, "dicom": DicomStep(**known)}
        return cls(**fields)

    def describe(self) -> str:
        return f"{self.dicom.describe()}; {super().describe()}"


def with_dicom_step(recipe: Preprocessing | None, step: DicomStep, channels: int) -> DicomRecipe:
    """``recipe`` (the model's, or a plain default) with the DICOM step in front, its scale that of 16 bits.

    Args:
        recipe: the recipe asked for, or None for one fitting the data (greyscale for grey files).
        step: the DICOM step applied.
        channels: 1 for greyscale files, 3 for colour.
    """
    base = recipe or (Preprocessing(mode="L", mean=(0.0,), std=(1.0,)) if channels == 1 else Preprocessing())
    fields = {k: v for k, v in base.__dict__.items() if k != "dicom"}
    fields["scale"] = 65535.0 if base.scale is None else base.scale  # the display values are 16-bit
    return DicomRecipe(**fields, dicom=step)


@dataclass(frozen=True)
class DicomImage:
    """One file's display values and what may be kept of its header.

    Attributes:
        pixels: uint16 ``[H, W]`` (greyscale) or ``[H, W, 3]`` (colour), 0..65535.
        patient: the patient's pseudonym (:func:`patient_hash`), or None when the file names no patient.
        modality: the file's modality (``CT``, ``MR``...), or ``""``.
        window: ``(center, width)`` applied, or None for colour.
    """

    pixels: np.ndarray
    patient: str | None
    modality: str
    window: tuple[float, float] | None


def pydicom_module() -> Any:
    """pydicom, imported on first use.

    Raises:
        DataLoadError: pydicom is not installed (naming the extra that installs it).
    """
    try:
        import pydicom
    except ImportError as exc:
        raise DataLoadError(f"reading DICOM files needs pydicom: {INSTALL_HINT}") from exc
    return pydicom


def patient_hash(patient_id: str) -> str | None:
    """A pseudonym of a patient ID: 12 hex digits of a labelled SHA-256 (None for an empty ID).

    Stable, so one patient's images can be grouped (e.g. to keep a patient out of two splits), but not
    reversible by reading it. It is a pseudonym, not an anonymisation: whoever can list the candidate IDs can
    hash them too.
    """
    text = str(patient_id or "").strip()
    if not text:
        return None
    return hashlib.sha256(_PATIENT_LABEL + text.encode("utf-8", "surrogatepass")).hexdigest()[:12]


def patient_of(ds: Any) -> str | None:
    """The pseudonym of a dataset's patient: its PatientID hashed, or kept where the file is Essence's own form."""
    patient = str(ds.get("PatientID", "") or "").strip()
    if str(ds.get("DeidentificationMethod", "") or "") == PSEUDONYMISED and _PSEUDONYM.fullmatch(patient):
        return patient
    return patient_hash(patient)


def read_dicom(path: Path, step: DicomStep) -> DicomImage:
    """Read one DICOM file and apply the DICOM step (see the module docstring).

    Args:
        path: the ``.dcm`` file.
        step: the window policy.

    Returns:
        Its display values and pseudonymous facts.

    Raises:
        DataLoadError: not DICOM, a header out of bounds (:func:`open_dicom`), no pixel data, multi-frame,
            palette colour, an unsupported transfer syntax, compressed without a decoder, or unreadable pixels.
    """
    name = path.name
    ds = open_dicom(path)
    photometric = _photometric(ds)
    stored = _decode(ds, name)
    if photometric in _COLOUR:
        top = float(2 ** _count(ds, "BitsStored", name, 8) - 1)
        display, window = np.clip(stored.astype(np.float64) / top, 0.0, 1.0), None
    else:
        display, window = _window(ds, stored, step, name)
        if photometric == "MONOCHROME1":
            display = 1.0 - display
    pixels = np.round(display * 65535.0).astype(np.uint16)
    return DicomImage(pixels, patient_of(ds), str(ds.get("Modality", "") or ""), window)


def open_dicom(path: Path) -> Any:
    """One DICOM file's dataset, its header checked before any pixel data is read, inflated or decoded.

    The pixel data stays on disk until used (a deflated file's is inflated, at most to the size its header
    declares). Checked: the pixel data is there, the transfer syntax is known, the dimensions are whole numbers
    whose product is at most :data:`~essence.core.inputs.data.MAX_IMAGE_PIXELS`, one frame, a supported photometric
    interpretation, bits of 1 to 64, a finite rescale slope (not 0) and intercept.

    Raises:
        DataLoadError: one line naming the file, the problem and the fix.
    """
    pydicom = pydicom_module()
    name = path.name
    try:
        with warnings.catch_warnings():  # pydicom's warnings on odd values would break one-line errors
            warnings.simplefilter("ignore")
            meta = pydicom.filereader.read_file_meta_info(path)
            if meta.get("TransferSyntaxUID") == pydicom.uid.DeflatedExplicitVRLittleEndian:
                return _open_deflated(path, meta, name)
            ds = pydicom.dcmread(str(path), defer_size=_DEFER)
            _check_header(ds, name, any(tag in ds for tag in _PIXEL_TAGS))
            return ds
    except DataLoadError:
        raise
    except pydicom.errors.InvalidDicomError as exc:
        raise DataLoadError(
            f"{name}: not a DICOM file (no 'DICM' header); remove it from the folder or convert it"
        ) from exc
    except (OSError, *_HEADER_FAULTS) as exc:
        raise DataLoadError(f"{name}: the DICOM file cannot be read ({exc}); remove or replace it") from exc


def _open_deflated(path: Path, meta: Any, name: str) -> Any:
    """A deflated file's dataset: its header inflated (at most :data:`HEADER_LIMIT`) and checked, then the rest,
    at most the size that header declares."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filereader import read_dataset

    length = meta.get("FileMetaInformationGroupLength")
    if length is None:
        raise DataLoadError(
            f"{name}: a deflated DICOM file without its meta group length; re-save it as Explicit VR Little "
            "Endian (e.g. gdcmconv --raw, or dcmconv +te)"
        )
    start = 128 + 4 + 12 + int(length)  # preamble, "DICM", the group length element, the meta group
    reached: list[int] = []

    def at_pixels(tag: Any, vr: Any, length: int) -> bool:
        if int(tag) in _PIXEL_TAGS:
            reached.append(int(tag))
        return bool(reached)

    # Headers are small: inflate a little, and more only while the pixel data is not reached.
    limit = 64 * 2**10
    while True:
        head, whole = _inflate(path, start, limit, name)
        reached.clear()
        stream = cast(BinaryIO, DicomBytesIO(head))  # a file-like object, as pydicom's own reader casts it
        header = read_dataset(stream, False, True, stop_when=at_pixels)
        if reached or whole:
            break
        if limit >= HEADER_LIMIT:
            raise DataLoadError(
                f"{name}: its header inflates to more than {HEADER_LIMIT // 2**20} MB before the pixel data; "
                "remove or replace the file"
            )
        limit *= 4
    header.file_meta = meta
    _check_header(header, name, bool(reached))
    samples = (
        _count(header, "Rows", name)
        * _count(header, "Columns", name)
        * _count(header, "SamplesPerPixel", name, 1)
    )
    declared = samples * -(-_count(header, "BitsAllocated", name, 64) // 8)  # whole bytes a sample
    data, whole = _inflate(path, start, stream.tell() + declared + 2**20, name)
    if not whole:
        raise DataLoadError(
            f"{name}: its deflated data inflates to more than its header declares ({declared:,} bytes of "
            "pixels); remove or replace the file"
        )
    ds = read_dataset(cast(BinaryIO, DicomBytesIO(data)), False, True)
    ds.file_meta = meta
    return ds


def _inflate(path: Path, start: int, limit: int, name: str) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of the raw deflate stream from ``start``, and whether that was all of it."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    with open(path, "rb") as f:
        f.seek(start)
        try:
            while len(out) < limit and not inflater.eof:
                chunk = inflater.unconsumed_tail or f.read(1 << 16)
                if not chunk:
                    break
                out += inflater.decompress(chunk, limit - len(out))
        except zlib.error as exc:
            raise DataLoadError(
                f"{name}: its deflated data is damaged ({exc}); remove or replace it"
            ) from exc
        whole = inflater.eof or (len(out) < limit and not f.read(1))  # the end, or a stream cut short
    return bytes(out), whole


def _check_header(ds: Any, name: str, has_pixels: bool) -> None:
    """The checks of :func:`open_dicom`, from the header alone (see its docstring)."""
    if not has_pixels:
        kind = str(ds.get("Modality", "") or ds.get("SOPClassUID", "") or "object")
        raise DataLoadError(
            f"{name}: a DICOM {kind} without pixel data (a report, plan or other non-image object); remove it "
            "from the folder"
        )
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    if syntax is not None and not syntax.is_transfer_syntax:
        raise DataLoadError(
            f"{name}: transfer syntax {syntax} is not one pydicom supports; convert the file to Explicit VR "
            "Little Endian (e.g. gdcmconv --raw, or dcmconv +te)"
        )
    frames = _count(ds, "NumberOfFrames", name, 1)
    rows, columns = _count(ds, "Rows", name), _count(ds, "Columns", name)
    samples = _count(ds, "SamplesPerPixel", name, 1)
    if rows * columns * frames * samples > MAX_IMAGE_PIXELS:
        shape = "×".join(str(n) for n in (rows, columns, frames, samples))
        raise DataLoadError(
            f"{name}: its header declares {shape} (rows×columns×frames×samples) = "
            f"{rows * columns * frames * samples:,} pixels, above the limit of {MAX_IMAGE_PIXELS:,}; downscale "
            "the image first (or remove the file)"
        )
    if frames > 1:
        raise DataLoadError(
            f"{name}: a multi-frame DICOM ({frames} frames); Essence classifies 2-D images: export the frame to "
            "classify as a single-frame file (one file per frame or slice)"
        )
    photometric = _photometric(ds)
    if photometric not in _GREY | _COLOUR:
        raise DataLoadError(
            f"{name}: photometric interpretation {photometric} is not supported: convert the file to "
            "MONOCHROME2 or RGB (e.g. apply its colour palette first)"
        )
    for keyword in ("BitsAllocated", "BitsStored"):
        if _count(ds, keyword, name, 8) > 64:
            raise DataLoadError(
                f"{name}: its {keyword} is over 64; the header is damaged: remove or replace it"
            )
    if photometric in _GREY:
        _rescale(ds, name)


def _photometric(ds: Any) -> str:
    return str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()


def _header_value(ds: Any, keyword: str, name: str) -> Any:
    try:
        value = ds.get(keyword)
    except _HEADER_FAULTS as exc:
        raise DataLoadError(
            f"{name}: its {keyword} cannot be read ({exc}); remove or replace the file"
        ) from exc
    return None if value is None or str(value).strip() == "" else value


def _count(ds: Any, keyword: str, name: str, default: int | None = None) -> int:
    """A whole number ≥ 1 of the header: ``default`` where it is absent, empty or 0; refused without one."""
    value = _header_value(ds, keyword, name)
    try:
        number = math.nan if value is None else float(str(value).strip())
    except ValueError:
        number = math.nan
    if default is not None and (value is None or number == 0):
        return default
    if value is None:
        raise DataLoadError(f"{name}: its header has no {keyword}; the file is damaged: remove or replace it")
    if not (math.isfinite(number) and number.is_integer() and number >= 1):
        raise DataLoadError(
            f"{name}: its {keyword} ({str(value)[:40]!r}) is not a whole number ≥ 1; the header is damaged: "
            "remove or replace the file"
        )
    return int(number)


def _rescale(ds: Any, name: str) -> tuple[float, float]:
    """The modality LUT's slope and intercept (1 and 0 where absent): finite numbers, the slope not 0."""
    numbers = []
    for keyword, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)):
        value = _header_value(ds, keyword, name)
        try:
            number = default if value is None else float(str(value).strip())
        except ValueError:
            number = math.nan
        if not math.isfinite(number):
            raise DataLoadError(
                f"{name}: its {keyword} ({str(value)[:40]!r}) is not a finite number; fix the header or remove "
                "the file"
            )
        numbers.append(number)
    if numbers[0] == 0 and "ModalityLUTSequence" not in ds:
        raise DataLoadError(
            f"{name}: its RescaleSlope is 0, which would make every pixel the intercept; fix the header or "
            "remove the file"
        )
    return numbers[0], numbers[1]


def _decode(ds: Any, name: str) -> np.ndarray:
    """The stored values as an array, with one-line errors for what cannot be decoded."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    try:
        return np.asarray(ds.pixel_array)
    except (RuntimeError, NotImplementedError) as exc:
        text = str(exc)
        label = syntax.name if syntax is not None else "its transfer syntax"
        if (
            "missing dependencies" in text
            or "all available plugins" in text
            or "no pixel data" in text.lower()
        ):
            raise DataLoadError(
                f"{name}: its pixel data is compressed ({label}) and cannot be decoded here: {DECODERS_HINT}"
            ) from exc
        if "not supported" in text:
            raise DataLoadError(
                f"{name}: transfer syntax {label} is not supported; convert the file to Explicit VR Little "
                "Endian (e.g. gdcmconv --raw)"
            ) from exc
        raise DataLoadError(
            f"{name}: the pixel data cannot be decoded ({text.splitlines()[0]}); remove or replace the file"
        ) from exc
    except (ValueError, AttributeError, KeyError, TypeError, OSError, EOFError) as exc:
        raise DataLoadError(
            f"{name}: the pixel data cannot be read ({type(exc).__name__}: {str(exc).splitlines()[0][:120]}); "
            "the file may be truncated: remove or replace it"
        ) from exc


def _window(
    ds: Any, stored: np.ndarray, step: DicomStep, name: str
) -> tuple[np.ndarray, tuple[float, float]]:
    """Modality LUT then the window, onto [0, 1] (float64), and the ``(center, width)`` used."""
    try:
        from pydicom.pixels.processing import apply_modality_lut
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers import util

        apply_modality_lut = util.apply_modality_lut
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    if step.center is not None and step.width is not None:  # a fixed window: the step holds them only then
        center, width = step.center, step.width
    else:
        header = _header_window(ds) if step.window == "header" else None
        center, width = header or _stored_range(ds, values)
    if not (np.isfinite(center) and np.isfinite(width) and width > 0):
        raise DataLoadError(
            f"{name}: its window (centre {center:g}, width {width:g}) is not usable: give one with "
            "window=CENTER,WIDTH in the data spec"
        )
    low = center - width / 2.0
    return np.clip((values - low) / width, 0.0, 1.0), (center, width)


def _header_window(ds: Any) -> tuple[float, float] | None:
    """The file's first (WindowCenter, WindowWidth), or None when it has none (or an unusable one)."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None:
        return None
    first = [
        v[0] if isinstance(v, list | tuple) or type(v).__name__ == "MultiValue" else v
        for v in (center, width)
    ]
    try:
        c, w = float(first[0]), float(first[1])
    except (TypeError, ValueError, IndexError):
        return None
    return (c, w) if np.isfinite(c) and np.isfinite(w) and w > 0 else None


def _stored_range(ds: Any, values: np.ndarray) -> tuple[float, float]:
    """The window covering every value the stored bits can hold, through the modality LUT (a linear one)."""
    bits = int(ds.get("BitsStored", 0) or 0) or int(values.dtype.itemsize * 8 if values.size else 16)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    a, b = sorted((low * slope + intercept, high * slope + intercept))
    if "ModalityLUTSequence" in ds and values.size:  # a LUT is not linear: its own output range
        a, b = float(values.min()), float(values.max())
    return (a + b) / 2.0, max(b - a, 1e-12)
