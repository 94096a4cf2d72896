"""Unit interpretation: saliency by autograd, guided backprop / DeconvNet rules and their hooks, IG completeness."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from essence.core.analyses.interpret import (
    heatmap,
    integrated_gradients,
    overlay,
    relu_rule,
    saliency_map,
    unit_input_gradients,
)
from essence.core.base.errors import SpecError
from essence.core.engine.quantities import ClassScore, Comparative


def tiny_cnn(inplace: bool = False, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1),
        nn.ReLU(inplace=inplace),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(inplace=inplace),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 16),
        nn.ReLU(inplace=inplace),
        nn.Linear(16, 4),
    ).eval()


def no_hooks(model: nn.Module) -> bool:
    return all(
        not m._forward_hooks and not m._forward_pre_hooks and not m._backward_hooks for m in model.modules()
    )


@pytest.mark.parametrize(("layer", "granularity", "depth"), [("2", "channel", 3), ("6", "neuron", 7)])
def test_unit_saliency_equals_autograd_of_the_unit(layer: str, granularity: str, depth: int) -> None:
    model = tiny_cnn()
    x = torch.randn(1, 8, 8)
    units = [3, 0, 5]
    got = unit_input_gradients(model, x, layer, units, granularity=granularity)
    below = model[:depth]
    for row, u in enumerate(units):
        xx = x[None].clone().requires_grad_(True)
        z = below(xx)
        value = z[0, u].sum()  # a channel: its activation summed over positions
        (want,) = torch.autograd.grad(value, xx)
        torch.testing.assert_close(got[row], want[0], rtol=1e-5, atol=1e-6)


def test_unit_gradients_leave_the_model_as_it_was() -> None:
    model = tiny_cnn()
    model.train()
    unit_input_gradients(model, torch.randn(1, 8, 8), "2", [1])
    assert model.training and all(p.requires_grad for p in model.parameters())
    assert no_hooks(model)


@pytest.mark.parametrize("method", ["guided", "deconvnet"])
def test_relu_rule_hooks_are_removed_also_on_error(method: str) -> None:
    model = tiny_cnn(inplace=True)
    with relu_rule(model, method) as n:
        assert n == 3
        assert not no_hooks(model)
    assert no_hooks(model)
    with pytest.raises(RuntimeError, match="boom"), relu_rule(model, method):
        raise RuntimeError("boom")
    assert no_hooks(model)
    with pytest.raises(SpecError, match="out of range"):
        unit_input_gradients(model, torch.randn(1, 8, 8), "2", [99], method=method)
    assert no_hooks(model)


def test_rules_match_their_definition_on_a_two_layer_net() -> None:
    torch.manual_seed(1)
    lin1, lin2 = nn.Linear(5, 7), nn.Linear(7, 3)
    model = nn.Sequential(nn.Flatten(), lin1, nn.ReLU(), lin2, nn.Identity()).eval()
    x = torch.randn(5)
    h = lin1(x)
    w = lin2.weight[2].detach()
    guided = lin1.weight.T @ ((h > 0).float() * w.clamp(min=0))
    deconv = lin1.weight.T @ w.clamp(min=0)
    plain = lin1.weight.T @ ((h > 0).float() * w)
    for method, want in (("guided", guided), ("deconvnet", deconv), ("saliency", plain)):
        got = unit_input_gradients(model, x.view(5, 1, 1), "4", [2], method=method)
        torch.testing.assert_close(got[0].view(-1), want.detach(), rtol=1e-5, atol=1e-6)


def test_inplace_relus_give_the_same_rules_as_plain_ones() -> None:
    x = torch.randn(1, 8, 8)
    for method in ("saliency", "guided", "deconvnet"):
        a = unit_input_gradients(tiny_cnn(inplace=False), x, "2", [0, 4], method=method)
        b = unit_input_gradients(tiny_cnn(inplace=True), x, "2", [0, 4], method=method)
        torch.testing.assert_close(a, b)


class _SliceSum(nn.Module):
    """The model below a conv slice, its channels summed over positions: Captum's target = the unit."""

    def __init__(self, below: nn.Module) -> None:
        super().__init__()
        self.below = below

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.below(x).flatten(2).sum(-1)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("method", ["guided", "deconvnet"])
def test_rules_agree_with_captum(method: str) -> None:
    from captum.attr import Deconvolution, GuidedBackprop

    model = tiny_cnn()
    x = torch.randn(1, 1, 8, 8)
    got = unit_input_gradients(model, x, "2", [1, 6], method=method)
    wrapper = _SliceSum(model[:3]).eval()
    algo = (GuidedBackprop if method == "guided" else Deconvolution)(wrapper)
    for row, u in enumerate([1, 6]):
        want = algo.attribute(x.clone(), target=u)
        torch.testing.assert_close(got[row], want[0], rtol=1e-5, atol=1e-6)


def test_guided_needs_relu_modules() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.fc(x.flatten(1)))

    with pytest.raises(SpecError, match="no"):
        unit_input_gradients(Functional(), torch.randn(4, 1, 1), "fc", [0], method="guided")
    with pytest.raises(SpecError, match="unknown"):
        unit_input_gradients(tiny_cnn(), torch.randn(1, 8, 8), "2", [0], method="lrp")  # type: ignore[arg-type]


def test_integrated_gradients_completeness_on_a_smooth_model() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 10), nn.Softplus(), nn.Linear(10, 3), nn.Tanh()).eval()
    x = torch.randn(3, 2, 2)
    for q in (ClassScore(1), Comparative(0, 2)):
        attribution, error = integrated_gradients(model, x, q, steps=16)
        with torch.no_grad():
            y = torch.zeros(2, dtype=torch.long)
            delta = q(model(torch.stack([x, torch.zeros_like(x)])), y)
        total = float(delta[0] - delta[1])
        assert attribution.shape == x.shape
        assert abs(float(attribution.sum()) - total) < 1e-4 * max(1.0, abs(total))
        assert abs(error) < 1e-4


def test_batched_path_equals_the_engines_linear_path() -> None:
    from essence.core.engine.distributions import LinearPath
    from essence.core.engine.influence import influence

    model = tiny_cnn()
    x = torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(4))
    q = Comparative(1, 3)
    attribution, _ = integrated_gradients(model, x, q, steps=12, baseline=0.25, batch_size=5)
    path = LinearPath(steps=12, baseline=0.25)
    want = influence(model, (x[None], torch.zeros(1, dtype=torch.long)), "", q, path, "neuron", device="cpu")
    torch.testing.assert_close(attribution, want.mean[0].reshape(x.shape) * (x - 0.25), rtol=1e-5, atol=1e-6)


def test_display_helpers() -> None:
    grads = torch.randn(3, 2, 5, 4)
    maps = saliency_map(grads)
    assert maps.shape == (3, 5, 4)
    assert np.allclose(maps.max(axis=(1, 2)), 1.0) and maps.min() >= 0
    assert np.allclose(maps[1], grads[1].abs().amax(0).numpy() / float(grads[1].abs().max()))
    image = np.full((5, 4, 3), 200, np.uint8)
    over = overlay(image, maps[0])
    assert over.dtype == np.uint8 and over.shape == (5, 4, 3)
    assert over.max() == 200 and np.array_equal(over[..., 0], np.round(200 * maps[0]).astype(np.uint8))
    heat = heatmap(maps)
    assert heat.shape == (3, 5, 4, 3) and heat.dtype == np.uint8
    assert saliency_map(torch.zeros(1, 3, 3)).max() == 0
    with pytest.raises(SpecError):
        overlay(image, maps[0][:2])
