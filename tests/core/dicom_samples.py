"""DICOM folders made from pydicom's bundled test files (offline): real headers, varied pixel data.

``CT_small.dcm`` (signed 16-bit, rescale intercept −1024, no window) and ``MR_small.dcm`` (signed 16-bit, window
600/1600) are both cut to 64×64, and each copy gets its own pixel values, so the instances differ.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

pydicom = __import__("pytest").importorskip("pydicom", reason="the dicom extra is part of dev")
from pydicom.data import get_testdata_file  # noqa: E402

# What the bundled files name their patients: none of it may reach an output.
PATIENT_TEXT = ("CompressedSamples", "1CT1", "4MR1")
SIDE = 64


def sample(name: str) -> pydicom.Dataset:
    return pydicom.dcmread(get_testdata_file(name))


def varied(name: str, seed: int) -> pydicom.Dataset:
    """A bundled file cut to 64×64 with its pixel values shifted and jittered (same dtype, same header)."""
    ds = sample(name)
    pixels = ds.pixel_array
    step = pixels.shape[0] // SIDE
    pixels = pixels[::step, ::step][:SIDE, :SIDE].astype(np.int32)
    rng = np.random.default_rng(seed)
    pixels = pixels + rng.integers(-40, 40, pixels.shape) + 30 * seed
    ds.PixelData = np.clip(pixels, -32768, 32767).astype(np.int16).tobytes()
    ds.Rows, ds.Columns = pixels.shape
    return ds


def dicom_folder(root: Path, per_class: int = 4) -> Path:
    """``root/ct/*.dcm`` and ``root/mr/*.dcm``, ``per_class`` files each."""
    for cls, source in (("ct", "CT_small.dcm"), ("mr", "MR_small.dcm")):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            varied(source, i).save_as(root / cls / f"{cls}{i}.dcm")
    return root
