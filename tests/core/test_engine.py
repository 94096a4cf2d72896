"""The engine against a per-instance loop of ``torch.autograd.grad``, and its guardrails.

The reference differentiates each instance alone (batch of one) through the full autograd graph, reading
∂q/∂z from the tensor the layer returned (never through the engine's capture), so agreement checks both the
one-backward-per-batch trick and the slice capture. "Relative 1e-5" means max |error| ≤ 1e-5 · max |expected|.
"""

from __future__ import annotations

import math
import threading
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from essence.core.analyses.profiles import class_profiles
from essence.core.base.errors import (
    Cancelled,
    ClassNotFoundError,
    EmptyClassError,
    LayerNotFoundError,
    NonFiniteOutputError,
)
from essence.core.engine.distributions import (
    ClassConditional,
    GaussianNoise,
    Instance,
    LinearPath,
    WholeDataset,
    path_points,
)
from essence.core.engine.influence import influence
from essence.core.engine.quantities import ClassScore, Comparative, OwnLabel, PredictedClass

TOL = 1e-5


def logsumexp_quantity(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """A user's own quantity: a plain function of the logits."""
    return torch.logsumexp(logits, dim=1) - 0.5 * logits[:, 0]


QUANTITIES = {
    "score-logit": ClassScore(1, "logit"),
    "score-prob": ClassScore(2, "prob"),
    "comparative": Comparative(0, 1, "logit"),
    "comparative-prob": Comparative(2, 0, "prob"),
    "predicted": PredictedClass("logit"),
    "predicted-prob": PredictedClass("prob"),
    "own-logit": OwnLabel("logit"),
    "own-prob": OwnLabel("prob"),
    "custom": logsumexp_quantity,
}

# (model kind, layer): batch norm with real statistics, in-place ReLUs right above, a residual block, the input
SLICES = [
    ("cnn", "stem"),
    ("cnn", "bn"),
    ("cnn", "block"),
    ("cnn", "block.bn1"),
    ("cnn", "head"),
    ("cnn", ""),
    ("mlp", "bn"),
    ("mlp", "fc2"),
]


# ------------------------------------------------------------------------------------------ the reference


def reference_gradient(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, layer: str, q, granularity: str = "neuron"
) -> torch.Tensor:
    """∂q/∂z of one instance ``x [1, ...]``, flattened to ``[U]``; by plain autograd on the full graph."""
    model.eval()
    seen: dict[str, torch.Tensor] = {}
    if layer == "":
        leaf = x.clone().requires_grad_(True)
        out = model(leaf)
        z = leaf
    else:
        module = dict(model.named_modules())[layer]

        def hook(_m, _i, output):
            seen["z"] = output
            return output + 0  # a new tensor, so in-place ops above do not touch the recorded z

        handle = module.register_forward_hook(hook)
        try:
            with torch.enable_grad():
                out = model(x.requires_grad_(False))
        finally:
            handle.remove()
        z = seen["z"]
    (g,) = torch.autograd.grad(q(out.float(), y).sum(), z)
    g = g.detach()[0]
    if granularity == "channel" and g.ndim > 1:
        g = g.reshape(g.shape[0], -1).sum(-1)
    return g.reshape(-1)


def reference_vectors(model, x, y, layer, q, distribution, granularity) -> torch.Tensor:
    """Per-instance influence vectors ``[N, U]`` by a Python loop over instances (and path points)."""
    rows = []
    for i in range(len(x)):
        xi, yi = x[i : i + 1], y[i : i + 1]
        if isinstance(distribution, LinearPath):
            alphas, weights = path_points(distribution.steps, distribution.method)
            b = torch.as_tensor(distribution.baseline, dtype=x.dtype)
            v = sum(
                w * reference_gradient(model, b + a * (xi - b), yi, layer, q, granularity)
                for a, w in zip(alphas.tolist(), weights.tolist(), strict=True)
            )
        elif isinstance(distribution, GaussianNoise):
            idx = torch.tensor([i])
            v = (
                sum(
                    reference_gradient(
                        model, distribution.transform(xi, k, k, idx), yi, layer, q, granularity
                    )
                    for k in range(distribution.samples)
                )
                / distribution.samples
            )
        else:
            v = reference_gradient(model, xi, yi, layer, q, granularity)
        rows.append(v)
    return torch.stack(rows).double()


def grouped(vectors: torch.Tensor, keys: np.ndarray) -> tuple[dict, dict]:
    """Mean and standard error (numpy: std with ddof=1 / sqrt(n)) of the rows of each group key."""
    means, errs = {}, {}
    v = vectors.numpy()
    for k in np.unique(keys):
        rows = v[keys == k]
        means[int(k)] = rows.mean(0)
        errs[int(k)] = rows.std(0, ddof=1) / math.sqrt(len(rows)) if len(rows) > 1 else None
    return means, errs


@pytest.fixture
def setup(cnn_factory, mlp_factory, data_factory, mlp_xy):
    def build(kind: str):
        if kind == "cnn":
            x, y = data_factory()
            return cnn_factory(), x, y
        return mlp_factory(), *mlp_xy

    return build


# -------------------------------------------------------------------------------- agreement with autograd


@pytest.mark.parametrize("kind,layer", SLICES)
@pytest.mark.parametrize("qname", list(QUANTITIES))
def test_point_and_class_distributions_match_autograd(setup, rel_close, kind, layer, qname):
    model, x, y = setup(kind)
    q = QUANTITIES[qname]
    for granularity in ("neuron", "channel"):
        ref = reference_vectors(model, x, y, layer, q, Instance(), granularity)
        point = influence(model, (x, y), layer, q, Instance(), granularity, batch_size=7)
        assert point.groups.tolist() == list(range(len(x)))
        rel_close(point.mean, ref, TOL)
        assert torch.isnan(point.stderr).all()  # one instance per group: no standard error

        by_class = influence(model, (x, y), layer, q, ClassConditional(), granularity, batch_size=7)
        means, errs = grouped(ref, y.numpy())
        for c, m in means.items():
            rel_close(by_class.mean[c], torch.from_numpy(m), TOL)
            rel_close(by_class.stderr[c], torch.from_numpy(errs[c]), 1e-4)
            assert int(by_class.counts[c]) == int((y == c).sum())


@pytest.mark.parametrize("kind,layer", [("cnn", "block"), ("cnn", ""), ("mlp", "bn")])
@pytest.mark.parametrize(
    "distribution",
    [
        WholeDataset(),
        LinearPath(steps=5, baseline=0.0, method="riemann_left"),
        LinearPath(steps=5, baseline=0.3, method="riemann_right"),
        LinearPath(steps=5, baseline=-0.2, method="riemann_middle"),
        LinearPath(steps=5, baseline=0.0, method="riemann_trapezoid"),
        LinearPath(steps=4, baseline=0.1, method="gausslegendre"),
        LinearPath(steps=4, baseline=0.0, method="gausslegendre", group_by="class"),
        GaussianNoise(samples=3, sigma=0.2, seed=5),
        GaussianNoise(samples=3, sigma=0.2, seed=5, group_by="dataset"),
    ],
    ids=lambda d: d.name,
)
@pytest.mark.parametrize("qname", ["score-prob", "own-logit", "comparative"])
def test_every_distribution_matches_autograd(setup, rel_close, kind, layer, distribution, qname):
    model, x, y = setup(kind)
    x, y = x[:9], y[:9]
    q = QUANTITIES[qname]
    for granularity in ("neuron", "channel"):
        ref = reference_vectors(model, x, y, layer, q, distribution, granularity)
        got = influence(model, (x, y), layer, q, distribution, granularity, batch_size=4, keep_instances=True)
        rel_close(got.instance_vectors, ref, TOL)
        keys = {
            "instance": np.arange(len(x)),
            "class": y.numpy(),
            "dataset": np.zeros(len(x), dtype=int),
        }[distribution.group_by]
        means, errs = grouped(ref, keys)
        for row, g in enumerate(got.groups.tolist()):
            rel_close(got.mean[row], torch.from_numpy(means[g]), TOL)
            if errs[g] is not None:
                rel_close(got.stderr[row], torch.from_numpy(errs[g]), 1e-4)


def test_point_distribution_is_the_gradient(cnn, cnn_xy, rel_close):
    x, y = cnn_xy
    got = influence(cnn, (x, y), "block", ClassScore(0), Instance(index=4), "neuron")
    assert got.groups.tolist() == [4] and got.counts.tolist() == [1]
    rel_close(got.mean[0], reference_gradient(cnn, x[4:5], y[4:5], "block", ClassScore(0)), TOL)
    assert got.unit_shape == (6, 8, 8)


def test_class_profiles_equal_the_engine_with_own_labels(cnn, cnn_xy, rel_close):
    x, y = cnn_xy
    prof = class_profiles(cnn, (x, y), "block", kind="prob", batch_size=5)
    ref = reference_vectors(cnn, x, y, "block", OwnLabel("prob"), Instance(), "channel")
    means, errs = grouped(ref, y.numpy())
    for c in range(3):
        rel_close(prof.mean[c], torch.from_numpy(means[c]), TOL)
        rel_close(prof.stderr[c], torch.from_numpy(errs[c]), 1e-4)
    assert prof.unit_shape == (6,) and prof.quantity == "prob[label]"
    assert prof.class_names == ["class 0", "class 1", "class 2"]


def test_keep_instances_equals_the_loop_and_records_outputs(cnn, cnn_xy, rel_close):
    x, y = cnn_xy
    got = influence(
        cnn, (x, y), "head", "prob", ClassConditional(), "channel", batch_size=4, keep_instances=True
    )
    rel_close(
        got.instance_vectors, reference_vectors(cnn, x, y, "head", OwnLabel("prob"), Instance(), "channel")
    )
    assert got.instance_indices.tolist() == list(range(len(x)))
    assert got.instance_labels.tolist() == y.tolist()
    with torch.no_grad():
        rel_close(got.outputs, cnn(x), TOL)


def test_path_at_the_input_is_integrated_gradients_and_complete(rel_close):
    """(x − b) · average gradient along the path sums to f(x) − f(b) for a smooth model (completeness)."""
    torch.manual_seed(0)
    smooth = nn.Sequential(
        nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 8), nn.Softplus(), nn.Linear(8, 3)
    ).eval()
    x = torch.randn(5, 6)
    y = torch.tensor([0, 1, 2, 0, 1])
    baseline = 0.25
    path = LinearPath(steps=24, baseline=baseline, method="gausslegendre")
    got = influence(smooth, (x, y), "", ClassScore(2), path, "neuron", keep_instances=True)
    attributions = (x - baseline) * got.instance_vectors
    with torch.no_grad():
        delta = smooth(x)[:, 2] - smooth(torch.full_like(x, baseline))[:, 2]
    rel_close(attributions.sum(1), delta, 1e-5)


