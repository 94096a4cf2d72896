"""A model saved as ``.pt2`` (or ONNX) is analysed the way its module is: cut on the fx route, run as code.

The cost a format used to add was structural, not arithmetic: an unflattened ``torch.export`` program could not
be traced (its root flattens its inputs with pytree), so g — the layers above the slice, run for every expert
mask — re-ran the whole model, and every unflattened module ran its graph through ``torch.fx.Interpreter``.
These tests time nothing (``benchmarks/bench_formats.py`` does): they check the cause is gone and that the
numbers are the module's.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import fx, nn

from essence.core import load_model
from essence.core.analyses.experts.sweep import cache_slice, expert_sweep
from essence.core.analyses.profiles import class_profiles
from essence.core.engine.split import split_model
from essence.core.inputs.model_fingerprints import model_fingerprint
from essence.core.inputs.pt2_code import runs_interpreted, traceable_root

# TinyCNN (tests/conftest.py): nested paths, batch norm, in-place ReLUs, a residual block.
CUT = ["stem", "bn", "relu", "block", "head", "act", "fc"]
CROSSED = ["block.conv1", "block.conv2"]  # the block's skip connection crosses them: the hook route for both


@pytest.fixture
def exported(cnn_factory, tmp_path: Path) -> tuple[nn.Module, Path]:
    module = cnn_factory(0)
    program = torch.export.export(
        module, (torch.zeros(4, 3, 8, 8),), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},)
    )
    torch.export.save(program, str(tmp_path / "cnn.pt2"))
    return module, tmp_path / "cnn.pt2"


def _count_calls(module: nn.Module) -> list[str]:
    """Hooks on every named submodule of ``module`` that record which ran."""
    ran: list[str] = []
    for name, m in module.named_modules():
        if name:
            m.register_forward_hook(lambda _m, _i, _o, name=name: ran.append(name))
    return ran


def test_a_pt2_runs_as_generated_code_not_through_the_interpreter(exported, monkeypatch) -> None:
    module, path = exported
    loaded = load_model(str(path))
    assert runs_interpreted(loaded.module) == []
    interpreted: list[object] = []
    original = fx.Interpreter.run

    def run(self: fx.Interpreter, *args: object, **kwargs: object) -> object:
        interpreted.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(fx.Interpreter, "run", run)
    x = torch.randn(5, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded.module(x), module(x), rtol=1e-5, atol=1e-6)
    assert interpreted == []
    # The switch is private to execution: what the model computes, and so its fingerprint, is unchanged.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fresh = torch.export.unflatten(torch.export.load(str(path)))
    assert loaded.fingerprint == model_fingerprint(fresh, "torch.export")


@pytest.mark.parametrize("layer", CUT)
def test_a_pt2_is_cut_on_the_fx_route_and_g_runs_only_the_layers_above(exported, layer: str) -> None:
    module, path = exported
    model = load_model(str(path)).module
    x = torch.randn(6, 3, 8, 8)
    sliced = split_model(model, layer, example=x[:4])
    assert (sliced.route, sliced.reason) == ("fx", "")
    assert isinstance(traceable_root(model), fx.GraphModule)
    with torch.no_grad():
        z = sliced.h(x)
        ran = _count_calls(model)
        out = sliced.g(z)
    order = [n for n, _ in model.named_modules() if n]  # a Sequential-like model: paths in call order
    below = set(order[: order.index(layer) + 1])
    assert not below & set(ran), f"g re-ran {sorted(below & set(ran))}"
    with torch.no_grad():
        torch.testing.assert_close(out, module(x), rtol=1e-5, atol=1e-6)
    assert split_model(module, layer).route == "fx"  # the module's own route, for comparison


@pytest.mark.parametrize("layer", CROSSED)
def test_a_skip_connection_across_the_slice_takes_the_hook_route_in_both_formats(
    exported, layer: str
) -> None:
    module, path = exported
    model = load_model(str(path)).module
    assert split_model(model, layer).route == split_model(module, layer).route == "hook"


def test_the_numbers_of_a_pt2_are_the_modules(exported, data_factory, rel_close) -> None:
    module, path = exported
    model = load_model(str(path)).module
    x, y = data_factory(n=30)
    for layer in ("block", "head"):
        want = class_profiles(module, (x, y), layer, batch_size=8, device="cpu")
        got = class_profiles(model, (x, y), layer, batch_size=8, device="cpu")
        rel_close(got.mean, want.mean)
        rel_close(got.stderr, want.stderr, tol=1e-4)
        sweeps = [
            expert_sweep(m, (x, y), layer, 1, cache=cache_slice(m, (x, y), layer, device="cpu"), device="cpu")
            for m in (module, model)
        ]
        assert [s.route for s in sweeps] == ["fx", "fx"]
        recall = [torch.from_numpy(s.recall) for s in sweeps]
        torch.testing.assert_close(recall[1], recall[0], equal_nan=True)
        assert (sweeps[1].predicted == sweeps[0].predicted).all()


def test_an_onnx_model_is_cut_on_the_fx_route_with_the_modules_numbers(
    cnn_factory, data_factory, tmp_path: Path
) -> None:
    pytest.importorskip("onnx2torch")
    module = cnn_factory(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.zeros(1, 3, 8, 8),), str(tmp_path / "cnn.onnx"), dynamo=False,
                          opset_version=17, input_names=["x"], dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    model = load_model(f"onnx:{tmp_path / 'cnn.onnx'}").module
    layer = next(n for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and m.stride == (2, 2))
    x, y = data_factory(n=30)
    assert split_model(model, layer, example=x[:4]).route == "fx"
    want = class_profiles(module, (x, y), "head", batch_size=8, device="cpu")
    got = class_profiles(model, (x, y), layer, batch_size=8, device="cpu")
    torch.testing.assert_close(got.mean, want.mean, rtol=1e-4, atol=1e-5 * float(want.mean.abs().max()))
