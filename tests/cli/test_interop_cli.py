"""DICOM through the CLI (profile, triage with every export, report), with no patient identifier in any output,
and the bad inputs of the interop formats as one line each, exit status 2.

The DICOM profile runs the CLI in a fresh process, as a user starts it; the other commands run in this process
through the same entry point (``essence.cli.main``): a fresh interpreter importing torch, timm and pydicom costs
seconds each, and the commands' output and files are what these tests read.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from forked import run_forked
from in_process import run_essence
from safetensors.torch import save_file

from essence.core.analyses.exports import TRIAGE_COLUMNS, VERDICT_COLUMNS

timm = pytest.importorskip("timm", reason="the timm extra is part of dev")
pytest.importorskip("pydicom", reason="the dicom extra is part of dev")

_spec = importlib.util.spec_from_file_location(
    "dicom_samples", Path(__file__).parents[1] / "core" / "dicom_samples.py"
)
samples = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(samples)  # type: ignore[union-attr]

MODEL = "timm:test_resnet"
LAYER = "layer2"


def essence_process(home: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -m essence.cli ARGS`` as its own process (forked: :mod:`forked`)."""
    env = {**os.environ, "ESSENCE_HOME": str(home), "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
    return run_forked(args, env, cwd=home.parent, timeout=600)


def essence(home: Path, *args: str) -> subprocess.CompletedProcess:
    """``essence.cli.main(ARGS)`` in this process, with ``ESSENCE_HOME=home``: exit status, stdout, stderr."""
    return run_essence(args, {"ESSENCE_HOME": str(home)})


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("interop")
    folder = samples.dicom_folder(root / "scans", per_class=4)
    torch.manual_seed(0)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=2, in_chans=1)
    weights = root / "net.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))
    return root, folder, weights


