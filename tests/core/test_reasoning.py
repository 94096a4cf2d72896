"""The reasoning score: contributions, the shrunk leave-one-out distance, and a planted shortcut it finds."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from sklearn.covariance import OAS
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score
from torch import nn

from essence.core.analyses.contributions import unit_contributions
from essence.core.analyses.reasoning import Spread, concentrated, oas_shrinkage
from essence.core.analyses.triage import deviation_scores


@pytest.mark.parametrize("n, units", [(40, 6), (12, 30)])
def test_oas_shrinkage_matches_sklearn(n: int, units: int) -> None:
    x = np.random.default_rng(n).normal(size=(n, units)) * np.linspace(0.5, 3.0, units)
    spread = Spread.of(x)
    assert spread.shrinkage == pytest.approx(OAS().fit(x).shrinkage_, rel=1e-9)
    eig = np.linalg.eigvalsh(np.cov(x, rowvar=False, bias=True))
    assert oas_shrinkage(eig, n, units) == pytest.approx(spread.shrinkage, rel=1e-9)


def _shrunk(x: np.ndarray, delta: float, nu: float) -> np.ndarray:
    return (1 - delta) * np.cov(x, rowvar=False, bias=True) + delta * nu * np.eye(x.shape[1])


@pytest.mark.parametrize("n, units", [(30, 5), (8, 20)])
def test_distances_and_leave_one_out_match_the_explicit_inverse(n: int, units: int) -> None:
    rng = np.random.default_rng(units)
    x = rng.normal(size=(n, units)) @ rng.normal(size=(units, units))
    spread = Spread.of(x)
    delta, nu = spread.shrinkage, spread.target
    assert 0 < delta <= 1
    other = rng.normal(size=(4, units)) * 3
    inv = np.linalg.inv(_shrunk(x, delta, nu))
    e = other - x.mean(0)
    np.testing.assert_allclose(spread.distances(other), np.einsum("ij,jk,ik->i", e, inv, e), rtol=1e-8)
    # leave-one-out: each instance against the other n - 1, with the class's δ and ν (Sherman–Morrison)
    expect = []
    for i in range(n):
        rest = np.delete(x, i, axis=0)
        d = x[i] - rest.mean(0)
        expect.append(d @ np.linalg.inv(_shrunk(rest, delta, nu)) @ d)
    np.testing.assert_allclose(spread.leave_one_out(), expect, rtol=1e-7)
    np.testing.assert_allclose(spread.diagonal, np.diag(_shrunk(x, delta, nu)), rtol=1e-9)


def test_concentration_drops_a_planted_minority() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4))
    x[:6, 0] += 12.0  # a tenth of the class with a unit the rest never uses
    kept = concentrated(x)
    assert len(kept) == 45 and not set(range(6)) & set(kept.tolist())


def _net() -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 8, 3, padding=1),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv2=nn.Conv2d(8, 16, 3, padding=1),
            relu2=nn.ReLU(),
            pool2=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(64, 32),
            relu3=nn.ReLU(),
            fc2=nn.Linear(32, 10),
        )
    )


def _mark(x: torch.Tensor) -> torch.Tensor:
    x = x.clone()
    x[:, 0, 0:2, 0:2] = 1.0  # the top-left corner is blank in every digit
    return x


@pytest.fixture(scope="module")
def shortcut() -> tuple[nn.Module, torch.Tensor, torch.Tensor, np.ndarray]:
    """The benchmark's planted case, one seed: a mark on 60 % of the training 3s and on a tenth of the test 3s."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, ev = perm[: len(y) // 2], perm[len(y) // 2 :]
    xt, yt, xe, ye = x[tr].clone(), y[tr], x[ev].clone(), y[ev]
    rng = np.random.default_rng(0)
    threes = np.flatnonzero(yt.numpy() == 3)
    marked = rng.choice(threes, size=int(round(0.6 * len(threes))), replace=False)
    xt[marked] = _mark(xt[marked])
    torch.manual_seed(0)
    model = _net()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(0, len(yt), (64,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
        opt.step()
    model.eval()
    test_threes = np.flatnonzero(ye.numpy() == 3)
    planted = np.zeros(len(ye), dtype=bool)
    planted[rng.choice(test_threes, size=len(test_threes) // 10, replace=False)] = True
    xe[planted] = _mark(xe[planted])
    return model, xe, ye, planted


def test_contributions_below_a_linear_head_are_value_times_weight(shortcut) -> None:
    model, x, y, _ = shortcut
    c = unit_contributions(model, (x[:50], y[:50]), "relu3", device="cpu")
    with torch.no_grad():
        z = model[:-1](x[:50])
        logits = model(x[:50])
    w, b = model.fc2.weight.detach(), model.fc2.bias.detach()
    np.testing.assert_allclose(c.to_label.numpy(), (z * w[y[:50]]).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        c.to_label.sum(1).numpy(), (logits.gather(1, y[:50, None])[:, 0] - b[y[:50]]).numpy(), rtol=1e-4
    )
    p = logits.argmax(1)
    np.testing.assert_allclose(c.to_predicted.numpy(), (z * w[p]).numpy(), rtol=1e-5, atol=1e-6)
    assert model.training is False and all(q.requires_grad for q in model.parameters())


def test_a_planted_shortcut_is_found_where_confidence_ranks_it_last(shortcut) -> None:
    model, x, y, planted = shortcut
    t = deviation_scores(model, (x, y), "relu2", device="cpu")
    assert (t.predicted[planted] == 3).all()  # right, and confidently: every output score calls them clean
    truth = planted[t.indices]
    reasoning = roc_auc_score(truth, t.scores["reasoning"])
    label_doubt = roc_auc_score(truth, t.scores["self_confidence"])
    assert label_doubt < 0.3 and reasoning > 0.8, (reasoning, label_doubt)
    assert roc_auc_score(truth, t.scores["merged"]) > 0.75
