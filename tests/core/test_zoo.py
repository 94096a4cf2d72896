"""timm, MONAI and ONNX models: loaded from files only, and put through every analysis on generated data."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from essence.core import (
    compare_models,
    deviation_scores,
    diagnose,
    expert_sweep,
    explain,
    load_dataset,
    load_model,
    suggest_layer,
)
from essence.core.analyses.diagnosis.results import DiagnosisSettings
from essence.core.analyses.profiles import class_profiles
from essence.core.base.errors import ModelLoadError, SpecError
from essence.core.engine.slices import layer_names

timm = pytest.importorskip("timm", reason="the timm extra is part of dev: pip install -e '.[dev]'")
monai_nets = pytest.importorskip("monai.networks.nets", reason="the monai extra is part of dev")
onnx = pytest.importorskip("onnx", reason="the onnx extra is part of dev")

CLASSES = 3
SIDE = 16


def save_weights(module: nn.Module, path: Path) -> Path:
    save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()}, str(path))
    return path


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Greyscale 16×16 images of three classes told apart by where a bright square lies (8 per class)."""
    rng = np.random.default_rng(0)
    images, labels = [], []
    for c in range(CLASSES):
        for _ in range(8):
            img = rng.normal(0.2, 0.05, (SIDE, SIDE))
            y0 = 2 + 4 * c
            img[y0 : y0 + 4, 6:10] += 0.6
            images.append(np.clip(img, 0, 1))
            labels.append(c)
    path = tmp_path_factory.mktemp("data") / "squares.npz"
    np.savez(path, images=np.array(images, dtype=np.float32), labels=np.array(labels),
             class_names=np.array(["top", "middle", "bottom"]))  # fmt: skip
    return path


def timm_model(folder: Path) -> tuple[str, Path, str]:
    torch.manual_seed(0)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=CLASSES, in_chans=1)
    return "timm:test_resnet", save_weights(net, folder / "timm.safetensors"), "layer2"


def monai_model(folder: Path) -> tuple[str, Path, str]:
    torch.manual_seed(0)
    net = monai_nets.DenseNet(spatial_dims=2, in_channels=1, out_channels=CLASSES, init_features=8,
                              growth_rate=8, block_config=(2, 2))  # fmt: skip
    spec = "monai:DenseNet(init_features=8, growth_rate=8, block_config=(2, 2))"
    return spec, save_weights(net, folder / "monai.safetensors"), "features.transition1.conv"


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, CLASSES),
    ).eval()  # fmt: skip


def export_onnx(module: nn.Module, path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, 1, SIDE, SIDE),), str(path), dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    return path


@pytest.mark.parametrize("make", [timm_model, monai_model], ids=["timm", "monai"])
def test_every_analysis_runs_on_a_library_model(make, generated: Path, tmp_path: Path) -> None:
    spec, weights, layer = make(tmp_path)
    loaded = load_model(spec, weights)
    assert (
        loaded.preprocessing is not None and loaded.preprocessing.mode == "L"
    )  # one channel, from the weights
    assert loaded.module(torch.zeros(2, 1, SIDE, SIDE)).shape == (2, CLASSES)  # classes from the weights
    assert layer in layer_names(loaded.module)
    data = load_dataset(f"npz:{generated}", loaded.preprocessing)
    m = loaded.module
    profiles = class_profiles(m, data, layer, keep_instances=True, kind="prob", batch_size=8)
    assert profiles.mean.shape[0] == CLASSES and torch.isfinite(profiles.mean).all()
    triage = deviation_scores(m, data, layer, profiles=profiles, kind="prob", batch_size=8)
    assert sorted(triage.indices.tolist()) == list(range(len(data)))
    sweep = expert_sweep(m, data, layer, "middle", alphas=[1, 2], betas=[0, 1], batch_size=8)
    assert sweep.recall.shape == (2, 2)
    diag = diagnose(m, data, layer, batch_size=8, settings=DiagnosisSettings(alphas=[1, 2], betas=[0, 1]))
    assert [c.name for c in diag.classes] == ["top", "middle", "bottom"]
    comparison = compare_models(m, m, data, layer, batch_size=8, diagnose=False)
    assert comparison.to_json()["classes"]
    image = data.tensors([0])[0]
    why = explain(m, image, "top", layer=layer, class_names=data.class_names)
    assert why.to_json()["top_units"]
    suggestion = suggest_layer(m, data, batch_size=8, max_instances=12)
    assert suggestion.to_json()["suggested"] in layer_names(m)
    # the review report (the app's and `essence report`'s): the model, its recipe and the diagnosis
    from essence.app.report import review_report
    from essence.storage import Store

    with Store.open(tmp_path / "store.sqlite") as store:
        html = review_report(loaded, data, layer, diag, store)
    assert html.startswith("<!DOCTYPE html>") and spec.split("(")[0] in html and "middle" in html


def test_the_fingerprint_follows_the_weights(tmp_path: Path) -> None:
    spec, weights, _ = timm_model(tmp_path)
    first = load_model(spec, weights).fingerprint
    net = timm.create_model("test_resnet", pretrained=False, num_classes=CLASSES, in_chans=1)
    other = save_weights(net, tmp_path / "other.safetensors")
    assert load_model(spec, other).fingerprint != first
    assert load_model(spec, weights).fingerprint == first