# ------------------------------------------------------------------------------------------------ batching


@pytest.mark.parametrize("layer", ["stem", "bn", "block.conv1", "block.bn1", "block", "head", "fc"])
def test_batch_invariance(cnn, cnn_xy, layer):
    """An instance's influence alone equals its influence inside any batch (batch norm, in-place ReLU, residual)."""
    x, y = cnn_xy
    inside = influence(cnn, (x, y), layer, "prob", Instance(), "neuron", batch_size=len(x)).mean
    for i in (0, 5, len(x) - 1):
        alone = influence(cnn, (x[i : i + 1], y[i : i + 1]), layer, "prob", Instance(), "neuron").mean[0]
        torch.testing.assert_close(alone, inside[i], rtol=1e-5, atol=1e-6)


def test_results_do_not_depend_on_batch_size(cnn, cnn_xy):
    x, y = cnn_xy
    results = [
        influence(cnn, (x, y), "block", "logit", ClassConditional(), "channel", batch_size=b)
        for b in (1, 4, 64)
    ]
    for r in results[1:]:
        torch.testing.assert_close(r.mean, results[0].mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r.stderr, results[0].stderr, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("n,batch,steps", [(18, 4, 1), (18, 18, 1), (18, 64, 1), (10, 3, 4)])
def test_backward_calls_are_ceil_n_over_batch(cnn, cnn_xy, monkeypatch, n, batch, steps):
    x, y = cnn_xy[0][:n], cnn_xy[1][:n]
    calls = []
    real = torch.autograd.grad

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "grad", counting)
    dist = ClassConditional() if steps == 1 else LinearPath(steps=steps, group_by="class")
    influence(cnn, (x, y), "block", "logit", dist, "channel", batch_size=batch)
    assert len(calls) == math.ceil(n / batch) * steps


