"""DICOM through the app's own route: a zip of .dcm files and a timm model uploaded, then class profiles, triage,
the diagnosis and the review report through the services the pages call — with no patient identifier in the
report or anywhere in the store."""

from __future__ import annotations

import importlib.util
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

timm = pytest.importorskip("timm", reason="the timm extra is part of dev")

_spec = importlib.util.spec_from_file_location(
    "dicom_samples", Path(__file__).parents[1] / "core" / "dicom_samples.py"
)
samples = importlib.util.module_from_spec(_spec)  # type: ignore[arg-type]
_spec.loader.exec_module(samples)  # type: ignore[union-attr]

MODEL, LAYER = "timm:test_resnet", "layer2"


def test_a_dicom_zip_goes_through_profiles_triage_diagnosis_and_the_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from essence.app import loading, services, shared, uploads
    from essence.app.evaluation import predict
    from essence.app.report import review_report

    home = tmp_path / "home"
    monkeypatch.setenv("ESSENCE_HOME", str(home))
    shared.provide(None)  # the plain, per-process resources (no Streamlit): a store under this home
    folder = samples.dicom_folder(tmp_path / "scans", per_class=4)
    blob = tmp_path / "scans.zip"
    with zipfile.ZipFile(blob, "w") as z:
        for f in sorted(folder.rglob("*.dcm")):
            z.write(f, f"scans/{f.relative_to(folder)}")
    torch.manual_seed(0)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=2, in_chans=1)
    weights = tmp_path / "net.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(weights))

    recipe = uploads.recipe_of(64, 0.0, "none", "L")
    data_choice = uploads.dataset_from_zip(blob.read_bytes(), "scans.zip", recipe)
    model_choice = uploads.model_from_upload(
        weights.read_bytes(), "net.safetensors", MODEL, recipe, class_names=["ct", "mr"], layer=LAYER
    )
    model = loading.open_model(model_choice)
    data = loading.open_data(data_choice.spec, loading.recipe_of(model), tuple(model.class_names or ()))
    assert data_choice.spec.startswith("dicom:") and len(data) == 8
    assert "window" in json.dumps(data.preprocessing.to_dict())  # the DICOM step is part of the recipe

    profiles = services.compute_profiles(model, data, LAYER, "logit")
    assert profiles.mean.shape[0] == 2 and torch.isfinite(profiles.mean).all()
    triage = services.triage(model, data, LAYER, profiles)
    assert sorted(np.asarray(triage.indices).tolist()) == list(range(len(data)))
    diagnosis = services.diagnosis(model, data, LAYER, profiles)
    assert [c.name for c in diagnosis.classes] == ["ct", "mr"]
    html = review_report(
        model,
        data,
        LAYER,
        diagnosis,
        shared.store(),
        predicted=predict(model, data.tensors(np.arange(len(data)))).argmax(1),
    )
    assert html.startswith("<!DOCTYPE html>") and "window" in html

    # What Essence wrote (the store, its matrices and slices); the uploaded scans themselves are the user's data.
    written = [p for p in home.rglob("*") if p.is_file() and uploads.uploads_root() not in p.parents]
    assert any(p.suffix == ".sqlite" for p in written)
    for text in samples.PATIENT_TEXT:
        assert text not in html, f"{text} in the report"
        for path in written:
            assert text.encode() not in path.read_bytes(), f"{text} found in {path.name}"
