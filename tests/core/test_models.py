"""Model specs: torchvision architectures, factories, TorchScript files, full pickles; fingerprints."""

from __future__ import annotations

import textwrap

import pytest
import torch
import torchvision
from safetensors.torch import save_file
from torch import nn

from essence.core.base.errors import ModelLoadError, SpecError
from essence.core.inputs.model_fingerprints import model_fingerprint
from essence.core.inputs.models import load_model


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


def _small_cnn(seed: int, act: type[nn.Module] = nn.ReLU, stride: int = 1) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, stride=stride), act(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)
    ).eval()


@pytest.mark.filterwarnings("ignore:.*torch.jit.*:FutureWarning")
@pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning")
def test_torchscript_is_refused_with_the_format_that_works(tmp_path):
    """PyTorch runs no hooks on ScriptModules, so no analysis could run: refused at load, naming .pt2."""
    path = tmp_path / "m.pt"
    torch.jit.script(_small_cnn(3)).save(str(path))
    with pytest.raises(ModelLoadError, match=r"TorchScript.*torch\.export.*\.pt2") as info:
        load_model(str(path))
    assert "\n" not in str(info.value)


def test_exported_program_loads_as_ordinary_modules(tmp_path):
    model = _small_cnn(3)
    x = torch.randn(2, 3, 8, 8)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    path = tmp_path / "m.pt2"
    torch.export.save(program, str(path))
    loaded = load_model(str(path))
    assert same_outputs(loaded.module, model, (5, 3, 8, 8))
    assert {"0", "1", "4"} <= {name for name, _ in loaded.module.named_modules()}
    seen: list[tuple[int, ...]] = []
    handle = dict(loaded.module.named_modules())["0"].register_forward_hook(
        lambda m, i, o: seen.append(o.shape)
    )
    loaded.module(x)
    handle.remove()
    assert seen == [(2, 4, 6, 6)]
    gelu = tmp_path / "gelu.pt2"
    torch.export.save(torch.export.export(_small_cnn(3, nn.GELU), (x,)), str(gelu))
    assert load_model(str(gelu)).fingerprint != loaded.fingerprint  # same weights, other program


def test_fingerprint_hashes_what_the_model_computes():
    """Same weights, other computation: the store must not serve one's answers for the other."""
    base = model_fingerprint(_small_cnn(0), "f")
    assert model_fingerprint(_small_cnn(0), "f") == base
    assert model_fingerprint(_small_cnn(0, nn.GELU), "f") != base
    assert model_fingerprint(_small_cnn(0, stride=2), "f") != base
    with_dropout = [nn.Sequential(nn.Flatten(), nn.Dropout(p), nn.Linear(12, 2)) for p in (0.1, 0.5)]
    with_dropout[1].load_state_dict(with_dropout[0].state_dict())
    assert model_fingerprint(with_dropout[0]) != model_fingerprint(with_dropout[1])
    trained = _small_cnn(0).train()
    assert model_fingerprint(trained, "f") == base  # the mode is not what the model computes

    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(x))

    class OtherHead(Head):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.nn.functional.gelu(x))

    torch.manual_seed(0)
    a = Head()
    b = OtherHead()
    b.load_state_dict(a.state_dict())
    b.__class__.__qualname__ = a.__class__.__qualname__  # even under the same class name
    assert model_fingerprint(a) != model_fingerprint(b)


@pytest.mark.filterwarnings("ignore:.*torch.jit.*:FutureWarning")
@pytest.mark.filterwarnings("ignore:.*torch.jit.*:DeprecationWarning")
def test_fingerprint_of_scripted_code():
    scripted = [torch.jit.script(_small_cnn(0, act)) for act in (nn.ReLU, nn.GELU)]
    assert model_fingerprint(scripted[0]) != model_fingerprint(scripted[1])


def test_full_pickle_refused_unless_trusted(tmp_path):
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(3, 2))
    path = tmp_path / "full.pt"
    torch.save(model, path)
    with pytest.raises(ModelLoadError, match="trust_pickle=True"):
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