# ------------------------------------------------------------------------------------------- guardrails


def all_hooks(model: nn.Module) -> int:
    total = 0
    for m in model.modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_forward_hooks_with_kwargs",
        ):
            total += len(getattr(m, attr, {}))
    return total


def snapshot(model: nn.Module) -> tuple[dict, dict, dict]:
    return (
        {n: m.training for n, m in model.named_modules()},
        {n: p.requires_grad for n, p in model.named_parameters()},
        {n: t.clone() for n, t in model.state_dict().items()},
    )


def assert_restored(model: nn.Module, before: tuple[dict, dict, dict], hooks: int) -> None:
    modes, flags, state = snapshot(model)
    assert modes == before[0]
    assert flags == before[1]
    for name, t in state.items():
        assert torch.equal(t, before[2][name]), f"{name} changed"
    assert all_hooks(model) == hooks, "a hook was left on the model"


def test_state_and_hooks_restored(cnn, cnn_xy):
    x, y = cnn_xy
    cnn.stem.weight.requires_grad_(False)  # a user's partly frozen model
    cnn.block.train()  # and a mixed mode
    user_hook = cnn.head.register_forward_hook(lambda *a: None)
    before, hooks = snapshot(cnn), all_hooks(cnn)
    assert hooks == 1
    with pytest.warns(UserWarning, match="train mode") if cnn.training else warnings.catch_warnings():
        influence(cnn, (x, y), "block", "logit", ClassConditional(), "channel")
    assert_restored(cnn, before, hooks)
    user_hook.remove()
    assert all_hooks(cnn) == 0


