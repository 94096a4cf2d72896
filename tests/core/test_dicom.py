"""The ``dicom:`` data spec: values scaled as the header says, the window as a recorded step, refusals, privacy."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from dicom_samples import PATIENT_TEXT, dicom_folder, sample, varied
from pydicom.data import get_testdata_file

from essence.core.base.errors import DataLoadError, SpecError
from essence.core.inputs.datasets import load_dataset
from essence.core.inputs.dicom import DicomRecipe, DicomStep, read_dicom
from essence.core.inputs.dicom_header import patient_hash
from essence.core.inputs.preprocessing import Preprocessing

GREY = Preprocessing(mode="L", mean=(0.0,), std=(1.0,))


def test_signed_values_go_through_the_rescale_then_the_window(tmp_path: Path) -> None:
    ds = varied("CT_small.dcm", 0)
    ds.save_as(tmp_path / "ct.dcm")
    stored = ds.pixel_array.astype(np.float64)
    hu = stored * float(ds.RescaleSlope) + float(ds.RescaleIntercept)  # intercept −1024
    image = read_dicom(tmp_path / "ct.dcm", DicomStep.parse("40,400"))
    expected = np.clip((hu - (40 - 200)) / 400, 0, 1)
    np.testing.assert_allclose(image.pixels / 65535.0, expected, atol=1e-5)
    assert image.window == (40.0, 400.0)
    # without a window in the header: the range the signed 16 bits can hold, through the rescale
    whole = read_dicom(tmp_path / "ct.dcm", DicomStep())
    low = -32768 - 1024
    np.testing.assert_allclose(whole.pixels / 65535.0, (hu - low) / 65535.0, atol=1e-5)


def test_the_files_own_window_and_monochrome1(tmp_path: Path) -> None:
    ds = varied("MR_small.dcm", 1)
    ds.save_as(tmp_path / "mr.dcm")
    values = ds.pixel_array.astype(np.float64)  # no rescale in MR_small
    image = read_dicom(tmp_path / "mr.dcm", DicomStep())
    assert image.window == (600.0, 1600.0)
    np.testing.assert_allclose(image.pixels / 65535.0, np.clip((values + 200) / 1600, 0, 1), atol=1e-5)
    ds.PhotometricInterpretation = "MONOCHROME1"
    ds.save_as(tmp_path / "inverted.dcm")
    inverted = read_dicom(tmp_path / "inverted.dcm", DicomStep())
    np.testing.assert_allclose(inverted.pixels.astype(float), 65535 - image.pixels.astype(float), atol=1)


def test_the_window_is_a_recipe_step_shown_and_fingerprinted(tmp_path: Path) -> None:
    folder = dicom_folder(tmp_path / "scans", per_class=2)
    header = load_dataset(f"dicom:{folder}", GREY)
    narrow = load_dataset(f"dicom:{folder}?window=40,400", GREY)
    assert isinstance(header.preprocessing, DicomRecipe)
    assert header.class_names == ["ct", "mr"] and header.labels.tolist() == [0, 0, 1, 1]
    assert header.arrays.dtype == np.uint16 and header.preprocessing.scale == 65535.0
    assert "DICOM rescale slope/intercept" in header.preprocessing.describe()
    assert "window C=40 W=400" in narrow.preprocessing.describe()
    assert narrow.preprocessing.to_dict()["dicom"]["center"] == 40.0
    assert narrow.preprocessing.fingerprint() != header.preprocessing.fingerprint()
    assert narrow.fingerprint != header.fingerprint
    again = DicomRecipe.from_dict(json.loads(json.dumps(narrow.preprocessing.to_dict())))
    assert again == narrow.preprocessing and again.fingerprint() == narrow.preprocessing.fingerprint()
    x = narrow.tensors([0, 3])
    assert x.shape == (2, 1, 64, 64) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0


def test_labels_from_a_csv_and_patients_kept_as_pseudonyms_only(tmp_path: Path) -> None:
    folder = dicom_folder(tmp_path / "scans", per_class=2)
    rows = ["path,label", "ct/ct0.dcm,ct", "ct/ct1.dcm,ct", "mr/mr0.dcm,mr", "mr/mr1.dcm,mr"]
    (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    data = load_dataset(f"dicom:{folder / 'labels.csv'}", GREY)
    assert data.labels.tolist() == [0, 0, 1, 1] and data.sources[0] == "ct/ct0.dcm"
    ct_id = str(sample("CT_small.dcm").PatientID)
    assert data.patients[0] == patient_hash(ct_id) and data.patients[0] != data.patients[2]
    assert len(data.patients[0]) == 12
    kept = json.dumps([data.patients, data.sources, data.preprocessing.to_dict(), data.spec])
    assert not any(text in kept for text in PATIENT_TEXT)


def test_images_of_different_sizes_need_a_size(tmp_path: Path) -> None:
    folder = dicom_folder(tmp_path / "scans", per_class=1)
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "ct" / "big.dcm")  # 128×128
    with pytest.raises(DataLoadError, match=r"different sizes \(64×64, 128×128\).*size=\(H, W\)"):
        load_dataset(f"dicom:{folder}", GREY)
    resized = load_dataset(f"dicom:{folder}", Preprocessing(mode="L", size=(32, 32), mean=(0.0,), std=(1.0,)))
    assert resized.arrays.shape == (3, 32, 32)


def bad_file(tmp_path: Path, kind: str) -> Path:
    folder = dicom_folder(tmp_path / kind, per_class=1)
    target = folder / "ct" / "bad.dcm"
    if kind == "no pixels":
        shutil.copy(get_testdata_file("rtplan.dcm"), target)
    elif kind == "no decoder":
        shutil.copy(get_testdata_file("MR_small_jpeg_ls_lossless.dcm"), target)
    elif kind == "unknown syntax":
        ds = sample("MR_small.dcm")
        ds.file_meta.TransferSyntaxUID = "1.2.3.4.5.6"
        ds.save_as(target, enforce_file_format=True)
    elif kind == "multi-frame":
        shutil.copy(get_testdata_file("SC_rgb_rle_2frame.dcm"), target)
    else:
        target.write_bytes(b"not dicom at all")
    return folder


@pytest.mark.parametrize(
    ("kind", "message"),
    [
        ("no pixels", r"bad\.dcm: a DICOM RTPLAN without pixel data .*remove it from the folder"),
        ("no decoder", r"bad\.dcm: its pixel data is compressed \(JPEG-LS Lossless.*pip install pylibjpeg"),
        (
            "unknown syntax",
            r"bad\.dcm: transfer syntax 1\.2\.3\.4\.5\.6 is not one pydicom supports.*gdcmconv",
        ),
        ("multi-frame", r"bad\.dcm: a multi-frame DICOM \(2 frames\).*single-frame file"),
        ("not dicom", r"bad\.dcm: not a DICOM file .*remove it"),
    ],
)
def test_bad_files_are_refused_in_one_line_naming_the_fix(tmp_path: Path, kind: str, message: str) -> None:
    folder = bad_file(tmp_path, kind)
    with pytest.raises(DataLoadError, match=message) as caught:
        load_dataset(f"dicom:{folder}", GREY)
    assert "\n" not in str(caught.value) and "on_bad_image='skip'" in str(caught.value)
    skipped = load_dataset(f"dicom:{folder}", GREY, on_bad_image="skip")
    assert len(skipped) == 2 and [name for name, _ in skipped.skipped] == ["bad.dcm"]


def test_malformed_specs_name_the_fix(tmp_path: Path) -> None:
    folder = dicom_folder(tmp_path / "scans", per_class=1)
    with pytest.raises(SpecError, match="window=CENTER,WIDTH"):
        load_dataset(f"dicom:{folder}?window=soft", GREY)
    with pytest.raises(SpecError, match="width -5 must be > 0"):
        load_dataset(f"dicom:{folder}?window=40,-5", GREY)
    with pytest.raises(SpecError, match="the only option is window"):
        load_dataset(f"dicom:{folder}?level=3", GREY)
    with pytest.raises(DataLoadError, match="no class sub-folders"):
        load_dataset(f"dicom:{folder / 'ct'}", GREY)
