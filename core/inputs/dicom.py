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

Refused, one line each with the fix: compressed pixel data without its decoder, pixel data that cannot be
decoded. Everything the header alone decides — its bounds, the refused kinds of file, the patient's pseudonym
(only a hash of the patient ID leaves the reading) — is checked first, before any pixel data is read, by
:func:`~essence.core.inputs.dicom_header.open_dicom`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from essence.core.base.errors import DataLoadError, SpecError
from essence.core.inputs.dicom_header import COLOUR, header_count, open_dicom, patient_of, photometric_of
from essence.core.inputs.preprocessing import Preprocessing

WindowPolicy = Literal["header", "range", "fixed"]
DECODERS_HINT = (
    "install a decoder for it (pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, or pyjpegls for "
    "JPEG-LS), or decompress the files first (gdcmconv --raw, or dcmdjpeg)"
)


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
        patient: the patient's pseudonym (:func:`~essence.core.inputs.dicom_header.patient_hash`), or None when
            the file names no patient.
        modality: the file's modality (``CT``, ``MR``...), or ``""``.
        window: ``(center, width)`` applied, or None for colour.
    """

    pixels: np.ndarray
    patient: str | None
    modality: str
    window: tuple[float, float] | None


def read_dicom(path: Path, step: DicomStep) -> DicomImage:
    """Read one DICOM file and apply the DICOM step (see the module docstring).

    Args:
        path: the ``.dcm`` file.
        step: the window policy.

    Returns:
        Its display values and pseudonymous facts.

    Raises:
        DataLoadError: not DICOM, a header out of bounds (:func:`~essence.core.inputs.dicom_header.open_dicom`),
            no pixel data, multi-frame, palette colour, an unsupported transfer syntax, compressed without a
            decoder, or unreadable pixels.
    """
    name = path.name
    ds = open_dicom(path)
    photometric = photometric_of(ds)
    stored = _decode(ds, name)
    if photometric in COLOUR:
        top = float(2 ** header_count(ds, "BitsStored", name, 8) - 1)
        display, window = np.clip(stored.astype(np.float64) / top, 0.0, 1.0), None
    else:
        display, window = _window(ds, stored, step, name)
        if photometric == "MONOCHROME1":
            display = 1.0 - display
    pixels = np.round(display * 65535.0).astype(np.uint16)
    return DicomImage(pixels, patient_of(ds), str(ds.get("Modality", "") or ""), window)


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
