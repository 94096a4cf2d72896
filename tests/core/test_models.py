"""Model specs: torchvision architectures, factories, TorchScript files, full pickles; fingerprints."""

from __future__ import annotations

import textwrap

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from essence.core.errors import ModelLoadError, SpecError
from essence.core.models import load_model, model_fingerprint


@pytest.fixture(scope="module")
def resnet() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=4).eval()


def same_outputs(a: nn.Module, b: nn.Module, shape=(2, 3, 32, 32)) -> bool:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_torchvision_with_weights(resnet, tmp_path, suffix):
    path = tmp_path / f"w{suffix}"
    if suffix == ".safetensors":
        save_file(resnet.state_dict(), str(path))
    else:
        torch.save(resnet.state_dict(), path)
    loaded = load_model("torchvision:resnet18", path)
    assert same_outputs(loaded.module, resnet)
    assert loaded.fingerprint == model_fingerprint(resnet, "torchvision:resnet18")
    assert not loaded.module.training


def test_torchvision_needs_weights_and_a_known_arch(tmp_path):
    with pytest.raises(ModelLoadError, match="weights"):
        load_model("torchvision:resnet18")
    with pytest.raises(SpecError, match="resnet18"):
        load_model("torchvision:resnet181", tmp_path / "w.pt")


def test_wrong_shaped_weights_name_the_key(resnet, tmp_path):
    state = dict(resnet.state_dict())
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(ModelLoadError, match=r"layer1\.0\.conv1\.weight"):
        load_model("torchvision:resnet18", path)


def test_factory_spec(tmp_path, monkeypatch):
    (tmp_path / "essence_test_factory.py").write_text(
        textwrap.dedent(
            """
            from torch import nn

            def build():
                return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))

            not_a_model = 3
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    torch.manual_seed(2)
    reference = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    save_file(reference.state_dict(), str(tmp_path / "f.safetensors"))
    loaded = load_model("essence_test_factory:build", tmp_path / "f.safetensors")
    assert same_outputs(loaded.module, reference, (2, 12))
    with pytest.raises(ModelLoadError, match="no callable"):
        load_model("essence_test_factory:missing")
    with pytest.raises(ModelLoadError, match="cannot import"):
        load_model("essence_no_such_module:build")


@pytest.mark.filterwarnings("ignore:.*torch.jit.script.*:FutureWarning")
def test_torchscript(tmp_path):
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    )
    path = tmp_path / "m.pt"
    torch.jit.script(model.eval()).save(str(path))
    loaded = load_model(str(path))
    assert same_outputs(loaded.module, model, (2, 3, 8, 8))


def test_full_pickle_refused_unless_trusted(tmp_path):
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 2))
    path = tmp_path / "full.pt"
    torch.save(model, path)
    with pytest.raises(ModelLoadError, match="trust-pickle"):
        load_model(str(path))
    loaded = load_model(str(path), trust_pickle=True)
    assert same_outputs(loaded.module, model, (2, 3))


def test_fingerprint_changes_with_one_weight(resnet):
    before = model_fingerprint(resnet, "r")
    changed = torchvision.models.resnet18(weights=None, num_classes=4)
    changed.load_state_dict(resnet.state_dict())
    assert model_fingerprint(changed, "r") == before
    with torch.no_grad():
        changed.fc.bias[0] += 1e-3
    assert model_fingerprint(changed, "r") != before
    changed.load_state_dict(resnet.state_dict())
    changed.layer2[0].bn1.running_mean[3] += 1.0  # buffers count too
    assert model_fingerprint(changed, "r") != before


def test_malformed_specs():
    for spec in ("", "what is this?"):
        with pytest.raises(SpecError):
            load_model(spec)
