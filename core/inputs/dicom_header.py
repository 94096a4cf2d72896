"""A DICOM file's header, checked before any of its pixel data is read, and its patient's pseudonym.

:func:`open_dicom` is the one way Essence opens a DICOM file. The header is checked before any pixel data is
read, inflated or decoded: ``Rows``, ``Columns``, ``NumberOfFrames``, ``SamplesPerPixel`` and the bits must be
whole numbers, their product at most :data:`~essence.core.inputs.data.MAX_IMAGE_PIXELS` (the images' bound), and
``RescaleSlope`` / ``RescaleIntercept`` finite numbers (a slope of 0 is refused: every pixel would be the
intercept). A deflated file is inflated only as far as its header (at most :data:`HEADER_LIMIT` bytes), then only
to the size that header declares. Refused here, one line each with the fix: a file that is not DICOM, one
without pixel data, a multi-frame file (Essence classifies 2-D images), palette colour, a transfer syntax
pydicom does not know.

Patient identifiers are never kept: only a hash of the patient ID (:func:`patient_hash`) leaves this module; a
file rewritten in Essence's own form (:mod:`essence.core.inputs.dicom_spec`) holds that hash already, marked
:data:`PSEUDONYMISED`, and is read as it was. The pixels themselves are :mod:`essence.core.inputs.dicom`'s.
"""

from __future__ import annotations

import hashlib
import math
import re
import struct
import warnings
import zlib
from pathlib import Path
from typing import Any, BinaryIO, cast

from essence.core.base.errors import DataLoadError
from essence.core.inputs.data import MAX_IMAGE_PIXELS

EXTRA = "dicom"
INSTALL_HINT = f"pip install 'essence[{EXTRA}]' (or pip install pydicom)"
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
# The photometric interpretations read: colour ones (no modality LUT or window) and grey ones.
COLOUR = {"RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "YBR_PARTIAL_420"}
GREY = {"MONOCHROME1", "MONOCHROME2"}


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
        header_count(header, "Rows", name)
        * header_count(header, "Columns", name)
        * header_count(header, "SamplesPerPixel", name, 1)
    )
    declared = samples * -(-header_count(header, "BitsAllocated", name, 64) // 8)  # whole bytes a sample
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
    frames = header_count(ds, "NumberOfFrames", name, 1)
    rows, columns = header_count(ds, "Rows", name), header_count(ds, "Columns", name)
    samples = header_count(ds, "SamplesPerPixel", name, 1)
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
    photometric = photometric_of(ds)
    if photometric not in GREY | COLOUR:
        raise DataLoadError(
            f"{name}: photometric interpretation {photometric} is not supported: convert the file to "
            "MONOCHROME2 or RGB (e.g. apply its colour palette first)"
        )
    for keyword in ("BitsAllocated", "BitsStored"):
        if header_count(ds, keyword, name, 8) > 64:
            raise DataLoadError(
                f"{name}: its {keyword} is over 64; the header is damaged: remove or replace it"
            )
    if photometric in GREY:
        _rescale(ds, name)


def photometric_of(ds: Any) -> str:
    """The file's photometric interpretation, upper case (``MONOCHROME2`` where the header names none)."""
    return str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip().upper()


def _header_value(ds: Any, keyword: str, name: str) -> Any:
    try:
        value = ds.get(keyword)
    except _HEADER_FAULTS as exc:
        raise DataLoadError(
            f"{name}: its {keyword} cannot be read ({exc}); remove or replace the file"
        ) from exc
    return None if value is None or str(value).strip() == "" else value


def header_count(ds: Any, keyword: str, name: str, default: int | None = None) -> int:
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
