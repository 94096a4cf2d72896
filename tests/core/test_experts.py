"""Expert sweeps: masks batched through g on cached z, checked against masking by hand."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from essence.core.analyses.experts.sweep import ExpertCriterion, cache_slice, default_grid, expert_sweep
from essence.core.analyses.profiles import class_profiles
from essence.core.base.errors import ClassNotFoundError, EmptyClassError, SpecError
from essence.core.engine.activation_cache import halves_of, instance_gradients
from essence.core.engine.slices import capture


def net() -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 8, 3, padding=1),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(8, 12, 3, padding=1),
            relu2=nn.ReLU(inplace=True),
            pool=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(12 * 4 * 4, 24),
            relu3=nn.ReLU(),
            fc2=nn.Linear(24, 10),
        )
    )


@pytest.fixture(scope="module")
def trained() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    d = load_digits()
    x = torch.tensor(d.images[:600], dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target[:600])
    torch.manual_seed(0)
    model = net()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(120):
        idx = torch.randint(0, 600, (64,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval(), x, y


def by_hand(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, layer: str, units: list[int], cls: int
) -> tuple:
    """Recall and precision of one mask, by zeroing the other units inside the full model."""
    with torch.no_grad():
        with capture(model, layer) as cap:
            model(x)
        z = cap.leaf.detach()
        mask = torch.zeros(z.shape[1])
        mask[units] = 1
        shape = (1, -1) + (1,) * (z.ndim - 2)
        with capture(model, layer, substitute=z * mask.view(shape)):
            says = torch.softmax(model(x), 1)[:, cls] > 0.5
    tp = int((says & (y == cls)).sum())
    return tp / int((y == cls).sum()), tp / int(says.sum()) if says.any() else float("nan")


@pytest.mark.parametrize("layer", ["fc1", "conv2"])
def test_sweep_matches_masking_by_hand(trained, layer: str) -> None:
    model, x, y = trained
    cls = 4
    sweep = expert_sweep(
        model, (x, y), layer, cls, alphas=[1, 3, 6], betas=[0, 2], batch_size=100, device="cpu"
    )
    assert sweep.route == "fx"
    assert sweep.recall.shape == (3, 2) == sweep.precision.shape
    for ai, a in enumerate(sweep.alphas):
        for bi, b in enumerate(sweep.betas):
            units = list(sweep.positive_units[:a]) + list(sweep.negative_units[:b])
            recall, precision = by_hand(model, x, y, layer, units, cls)
            assert sweep.recall[ai, bi] == pytest.approx(recall)
            if np.isnan(precision):
                assert np.isnan(sweep.precision[ai, bi])
            else:
                assert sweep.precision[ai, bi] == pytest.approx(precision)
    # Units come from the class's influence profile.
    p = class_profiles(model, (x, y), layer, device="cpu")
    assert list(sweep.positive_units) == p.order(cls)[:6].tolist()


def test_baseline_readings(trained) -> None:
    model, x, y = trained
    sweep = expert_sweep(model, (x, y), "fc1", 2, device="cpu")
    with torch.no_grad():
        out = model(x)
    argmax = out.argmax(1) == 2
    assert sweep.baseline["predicted"] == int(argmax.sum())
    assert sweep.baseline["recall"] == pytest.approx(float((argmax & (y == 2)).sum() / (y == 2).sum()))
    binary = torch.softmax(out, 1)[:, 2] > 0.5
    assert sweep.baseline["binary"]["predicted"] == int(binary.sum())
    a, b = default_grid(24)
    assert np.array_equal(sweep.alphas, a) and np.array_equal(sweep.betas, b)


def test_whole_layer_mask_is_the_model(trained) -> None:
    model, x, y = trained
    sweep = expert_sweep(model, (x, y), "fc1", 7, alphas=[24], betas=[0], device="cpu")
    assert sweep.recall[0, 0] == pytest.approx(sweep.baseline["binary"]["recall"])


def test_cache_is_reused_and_g_never_reruns_h(trained) -> None:
    model, x, y = trained
    cache = cache_slice(model, (x, y), "fc1", device="cpu")
    assert cache.z.shape == (600, 24)
    calls = []
    handle = model.conv1.register_forward_hook(lambda *_: calls.append(1))
    try:
        a = expert_sweep(model, (x, y), "fc1", 1, cache=cache, rank_by="activation", device="cpu")
    finally:
        handle.remove()
    assert calls == []
    # The control ranks by mean activation of the class's instances.
    act = cache.z[y == 1].mean(0)
    assert list(a.positive_units[:3]) == torch.argsort(act, descending=True)[:3].tolist()


def test_criterion_floor_for_a_never_predicted_class() -> None:
    c = ExpertCriterion(precision_tolerance=0.1, prevalence_lift=2.0, min_recall_gain=0.05)
    assert c.precision_floor(float("nan"), 0.1) == pytest.approx(0.2)  # twice chance
    assert c.precision_floor(0.9, 0.1) == pytest.approx(0.8)  # the model's minus the tolerance
    assert c.precision_floor(float("nan"), 0.8) == pytest.approx(0.9)  # capped halfway to perfect
    # One cell: 1.96 standard errors of a recall on 100 instances (≤ 0.05 each); the floor binds on large classes.
    assert c.recall_gain(100) == pytest.approx(1.96 / 20, abs=1e-3) and c.recall_gain(
        10_000
    ) == pytest.approx(0.05)
    # The best of 80 cells pays for the choice (Bonferroni): z = Φ⁻¹(1 − 0.025/80) ≈ 3.42.
    assert c.recall_gain(100, cells=80) == pytest.approx(3.42 / 20, abs=2e-3)
    recall = np.array([[0.05, 0.3, 0.3]])
    precision = np.array([[0.9, 0.15, 0.5]])
    ok = c.experts(recall, precision, 0.0, float("nan"), 0.1, 100, cells=1)
    assert ok.tolist() == [[False, False, True]]
    # Chosen as the best of 3 cells, the same gain still clears the margin; against a reference it must beat
    # the reference by the margin too.
    assert c.experts(recall, precision, 0.0, float("nan"), 0.1, 100).tolist() == [[False, False, True]]
    refs = np.array([[0.0, 0.0, 0.2]])
    assert not c.experts(recall, precision, 0.0, float("nan"), 0.1, 100, references=refs).any()


def test_bad_input(trained) -> None:
    model, x, y = trained
    with pytest.raises(SpecError, match="alpha .*25.*1..24"):
        expert_sweep(model, (x, y), "fc1", 1, alphas=[1, 25], device="cpu")
    with pytest.raises(SpecError, match="beta"):
        expert_sweep(model, (x, y), "fc1", 1, betas=[-1], device="cpu")
    with pytest.raises(ClassNotFoundError, match="11"):
        expert_sweep(model, (x, y), "fc1", 11, device="cpu")
    few = y.clone()
    few[few == 5] = 6
    with pytest.raises(EmptyClassError, match="no instances"):
        expert_sweep(model, (x, few), "fc1", 5, device="cpu")
    with pytest.raises(SpecError, match="rank_by"):
        expert_sweep(model, (x, y), "fc1", 1, rank_by="magic")


@pytest.mark.parametrize("layer", ["fc1", "conv2"])
def test_unit_gradients_are_the_profiles_vectors(trained, layer: str) -> None:
    """Influence vectors computed above the slice from cached z average to the engine's class profile."""
    model, x, y = trained
    cache = cache_slice(model, (x, y), layer, device="cpu")
    rows = torch.nonzero(y == 3).flatten()
    grads = instance_gradients(cache, 3, rows, device="cpu")
    p = class_profiles(model, (x, y), layer, device="cpu")
    assert torch.allclose(grads.mean(0), p.mean[3], atol=1e-4, rtol=1e-4)