def test_bad_library_specs_are_one_line_each_naming_the_fix(tmp_path: Path) -> None:
    _, weights, _ = timm_model(tmp_path)
    with pytest.raises(SpecError, match=r"timm has no model 'resnet_nope' \(closest: .*resnet"):
        load_model("timm:resnet_nope", weights)
    with pytest.raises(ModelLoadError, match="needs a weights file.*nothing is downloaded"):
        load_model("timm:test_resnet")
    with pytest.raises(SpecError, match="not a literal"):
        load_model("timm:test_resnet(drop_rate=__import__('os'))", weights)
    with pytest.raises(SpecError, match="MONAI has no network 'DenseNet1210'.*DenseNet121"):
        load_model("monai:DenseNet1210", weights)
    with pytest.raises(ModelLoadError, match="do not fit the architecture"):
        load_model("monai:DenseNet121", weights)  # timm's weights are not a DenseNet's
    unet = monai_nets.UNet(spatial_dims=2, in_channels=1, out_channels=2, channels=(4, 8), strides=(2,))
    with pytest.raises(ModelLoadError, match="no final linear layer.*classification network"):
        load_model(
            "monai:UNet(channels=(4, 8), strides=(2,))", save_weights(unet, tmp_path / "u.safetensors")
        )


def test_an_onnx_model_is_converted_into_modules_that_can_be_sliced(generated: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnx2torch")
    net = tiny_cnn()
    loaded = load_model(f"onnx:{export_onnx(net, tmp_path / 'tiny.onnx')}")
    x = torch.rand(5, 1, SIDE, SIDE)
    torch.testing.assert_close(loaded.module(x), net(x), atol=1e-5, rtol=1e-5)  # a batch of 5, same numbers
    layer = next(n for n in layer_names(loaded.module) if n.endswith("Conv") and n.startswith("2"))
    data = load_dataset(f"npz:{generated}")
    mine = class_profiles(loaded.module, data, layer)
    theirs = class_profiles(net, data, "2")  # the same layer of the original module
    torch.testing.assert_close(mine.mean, theirs.mean, atol=1e-4, rtol=1e-4)
    m = loaded.module
    assert len(deviation_scores(m, data, layer, kind="prob", batch_size=8)) == len(data)
    assert expert_sweep(m, data, layer, "middle", alphas=[1, 2], betas=[0, 1], batch_size=8).recall.shape == (
        2,
        2,
    )
    small = DiagnosisSettings(alphas=[1, 2], betas=[0, 1])
    assert len(diagnose(m, data, layer, batch_size=8, settings=small).classes) == CLASSES
    assert compare_models(m, net, data, layer, "2", batch_size=8, diagnose=False).to_json()["classes"]
    assert explain(m, data.tensors([0])[0], "top", layer=layer, class_names=data.class_names).to_json()[
        "top_units"
    ]


def test_onnx_refusals_name_the_operator_and_the_fix(tmp_path: Path) -> None:
    pytest.importorskip("onnx2torch")
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 1, 4, 4])
    odd = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph([odd], "g", [x], [y])
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)]
    )
    onnx.save(model, str(tmp_path / "odd.onnx"))
    with pytest.raises(
        ModelLoadError, match=r"operators that cannot be converted.*Frobnicate.*export the model"
    ):
        load_model(f"onnx:{tmp_path / 'odd.onnx'}")
    fixed = export_onnx_fixed(tmp_path / "fixed.onnx")
    with pytest.raises(ModelLoadError, match="fixed batch size of 1.*dynamic"):
        load_model(f"onnx:{fixed}")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="not a valid ONNX model"):
        load_model(f"onnx:{tmp_path / 'junk.onnx'}")
    with pytest.raises(SpecError, match="holds its own weights: drop weights="):
        load_model(f"onnx:{fixed}", weights=tmp_path / "w.safetensors")


def export_onnx_fixed(path: Path) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(tiny_cnn(), (torch.zeros(1, 1, SIDE, SIDE),), str(path), dynamo=False)
    return path


def test_optional_formats_are_imported_only_when_asked_for() -> None:
    code = (
        "import sys; from essence.core.inputs.models import load_model; from essence.core.inputs.datasets import load_dataset;"
        "from essence.core.inputs import specs; print(sorted(specs.known_prefixes('model')));"
        "print([m for m in ('timm', 'monai', 'onnx2torch', 'pydicom') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    listed, imported = out.strip().splitlines()
    assert all(p in listed for p in ("'timm'", "'monai'", "'onnx'"))
    assert imported == "[]"


def test_essence_layers_lists_a_timm_models_module_paths(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from essence.cli import main

    spec, weights, layer = timm_model(tmp_path)
    # In this process through the console script's entry point: the command's output is the point here (a
    # subprocess of `essence layers` is tests/cli/test_help_without_torch.py's).
    try:
        main(["layers", "--model", spec, "--weights", str(weights)])
        code = 0
    except SystemExit as exc:
        code = exc.code
    out = capsys.readouterr()
    assert code == 0, out.err
    assert layer in out.out and "layer1.0" in out.out
