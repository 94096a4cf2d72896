"""The engine against Captum, the reference implementation of gradient attributions in PyTorch.

* point and class distributions = ``LayerGradientXActivation(multiply_by_inputs=False)`` (the plain layer
  gradient) with per-instance targets, averaged per class;
* the linear-path distribution = ``InternalInfluence`` with the same quadrature and number of steps (up to
  Captum's trapezoid weights, which sum to (n−1)/n rather than 1);
* at the input slice, (x − baseline) · our path average = ``IntegratedGradients``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

captum_attr = pytest.importorskip("captum.attr")

from essence.core.engine.distributions import ClassConditional, Instance, LinearPath  # noqa: E402
from essence.core.engine.influence import influence  # noqa: E402
from essence.core.engine.quantities import ClassScore, OwnLabel  # noqa: E402

TOL = 1e-5


def forward_of(model: nn.Module, kind: str):
    """Captum differentiates the forward's output at ``target``: softmax it for the probability quantity."""
    if kind == "logit":
        return model
    return lambda x: torch.softmax(model(x), dim=1)


@pytest.mark.parametrize("layer", ["stem", "block.conv2", "block", "head", "fc"])
@pytest.mark.parametrize("kind", ["logit", "prob"])
def test_point_and_class_distributions_match_layer_gradient(cnn, cnn_xy, rel_close, layer, kind):
    x, y = cnn_xy
    module = dict(cnn.named_modules())[layer]
    lga = captum_attr.LayerGradientXActivation(forward_of(cnn, kind), module, multiply_by_inputs=False)
    grads = lga.attribute(x, target=y).detach()  # per-instance targets: each instance's own label
    flat = grads.reshape(len(x), -1)

    point = influence(cnn, (x, y), layer, OwnLabel(kind), Instance(), "neuron")
    rel_close(point.mean, flat, TOL)

    by_class = influence(cnn, (x, y), layer, OwnLabel(kind), ClassConditional(), "neuron")
    for c in range(3):
        rel_close(by_class.mean[c], flat[y == c].mean(0), TOL)

    if grads.ndim == 4:  # channel granularity: the gradient summed over positions
        channel = influence(cnn, (x, y), layer, OwnLabel(kind), ClassConditional(), "channel")
        for c in range(3):
            rel_close(channel.mean[c], grads[y == c].sum((2, 3)).mean(0), TOL)


def test_fixed_target_matches_layer_gradient(mlp, mlp_xy, rel_close):
    x, y = mlp_xy
    lga = captum_attr.LayerGradientXActivation(mlp, mlp.bn, multiply_by_inputs=False)
    expected = lga.attribute(x, target=2).detach()
    got = influence(mlp, (x, y), "bn", ClassScore(2), Instance(), "neuron")
    rel_close(got.mean, expected, TOL)


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_left", "riemann_middle", "riemann_trapezoid"])
@pytest.mark.parametrize("layer", ["block", "head"])
def test_linear_path_matches_internal_influence(cnn, cnn_xy, rel_close, method, layer):
    x, y = cnn_xy
    x, y = x[:8], y[:8]
    steps, baseline = 6, 0.2
    module = dict(cnn.named_modules())[layer]
    expected = captum_attr.InternalInfluence(cnn, module).attribute(
        x, baselines=baseline, target=y, n_steps=steps, method=method
    )
    path = LinearPath(steps=steps, baseline=baseline, method=method)
    got = influence(cnn, (x, y), layer, OwnLabel("logit"), path, "neuron").mean
    if method == "riemann_trapezoid":
        # Captum's trapezoid weights are 1/(2n), 1/n, ..., 1/(2n) at n points spaced 1/(n−1): they sum to
        # (n−1)/n, not 1. Ours are the trapezoid rule's (sum 1), so an average; rescale to compare.
        got = got * (steps - 1) / steps
    rel_close(got, expected.detach().reshape(len(x), -1), TOL)


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_right"])
def test_input_slice_path_is_integrated_gradients(cnn, cnn_xy, rel_close, method):
    x, y = cnn_xy
    x, y = x[:6], y[:6]
    baseline = torch.full_like(x[:1], -0.1)
    expected = captum_attr.IntegratedGradients(cnn).attribute(
        x, baselines=baseline, target=1, n_steps=7, method=method
    )
    path = LinearPath(steps=7, baseline=baseline[0], method=method)
    got = influence(cnn, (x, y), "", ClassScore(1), path, "neuron", keep_instances=True)
    attributions = (x - baseline).reshape(len(x), -1) * got.instance_vectors
    rel_close(attributions, expected.detach().reshape(len(x), -1), TOL)