@pytest.mark.parametrize("failure", ["quantity", "cancel", "nan"])
def test_hooks_removed_and_state_restored_on_error(cnn, cnn_xy, failure):
    """Like torchcam's test_cam_remove_hooks: an error mid-way leaves no hook and the model as it was."""
    x, y = cnn_xy
    cnn.train()
    before, hooks = snapshot(cnn), all_hooks(cnn)
    calls = []

    def failing_quantity(logits, labels):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom in the second batch")
        return logits[:, 0]

    kwargs = {"batch_size": 4}
    q = failing_quantity if failure == "quantity" else "logit"
    if failure == "cancel":
        kwargs["cancel"] = lambda: len(calls) >= 1
        kwargs["progress"] = lambda done, total: calls.append(done)
        expected = Cancelled
    elif failure == "nan":
        x = x.clone()
        x[6] = float("nan")
        expected = NonFiniteOutputError
    else:
        expected = RuntimeError
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(expected):
            influence(cnn, (x, y), "block.bn1", q, ClassConditional(), "channel", **kwargs)
    assert_restored(cnn, before, hooks)
    assert cnn.training


def test_train_mode_model_warns_and_is_restored(cnn, cnn_xy, rel_close):
    x, y = cnn_xy
    expected = influence(cnn, (x, y), "block", "logit", Instance(), "channel").mean
    cnn.train()
    stats = cnn.bn.running_mean.clone()
    with pytest.warns(UserWarning, match="eval mode"):
        got = influence(cnn, (x, y), "block", "logit", Instance(), "channel").mean
    assert cnn.training and all(m.training for m in cnn.modules())
    assert torch.equal(cnn.bn.running_mean, stats)  # eval mode: running statistics untouched
    rel_close(got, expected, 0)


def test_in_place_relu_right_above_the_slice_does_not_corrupt_z(cnn, cnn_xy, rel_close):
    """``bn`` feeds an in-place ReLU: the captured z must keep its negative values (they decide the ReLU's mask)."""
    x, y = cnn_xy
    recorded = {}

    def record(_m, _i, output) -> None:  # returns None: the output is left as it is
        recorded["z"] = output.detach().clone()

    handle = cnn.bn.register_forward_hook(record)
    with torch.no_grad():
        cnn(x)
    handle.remove()
    assert (recorded["z"] < 0).any()  # otherwise the test proves nothing
    got = influence(cnn, (x, y), "bn", ClassScore(0), Instance(), "neuron").mean
    ref = reference_vectors(cnn, x, y, "bn", ClassScore(0), Instance(), "neuron")
    rel_close(got, ref, TOL)
    # the gradient is zero exactly where the ReLU cut z off
    mask = (recorded["z"] <= 0).reshape(len(x), -1)
    assert torch.all(got[mask] == 0)


