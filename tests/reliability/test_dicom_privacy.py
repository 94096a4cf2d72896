"""DICOM privacy and header bounds: what an upload keeps on disk, what Remove deletes, what a header may declare.

- An uploaded DICOM zip (class folders or a CSV of .dcm; uncompressed, deflated, big endian, RLE) is kept in
  Essence's own form only: after the upload and an analysis, no file under ``ESSENCE_HOME`` (the uploads, the
  SQLite store and its WAL, the matrices) holds a name, ID, birth date, institution or physician of the
  headers, nor the uploaded bytes; the data read back is the same as the originals' (display values, patient
  pseudonyms, fingerprint). Remove deletes the upload's folder, and only it.
- A header with text where numbers belong, a non-finite or zero rescale, or dimensions whose product is above
  the images' pixel bound is refused in one line naming the file, before any pixel data is decoded;
  ``--skip-bad-images`` (and the app's switch) leave such a file out.
- A ~500 KB deflated file (and a tiny RLE one) declaring 16384×16384 pixels is refused from its header without
  inflating or allocating its pixels.
- Registry rows of the wrong types are skipped with one warning; every spec kind the upload page gives is
  listed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import logging
import tracemalloc
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

pydicom = pytest.importorskip("pydicom", reason="the dicom extra is part of dev")
from pydicom.data import get_testdata_file  # noqa: E402
from pydicom.dataset import Dataset, FileMetaDataset  # noqa: E402
from pydicom.filebase import DicomBytesIO  # noqa: E402
from pydicom.filewriter import write_dataset, write_file_meta_info  # noqa: E402
from pydicom.uid import (  # noqa: E402
    DeflatedExplicitVRLittleEndian,
    RLELossless,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from essence.core.base.errors import DataLoadError  # noqa: E402
from essence.core.inputs import dicom  # noqa: E402
from essence.core.inputs.data import MAX_IMAGE_PIXELS  # noqa: E402
from essence.core.inputs.datasets import load_dataset  # noqa: E402
from essence.core.inputs.dicom import DicomStep, read_dicom  # noqa: E402
from essence.core.inputs.dicom_header import patient_hash  # noqa: E402
from essence.core.inputs.preprocessing import Preprocessing  # noqa: E402

_spec = importlib.util.spec_from_file_location(
    "dicom_samples", Path(__file__).parents[1] / "core" / "dicom_samples.py"
)
samples = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(samples)  # type: ignore[union-attr]

GREY = Preprocessing(mode="L", mean=(0.0,), std=(1.0,))
# What the crafted headers say of a person: none of it may be on disk once the upload is done.
IDENTITY = {
    "PatientName": "Quillfeather^Zenobia",
    "PatientID": "ZQ-4471-PID",
    "PatientBirthDate": "19230417",
    "PatientAddress": "12 Xylophone Lane Quarrelton",
    "OtherPatientIDs": "ZQ-OTHER-9911",
    "InstitutionName": "Hospital of Quarrelsome Tests",
    "InstitutionAddress": "Quarrelsome Road Wexbury",
    "ReferringPhysicianName": "Vexworth^Ottoline",
    "OperatorsName": "Operatorian^Ulfrida",
    "AccessionNumber": "ACC-ZQ-5510",
    "StudyDescription": "Zenobia's quarrelsome study",
}
PRIVATE_TEXT = "Private-Zenobia-Mark"
NESTED_TEXT = "Procedure for Quillfeather"
NEEDLES = (
    *{part for value in IDENTITY.values() for part in value.split("^")},
    PRIVATE_TEXT,
    NESTED_TEXT,
    *samples.PATIENT_TEXT,
)


def identified(ds: Dataset, patient: int = 0) -> Dataset:
    """``ds`` naming a person everywhere a header can: standard elements, a private one, a nested sequence."""
    for keyword, value in IDENTITY.items():
        setattr(ds, keyword, value if keyword != "PatientID" else f"{value}-{patient}")
    block = ds.private_block(0x0011, "QUARREL", create=True)
    block.add_new(0x10, "LO", PRIVATE_TEXT)
    item = Dataset()
    item.RequestedProcedureDescription = NESTED_TEXT
    ds.RequestAttributesSequence = [item]
    return ds


def scans(root: Path, per_class: int = 3) -> Path:
    """``root/ct`` and ``root/mr`` of identified 64×64 files (the bundled CT and MR, varied)."""
    for cls, source in (("ct", "CT_small.dcm"), ("mr", "MR_small.dcm")):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            identified(samples.varied(source, i), i).save_as(root / cls / f"{cls}{i}.dcm")
    return root


def zipped(folder: Path, prefix: str = "scans") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for f in sorted(folder.rglob("*")):
            if f.is_file():
                z.write(f, f"{prefix}/{f.relative_to(folder).as_posix()}")
    return buf.getvalue()


def on_disk(home: Path) -> list[Path]:
    return [p for p in home.rglob("*") if p.is_file()]


def assert_nothing_identifies(home: Path, originals: list[bytes]) -> None:
    """No file under ``home`` holds a needle (as UTF-8 bytes) or is a byte-for-byte copy of an upload."""
    digests = {hashlib.sha256(b).hexdigest() for b in originals}
    files = on_disk(home)
    assert files
    for path in files:
        body = path.read_bytes()
        assert hashlib.sha256(body).hexdigest() not in digests, (
            f"{path.name} is an uploaded file kept as it was"
        )
        for needle in NEEDLES:
            assert needle.encode() not in body, f"{needle!r} found in {path.relative_to(home)}"


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    from essence.app import shared

    home = tmp_path / "home"
    monkeypatch.setenv("ESSENCE_HOME", str(home))
    shared.provide(None)  # the plain, per-process resources (no Streamlit): a store under this home
    return home


# ------------------------------------------------------------------------------------------------ uploads


def test_an_uploaded_dicom_zip_keeps_no_identifier_and_remove_deletes_its_files(
    tmp_path: Path, home: Path
) -> None:
    timm = pytest.importorskip("timm", reason="the timm extra is part of dev")
    from safetensors.torch import save_file

    from essence.app import loading, registry, services, uploads

    folder = scans(tmp_path / "scans")
    blob = zipped(folder)
    torch.manual_seed(0)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=2, in_chans=1)
    weights = tmp_path / "net.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))

    recipe = uploads.recipe_of(64, 0.0, "none", "L")
    data_choice = uploads.dataset_from_zip(blob, "scans.zip", recipe)
    model_choice = uploads.model_from_upload(
        weights.read_bytes(), "net.safetensors", "timm:test_resnet", recipe, ["ct", "mr"], "layer2"
    )
    registry.register_dataset(data_choice)
    registry.register_model(model_choice)
    other = uploads.dataset_from_zip(
        zipped(scans(tmp_path / "other", per_class=2), "other"), "other.zip", recipe
    )
    registry.register_dataset(other)
    shared_copy = uploads.dataset_from_zip(blob, "copy.zip", recipe)  # the same bytes: the same folder
    registry.register_dataset(shared_copy)

    # What the analyses read is what the originals give: the same values, pseudonyms and fingerprint.
    model = loading.open_model(model_choice)
    data = loading.open_data(data_choice.spec, loading.recipe_of(model), tuple(model.class_names or ()))
    original = load_dataset(f"dicom:{folder}", data.preprocessing, class_names=["ct", "mr"])
    assert data_choice.spec.startswith("dicom:") and len(data) == 6
    np.testing.assert_array_equal(data.arrays, original.arrays)
    assert data.fingerprint == original.fingerprint and data.patients == original.patients
    assert data.patients[0] == patient_hash(f"{IDENTITY['PatientID']}-0")
    profiles = services.compute_profiles(model, data, "layer2", "logit")
    assert torch.isfinite(profiles.mean).all()
    services.triage(model, data, "layer2", profiles)

    originals = [blob, *(f.read_bytes() for f in folder.rglob("*.dcm"))]
    assert any(
        p.name.endswith("-wal") for p in on_disk(home)
    )  # the WAL is searched as it is, not checkpointed
    assert_nothing_identifies(home, originals)

    # Remove: the upload's folder goes (once no other upload uses it); the others stay, and are still offered.
    dataset_dir = uploads.upload_folder(data_choice.spec.partition(":")[2])
    model_dir = uploads.upload_folder(model_choice.weights or "")
    other_dir = uploads.upload_folder(other.spec.partition(":")[2])
    assert dataset_dir and model_dir and other_dir and len({dataset_dir, model_dir, other_dir}) == 3
    assert registry.forget("dataset", data_choice.label)
    assert dataset_dir.is_dir()  # "copy.zip" is the same upload: its files stay while it is registered
    assert registry.forget("dataset", shared_copy.label)
    assert registry.forget("model", model_choice.label)
    assert not dataset_dir.exists() and not model_dir.exists()
    assert other_dir.is_dir() and [c.label for c in registry.saved_datasets()] == [other.label]
    assert not [p for p in on_disk(uploads.uploads_root()) if other_dir not in p.parents]
    assert not registry.forget("dataset", data_choice.label)


@pytest.mark.parametrize("layout", ["csv", "folders"])
def test_every_transfer_syntax_is_kept_in_essences_form_only(tmp_path: Path, home: Path, layout: str) -> None:
    from essence.app import uploads

    folder = tmp_path / "scans"
    sources = {
        "ct": ["CT_small.dcm", "MR_small_RLE.dcm", "image_dfl.dcm"],
        "mr": ["MR_small.dcm", "MR_small_bigendian.dcm", "MR_small_implicit.dcm"],
    }
    rows = ["path,label"]
    for cls, names in sources.items():
        (folder / cls).mkdir(parents=True)
        for i, name in enumerate(names):
            target = folder / cls / f"{cls}{i}.dcm"
            ds = identified(pydicom.dcmread(get_testdata_file(name)), i)
            ds.save_as(target)
            rows.append(f"{cls}/{target.name},{cls}")
    if layout == "csv":
        (folder / "labels.csv").write_text("\n".join(rows) + "\n")
    sized = Preprocessing(mode="L", size=(32, 32), mean=(0.0,), std=(1.0,))
    choice = uploads.dataset_from_zip(zipped(folder), "mixed.zip", sized)
    assert choice.spec.startswith("dicom:") and choice.spec.endswith(
        "labels.csv" if layout == "csv" else "scans"
    )
    kept = Path(choice.spec.partition(":")[2])
    kept_dir = kept if kept.is_dir() else kept.parent
    for original in folder.rglob("*.dcm"):
        copy = kept_dir / original.relative_to(folder)
        for step in (DicomStep(), DicomStep.parse("range"), DicomStep.parse("40,400")):
            a, b = read_dicom(original, step), read_dicom(copy, step)
            np.testing.assert_array_equal(a.pixels, b.pixels)
            assert (a.patient, a.modality, a.window) == (b.patient, b.modality, b.window)
    originals = [f.read_bytes() for f in folder.rglob("*.dcm")]
    assert_nothing_identifies(uploads.uploads_root(), originals)


def test_an_unreadable_dicom_is_refused_at_upload_and_nothing_of_the_zip_is_kept(
    tmp_path: Path, home: Path
) -> None:
    from essence.app import uploads

    folder = scans(tmp_path / "scans", per_class=2)
    _with_text(
        identified(samples.varied("CT_small.dcm", 5)), "NumberOfFrames", "abcdefgh", folder / "ct" / "bad.dcm"
    )
    blob = zipped(folder)
    with pytest.raises(
        DataLoadError, match=r"^bad\.dcm: its NumberOfFrames \('abcdefgh'\).*--skip-bad-images"
    ) as e:
        uploads.dataset_from_zip(blob, "scans.zip", GREY)
    assert "\n" not in str(e.value)
    assert not on_disk(home / "uploads")  # refused: nothing of the zip was kept, not even the good files
    choice = uploads.dataset_from_zip(blob, "scans.zip", GREY, skip_bad_images=True)
    data = load_dataset(choice.spec, GREY, on_bad_image="skip")
    assert len(data) == 4 and [name for name, _ in data.skipped] == ["bad.dcm"]
    assert_nothing_identifies(uploads.uploads_root(), [blob])


# ------------------------------------------------------------------------------------------- header bounds


def _with_text(ds: Dataset, keyword: str, text: str, path: Path) -> Path:
    """Save ``ds`` with ``text`` as the raw value of ``keyword`` (pydicom would refuse to set it)."""
    placeholder = "7" * len(text)
    setattr(ds, keyword, placeholder)
    ds.save_as(path, enforce_file_format=True)
    body = path.read_bytes()
    assert body.count(placeholder.encode()) == 1
    path.write_bytes(body.replace(placeholder.encode(), text.encode()))
    return path


def _bad_header(folder: Path, case: str) -> Path:
    ds = identified(samples.varied("CT_small.dcm", 9))
    target = folder / "ct" / "bad.dcm"
    if case in ("frames text", "slope text", "slope nan", "slope inf", "intercept -inf"):
        keyword, text = {
            "frames text": ("NumberOfFrames", "abcdefgh"),
            "slope text": ("RescaleSlope", "xyz"),
            "slope nan": ("RescaleSlope", "nan"),
            "slope inf": ("RescaleSlope", "inf"),
            "intercept -inf": ("RescaleIntercept", "-inf"),
        }[case]
        return _with_text(ds, keyword, text.ljust(len(text) + len(text) % 2), target)
    if case == "slope zero":
        ds.RescaleSlope = "0"
    elif case == "huge product":
        ds.Rows, ds.Columns, ds.SamplesPerPixel = 6000, 6000, 3  # 108 Mpx, with 8 KB of pixel data
    elif case == "huge frames":
        ds.NumberOfFrames = "100000"  # 64×64×100,000 = 409.6 Mpx
    ds.save_as(target, enforce_file_format=True)
    return target


HEADER_CASES = {
    "frames text": r"its NumberOfFrames \('abcdefgh'\) is not a whole number",
    "slope text": r"its RescaleSlope \('xyz'\) is not a finite number",
    "slope nan": r"its RescaleSlope \('nan'\) is not a finite number",
    "slope inf": r"its RescaleSlope \('inf'\) is not a finite number",
    "intercept -inf": r"its RescaleIntercept \('-inf'\) is not a finite number",
    "slope zero": r"its RescaleSlope is 0",
    "huge product": rf"its header declares 6000×6000×1×3 .* above the limit of {MAX_IMAGE_PIXELS:,}",
    "huge frames": rf"its header declares 64×64×100000×1 .* above the limit of {MAX_IMAGE_PIXELS:,}",
}


@pytest.mark.parametrize("case", list(HEADER_CASES))
def test_a_header_out_of_bounds_is_refused_before_decoding_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    folder = samples.dicom_folder(tmp_path / "scans", per_class=1)
    bad = _bad_header(folder, case)

    def no_decoding(ds: object, name: str) -> np.ndarray:
        raise AssertionError(f"{name}: pixels decoded before the header was refused")

    with monkeypatch.context() as m:
        m.setattr(dicom, "_decode", no_decoding)
        with pytest.raises(DataLoadError, match=rf"^bad\.dcm: {HEADER_CASES[case]}") as caught:
            read_dicom(bad, DicomStep())
    assert "\n" not in str(caught.value)
    with pytest.raises(DataLoadError, match=r"^bad\.dcm: .*on_bad_image='skip'") as caught:
        load_dataset(f"dicom:{folder}", GREY)
    assert "\n" not in str(caught.value)
    skipped = load_dataset(f"dicom:{folder}", GREY, on_bad_image="skip")
    assert len(skipped) == 2 and [name for name, _ in skipped.skipped] == ["bad.dcm"]


FACTORY = "essence_dicom_privacy_models"
FACTORY_SOURCE = """
from collections import OrderedDict