def test_crossfit_scores_every_instance_once_and_random_masks(trained) -> None:
    model, x, y = trained
    first, second = halves_of(y, seed=0)
    assert len(first) + len(second) == len(y) and not set(first.tolist()) & set(second.tolist())
    for c in range(10):  # each class split as evenly as it can be
        assert abs(int((y[first] == c).sum()) - int((y[second] == c).sum())) <= 1
    cache = cache_slice(model, (x, y), "fc1", device="cpu")
    whole = expert_sweep(model, (x, y), "fc1", 4, alphas=[24], betas=[0], cache=cache, crossfit=True)
    # Keeping every unit, the mask is the model whichever half ranked it: cross-fitting changes nothing.
    assert whole.crossfit and whole.recall[0, 0] == pytest.approx(whole.baseline["binary"]["recall"])
    a = expert_sweep(model, (x, y), "fc1", 4, rank_by="random", seed=1, cache=cache)
    b = expert_sweep(model, (x, y), "fc1", 4, rank_by="random", seed=2, cache=cache)
    # A random mask of α+β units: distinct units, a different draw per seed, no ranking to cross-fit.
    assert len(set(a.positive_units.tolist())) == len(a.positive_units)
    assert a.positive_units.tolist() != b.positive_units.tolist() and not a.crossfit


class _Skip(nn.Module):
    """A skip connection across the slice ``b``: the hook route."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.c = nn.Linear(10, 12), nn.Linear(12, 10), nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(torch.relu(self.b(self.a(x))) + x)


def test_honest_test_on_the_hook_route() -> None:
    from essence.core.analyses.experts.evidence import expert_evidence

    torch.manual_seed(0)
    model, x, y = _Skip().eval(), torch.randn(200, 10), torch.randint(0, 3, (200,))
    cache = cache_slice(model, (x, y), "b", device="cpu")
    assert cache.sliced.route == "hook"
    grads = instance_gradients(cache, 1, torch.nonzero(y == 1).flatten(), device="cpu")
    assert torch.allclose(grads.mean(0), class_profiles(model, (x, y), "b", device="cpu").mean[1], atol=1e-5)
    evidence = expert_evidence(model, (x, y), "b", 1, cache=cache, device="cpu")
    assert evidence.sweep.route == "hook" and evidence.sweep.crossfit and evidence.experts.shape == (5, 6)