def test_non_finite_outputs_raise(cnn_xy):
    class Broken(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.log(x.mean((2, 3)) - 10.0))  # log of a negative number: NaN

    x, y = cnn_xy
    with pytest.raises(NonFiniteOutputError, match="NaN or infinite"):
        influence(Broken().eval(), (x, y % 2), "fc", "logit")


def test_unknown_layer_lists_close_names(cnn, cnn_xy):
    x, y = cnn_xy
    with pytest.raises(LayerNotFoundError, match="blok") as err:
        influence(cnn, (x, y), "blok", "logit")
    assert "block" in str(err.value)
    assert all_hooks(cnn) == 0


@pytest.mark.parametrize("q", [ClassScore(7), Comparative(0, 9), ClassScore(-1)])
def test_quantity_class_out_of_range(cnn, cnn_xy, q):
    x, y = cnn_xy
    with pytest.raises(ClassNotFoundError, match="out of range"):
        influence(cnn, (x, y), "block", q)


def test_label_outside_the_model_classes(cnn, cnn_xy):
    x, y = cnn_xy
    with pytest.raises(ClassNotFoundError, match="label 5"):
        influence(cnn, (x, torch.full_like(y, 5)), "block", "logit")


def test_empty_class(cnn, cnn_xy):
    x, y = cnn_xy
    keep = y != 2
    with pytest.raises(EmptyClassError, match="2"):
        influence(cnn, (x[keep], y[keep]), "block", ClassScore(2), ClassConditional(cls=2))
    with pytest.raises(EmptyClassError, match="class 2"):
        class_profiles(cnn, (x[keep], y[keep]), "block")
    prof = class_profiles(cnn, (x[keep], y[keep]), "block", allow_empty=True)
    assert prof.counts.tolist() == [6, 6, 0] and torch.isnan(prof.mean[2]).all()


def test_progress_and_cancel(cnn, cnn_xy):
    x, y = cnn_xy
    seen: list[tuple[int, int]] = []
    influence(cnn, (x, y), "block", "logit", batch_size=5, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]
    seen.clear()
    influence(
        cnn,
        (x, y),
        "block",
        "logit",
        LinearPath(steps=3),
        batch_size=10,
        progress=lambda d, t: seen.append((d, t)),
    )
    assert seen[-1] == (6, 6) and [d for d, _ in seen] == list(range(1, 7))

    flag = threading.Event()
    flag.set()
    with pytest.raises(Cancelled):
        influence(cnn, (x, y), "block", "logit", cancel=flag)
    stop_after_two: list[int] = []
    with pytest.raises(Cancelled):
        influence(
            cnn,
            (x, y),
            "block",
            "logit",
            batch_size=4,
            progress=lambda d, t: stop_after_two.append(d),
            cancel=lambda: len(stop_after_two) >= 2,
        )
    assert stop_after_two == [1, 2]  # stopped before the third batch
    assert all_hooks(cnn) == 0


def test_bf16_autocast_on_cpu_is_close_to_fp32(cnn, cnn_xy):
    """bf16 keeps 8 bits of mantissa (≈ 3 significant digits); through a few layers the profile stays within
    5 % of its largest entry, and the sums stay float64."""
    x, y = cnn_xy
    fp32 = influence(cnn, (x, y), "block", "logit", ClassConditional(), "channel")
    bf16 = influence(cnn, (x, y), "block", "logit", ClassConditional(), "channel", autocast="bf16")
    assert bf16.sums.sum.dtype == torch.float64 and bf16.mean.dtype == torch.float32
    err = float((bf16.mean - fp32.mean).abs().max() / fp32.mean.abs().max())
    assert err < 5e-2, err
    assert not torch.equal(bf16.mean, fp32.mean)  # autocast really ran


# ----------------------------------------------------------------------------------------- the public name


def test_the_package_attribute_influence_is_always_the_function():
    """``essence.core.influence`` is the engine's function, never a module, whatever was imported before."""
    import importlib
    import pkgutil
    import types

    import essence.core

    for module in pkgutil.walk_packages(essence.core.__path__, "essence.core."):
        importlib.import_module(module.name)
    assert essence.core.influence is influence
    assert not isinstance(essence.core.influence, types.ModuleType)
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("essence.core.influence")