import torch
from torch import nn


def grey():
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(1, 4, 3, padding=1), relu=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(2),
        flatten=nn.Flatten(), fc=nn.Linear(16, 2)))
"""


def test_the_cli_names_the_file_in_one_line_and_skip_bad_images_leaves_it_out(tmp_path: Path) -> None:
    from in_process import run_essence

    (tmp_path / "code").mkdir()
    (tmp_path / "code" / f"{FACTORY}.py").write_text(FACTORY_SOURCE)
    folder = samples.dicom_folder(tmp_path / "scans", per_class=2)
    _bad_header(folder, "frames text")
    args = ["profile", "--model", f"{FACTORY}:grey", "--data", f"dicom:{folder}", "--layer", "conv"]
    args += ["--device", "cpu", "--no-cache"]
    env = {"ESSENCE_HOME": str(tmp_path / "home"), "ESSENCE_DATA_ROOT": str(tmp_path)}

    def cli(extra: list[str]) -> tuple[int, str, str]:
        done = run_essence(args + extra, env, code_path=tmp_path / "code")
        return done.returncode, done.stdout, done.stderr

    code, _, err = cli([])
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith("error: bad.dcm: its NumberOfFrames ('abcdefgh') is not a whole number")
    code, out, err = cli(["--skip-bad-images"])
    assert code == 0, err
    assert "1 unreadable images were skipped" in err


# ------------------------------------------------------------------------------------- a small file, huge


def _declaring(path: Path, syntax: str, side: int = 16384, bits: int = 16) -> Path:
    """A file declaring ``side``² pixels: deflated (its zeros deflate to ~500 KB, written without ever holding
    them whole) or RLE (one fragment of a few bytes)."""
    ds = identified(Dataset())
    ds.Modality, ds.Rows, ds.Columns, ds.SamplesPerPixel = "OT", side, side, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    out = io.BytesIO()
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, meta, enforce_standard=True)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    size = side * side * bits // 8
    if syntax == DeflatedExplicitVRLittleEndian:
        deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
        out.write(deflate.compress(body.getvalue() + b"\xe0\x7f\x10\x00OW\0\0" + size.to_bytes(4, "little")))
        zeros = bytes(1 << 20)
        for _ in range(size >> 20):
            out.write(deflate.compress(zeros))
        out.write(deflate.flush())
    else:
        header = (1).to_bytes(4, "little") + (64).to_bytes(4, "little") + bytes(56)  # one segment, at 64
        fragment = header + bytes([0x81, 0]) * 4
        out.write(body.getvalue() + b"\xe0\x7f\x10\x00OB\0\0\xff\xff\xff\xff")
        out.write(b"\xfe\xff\x00\xe0" + bytes(4))  # an empty basic offset table
        out.write(b"\xfe\xff\x00\xe0" + len(fragment).to_bytes(4, "little") + fragment)
        out.write(b"\xfe\xff\xdd\xe0" + bytes(4))
    path.write_bytes(out.getvalue())
    return path


@pytest.mark.parametrize("syntax", [DeflatedExplicitVRLittleEndian, RLELossless], ids=["deflated", "rle"])
def test_a_small_file_declaring_16384_squared_is_refused_from_its_header(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, syntax: str
) -> None:
    def deidentify() -> None:  # what the app does to an uploaded file before it is kept
        from essence.core.inputs.dicom_spec import write_deidentified

        write_deidentified(path, tmp_path / "out.dcm")

    path = _declaring(tmp_path / "huge.dcm", syntax)
    if syntax == DeflatedExplicitVRLittleEndian:
        assert 300_000 < path.stat().st_size < 800_000  # ~500 KB on disk, 512 MiB of pixels declared
    monkeypatch.setattr(dicom, "_decode", lambda ds, name: pytest.fail("pixels decoded"))
    for read in (lambda: read_dicom(path, DicomStep()), deidentify):
        tracemalloc.start()
        try:
            with pytest.raises(
                DataLoadError, match=r"^huge\.dcm: its header declares 16384×16384×1×1 .*above"
            ):
                read()
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert peak < 8 * 2**20, f"{peak / 2**20:.0f} MiB allocated to refuse it"
    assert not (tmp_path / "out.dcm").exists()


def test_a_deflated_file_that_inflates_beyond_its_header_is_refused(tmp_path: Path) -> None:
    path = _declaring(tmp_path / "liar.dcm", DeflatedExplicitVRLittleEndian, side=64)
    meta_end = path.read_bytes().index(b"DICM") + 4
    meta = pydicom.filereader.read_file_meta_info(path)
    start = meta_end + 12 + int(meta.FileMetaInformationGroupLength)
    raw = zlib.decompress(path.read_bytes()[start:], -zlib.MAX_WBITS)
    padding = b"\xfc\xff\xfc\xff" + b"OB\0\0" + (64 * 2**20).to_bytes(4, "little") + bytes(64 * 2**20)
    deflate = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    path.write_bytes(path.read_bytes()[:start] + deflate.compress(raw + padding) + deflate.flush())
    with pytest.raises(
        DataLoadError, match=r"^liar\.dcm: its deflated data inflates to more than its header"
    ):
        read_dicom(path, DicomStep())


# ----------------------------------------------------------------------------------------------- registry


def test_registry_rows_of_the_wrong_types_are_skipped_with_one_warning(
    tmp_path: Path, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from essence.app import registry, shared

    weights = tmp_path / "w.safetensors"
    weights.write_bytes(b"x")
    store = shared.store()
    good = {"weights": str(weights), "class_names": ["a", "b"], "preprocessing": {"size": [8, 8]}}
    store.register_upload("model", "good", "torchvision:resnet18", good)
    bad = {
        "names-number": {**good, "class_names": 5},
        "names-of-numbers": {**good, "class_names": [1, 2]},
        "recipe-list": {**good, "preprocessing": [1, 2]},
        "recipe-nested": {**good, "preprocessing": {"size": [[8], [8]]}},
        "weights-int": {**good, "weights": 7},
        "layer-list": {**good, "default_layer": ["a"]},
        "trust-text": {**good, "trust_pickle": "yes"},
    }
    for label, details in bad.items():
        store.register_upload("model", label, "torchvision:resnet18", details)
    store.register_upload("model", "details-list", "torchvision:resnet18", [1, 2])  # type: ignore[arg-type]
    store.register_upload("dataset", "nul", "folder:\x00nowhere", {})
    store.register_upload("dataset", "long", "folder:" + "x" * 5000, {})
    with caplog.at_level(logging.WARNING, logger="essence.app.registry"):
        first = registry.saved_models()
        again = registry.saved_models()
        assert registry.saved_datasets() == []
    assert [c.label for c in first] == [c.label for c in again] == ["good", "details-list"]
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == len(bad) and all("not offered" in w for w in warned)
    assert any("class_names is a int" in w for w in warned)


def test_every_spec_kind_the_upload_page_gives_is_listed(tmp_path: Path, home: Path) -> None:
    from essence.app import registry
    from essence.app.state import DataChoice, ModelChoice

    folder = samples.dicom_folder(tmp_path / "scans", per_class=1)
    (folder / "labels.csv").write_text("path,label\nct/ct0.dcm,ct\nmr/mr0.dcm,mr\n")
    onnx, program, weights = (tmp_path / n for n in ("m.onnx", "m.pt2", "w.safetensors"))
    for f in (onnx, program, weights):
        f.write_bytes(b"x")
    datasets = [f"dicom:{folder}", f"dicom:{folder / 'labels.csv'}", f"dicom:{folder}?window=40,400"]
    datasets += [f"folder:{folder}", f"csv:{folder / 'labels.csv'}"]
    for i, spec in enumerate(datasets):
        registry.register_dataset(DataChoice(label=f"d{i}", spec=spec))
    registry.register_dataset(DataChoice(label="gone", spec=f"dicom:{tmp_path / 'gone'}"))
    models = {
        "onnx": ModelChoice(label="onnx", spec=f"onnx:{onnx}"),
        "program": ModelChoice(label="program", spec=str(program)),
        "timm": ModelChoice(label="timm", spec="timm:resnet18", weights=str(weights)),
        "monai": ModelChoice(label="monai", spec="monai:DenseNet121", weights=str(weights)),
        "torchvision": ModelChoice(label="torchvision", spec="torchvision:resnet18", weights=str(weights)),
        "onnx-gone": ModelChoice(label="onnx-gone", spec=f"onnx:{tmp_path / 'gone.onnx'}"),
        "program-gone": ModelChoice(label="program-gone", spec=str(tmp_path / "gone.pt2")),
    }
    for choice in models.values():
        registry.register_model(choice)
    assert [c.label for c in registry.saved_datasets()] == [f"d{i}" for i in range(len(datasets))]
    listed = [c.label for c in registry.saved_models()]
    assert listed == ["onnx", "program", "timm", "monai", "torchvision"]
    assert registry.saved_models()[0] == models["onnx"]


def test_remove_never_deletes_outside_the_uploads(tmp_path: Path, home: Path) -> None:
    from essence.app import registry, uploads
    from essence.app.state import DataChoice
    from essence.core.base.errors import StoreError

    folder = samples.dicom_folder(tmp_path / "scans", per_class=1)
    registry.register_dataset(DataChoice(label="mine", spec=f"dicom:{folder}"))
    assert registry.forget("dataset", "mine") and folder.is_dir()  # registered by hand, not an upload: kept
    with pytest.raises(StoreError, match="not an upload's folder"):
        uploads.remove_files(folder)
    assert folder.is_dir()


def test_a_folder_kept_as_uploaded_by_an_earlier_version_is_rewritten_on_the_next_upload(
    tmp_path: Path, home: Path
) -> None:
    from essence.app import uploads

    blob = zipped(scans(tmp_path / "scans", per_class=2))
    dest = uploads.uploads_root() / "datasets" / hashlib.sha256(blob).hexdigest()[:16]
    uploads.safe_extract(blob, dest)  # as it was kept before: the files as uploaded
    with pytest.raises(AssertionError, match="found in"):
        assert_nothing_identifies(dest, [])
    choice = uploads.dataset_from_zip(blob, "scans.zip", GREY)
    assert (
        Path(choice.spec.partition(":")[2]).is_relative_to(dest) and len(load_dataset(choice.spec, GREY)) == 4
    )
    assert_nothing_identifies(home, [blob])