def test_a_dicom_folder_goes_through_profile_triage_and_report(setup: tuple[Path, Path, Path]) -> None:
    root, folder, weights = setup
    home, out = root / "home", root / "out"
    common = (
        "--model",
        MODEL,
        "--weights",
        str(weights),
        "--data",
        f"dicom:{folder}?window=40,400",
        "--layer",
        LAYER,
    )
    profile = essence_process(home, "profile", *common, "--json", str(out / "profile.json"))
    assert profile.returncode == 0, profile.stderr
    assert "DICOM rescale slope/intercept, window C=40 W=400" in profile.stdout
    recipe = json.loads((out / "profile.json").read_text())["preprocessing"]
    assert recipe["dicom"]["window"] == "fixed" and recipe["dicom"]["width"] == 400.0

    exports = ("triage.csv", "triage.parquet", "triage.json", "triage.fiftyone.json", "triage.npz")
    asked = [arg for name in exports for arg in ("--export", str(out / name))]
    triage = essence(home, "triage", *common, "--json", str(out / "t.json"), *asked)
    assert triage.returncode == 0, triage.stderr
    assert triage.stdout.count("wrote the triage of 8 instances") == len(exports)
    rows = list(csv.DictReader((out / "triage.csv").open()))
    assert len(rows) == 8 and list(rows[0]) == list(TRIAGE_COLUMNS)
    assert {r["label_name"] for r in rows} == {"ct", "mr"} and all(len(r["patient"]) == 12 for r in rows)
    assert sorted(r["source"] for r in rows)[0] == "ct/ct0.dcm"
    pq = pytest.importorskip("pyarrow.parquet")
    table = pq.read_table(out / "triage.parquet")
    assert table.column_names == list(rows[0]) and table.num_rows == 8
    fo = json.loads((out / "triage.fiftyone.json").read_text())
    assert fo["classes"] == ["ct", "mr"] and fo["samples"][0]["ground_truth"]["_cls"] == "Classification"
    arrays = np.load(out / "triage.npz")
    assert arrays["pred_probs"].shape == (8, 2) and arrays["labels"].tolist() == [0] * 4 + [1] * 4
    np.testing.assert_allclose(arrays["pred_probs"].sum(1), 1.0, atol=1e-6)

    report = essence(home, "report", *common, "--out", str(out / "report.html"))
    assert report.returncode == 0, report.stderr
    assert "window C=40 W=400" in (out / "report.html").read_text()  # the DICOM step, shown like the blur
    diagnose = essence(home, "diagnose", *common, "--export", str(out / "diagnosis.csv"))
    assert diagnose.returncode == 0, diagnose.stderr
    printed = profile.stdout + profile.stderr + triage.stdout + report.stdout + diagnose.stdout
    assert [r["class_name"] for r in csv.DictReader((out / "diagnosis.csv").open())] == ["ct", "mr"]

    # patient identifiers: in no output, and nowhere in the store
    written = [p for p in out.iterdir()] + [p for p in home.rglob("*") if p.is_file()]
    assert any(p.suffix == ".sqlite" for p in written)
    for path in written:
        blob = path.read_bytes()
        for text in samples.PATIENT_TEXT:
            assert text.encode() not in blob, f"{text} found in {path.name}"
    for text in samples.PATIENT_TEXT:
        assert text not in printed, f"{text} printed"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("no pixels", "without pixel data"),
        ("no decoder", "compressed (JPEG-LS Lossless Image Compression) and cannot be decoded here: install"),
        ("unknown timm", "timm has no model 'resnet_nope'"),
        ("bad export", "--export"),
    ],
)
def test_bad_inputs_are_one_line_and_exit_2(setup: tuple[Path, Path, Path], case: str, message: str) -> None:
    root, folder, weights = setup
    from pydicom.data import get_testdata_file

    data, model = folder, MODEL
    extra: tuple[str, ...] = ()
    if case in ("no pixels", "no decoder"):
        data = root / case.replace(" ", "_")
        shutil.copytree(folder, data, dirs_exist_ok=True)
        source = "rtplan.dcm" if case == "no pixels" else "MR_small_jpeg_ls_lossless.dcm"
        shutil.copy(get_testdata_file(source), data / "ct" / "bad.dcm")
    elif case == "unknown timm":
        model = "timm:resnet_nope"
    else:
        extra = ("--export", str(root / "triage.xlsx"))
    result = essence(root / "home", "triage", "--model", model, "--weights", str(weights), "--data",
                     f"dicom:{data}", "--layer", LAYER, *extra)  # fmt: skip
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_the_upload_page_takes_dicom_zips_and_library_models(
    setup: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import zipfile

    from essence.app import uploads

    root, folder, weights = setup
    monkeypatch.setenv("ESSENCE_HOME", str(tmp_path / "home"))
    blob = tmp_path / "scans.zip"
    with zipfile.ZipFile(blob, "w") as z:
        for f in sorted(folder.rglob("*.dcm")):
            z.write(f, f"scans/{f.relative_to(folder)}")
    choice = uploads.dataset_from_zip(blob.read_bytes(), "scans.zip", uploads.recipe_of(64, 0.0, "none", "L"))
    assert choice.spec.startswith("dicom:")
    assert uploads.ONNX in uploads.architectures() and uploads.LIBRARY in uploads.architectures()
    recipe = uploads.recipe_of(64, 0.0, "none", "L")
    model = uploads.model_from_upload(weights.read_bytes(), "net.safetensors", MODEL, recipe, layer=LAYER)
    assert model.spec == MODEL and model.weights.endswith("net.safetensors")
    with pytest.raises(uploads.SpecError, match="name the architecture: timm:ARCH"):
        uploads.model_from_upload(weights.read_bytes(), "net.safetensors", uploads.LIBRARY, recipe)


def test_verdicts_export_as_parquet_with_the_csv_columns(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    from essence.cli import main
    from essence.storage import Store

    store = tmp_path / "s.sqlite"
    with Store.open(store) as opened:
        opened.record_verdict("f" * 16, 3, "label error", note="=SUM(A1)", reviewer="rev")
        opened.record_verdict("f" * 16, 3, "fine", reviewer="rev")
    for name in ("v.parquet", "v.csv"):
        main(["store", "export", "--verdicts", str(tmp_path / name), "--store", str(store)])
        assert f"wrote 2 verdicts (full history) to {tmp_path / name}" in capsys.readouterr().out
    table = pq.read_table(tmp_path / "v.parquet")
    assert table.column_names == list(VERDICT_COLUMNS)
    assert table.column("verdict").to_pylist() == ["label error", "fine"]
    assert table.column("latest").to_pylist() == [False, True]
    assert table.column("note").to_pylist()[0] == "=SUM(A1)"  # as typed (the CSV guards its cells)
    assert list(csv.DictReader((tmp_path / "v.csv").open()))[0]["note"] == "'=SUM(A1)"
