"""Triage: deviation scores from one pass, the quantity that keeps them informative, the ranking table."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau, spearmanr
from sklearn.datasets import load_digits
from sklearn.metrics import roc_auc_score
from torch import nn

from essence.core.analyses.profiles import class_profiles
from essence.core.analyses.triage import SCORES, deviation_scores
from essence.core.analyses.triage_scores import kendall_rows, spearman_rows
from essence.core.base.errors import SpecError


def digits_net() -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 8, 3, padding=1),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(8 * 4 * 4, 32),
            relu3=nn.ReLU(),  # right below the linear head: a logit's gradient here is W[y] for everyone
            fc2=nn.Linear(32, 10),
        )
    )


@pytest.fixture(scope="module")
def digits() -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray]:
    """A small CNN trained on half of digits; the other half with 10 % of its labels flipped (seeded)."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    tr, ev = perm[:900], perm[900:]
    torch.manual_seed(0)
    model = digits_net()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(150):
        idx = tr[torch.randint(0, len(tr), (64,), generator=g)]
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    model.eval()
    rng = np.random.default_rng(0)
    flipped = np.zeros(len(ev), dtype=bool)
    flipped[rng.choice(len(ev), len(ev) // 10, replace=False)] = True
    noisy = y[ev].clone()
    noisy[flipped] = (noisy[flipped] + torch.from_numpy(rng.integers(1, 10, flipped.sum()))) % 10
    return model, x[ev], y[ev], noisy, flipped


def test_vectorised_rank_correlations_match_scipy() -> None:
    rng = np.random.default_rng(0)
    a = rng.integers(0, 5, size=(40, 9)).astype(float)  # many ties
    b = rng.normal(size=(40, 9))
    b[:, :3] = 1.0
    want_tau = [kendalltau(a[i], b[i]).statistic for i in range(40)]
    want_rho = [spearmanr(a[i], b[i]).statistic for i in range(40)]
    np.testing.assert_allclose(kendall_rows(a, b, chunk=7), want_tau, atol=1e-12)
    np.testing.assert_allclose(spearman_rows(a, b), want_rho, atol=1e-12)
    # A constant row has no ordering: scored as uncorrelated, not NaN.
    assert kendall_rows(np.ones((1, 5)), b[:1, :5])[0] == 0.0
    assert spearman_rows(np.ones((1, 5)), b[:1, :5])[0] == 0.0


def test_below_a_linear_head_logit_vectors_are_identical_but_prob_vectors_inform(digits) -> None:
    model, x, _, noisy, flipped = digits
    logit = class_profiles(model, (x, noisy), "relu3", kind="logit", keep_instances=True, device="cpu")
    v, labels = logit.instances.instance_vectors, logit.instances.instance_labels
    for c in range(10):
        rows = v[labels == c]
        torch.testing.assert_close(rows, rows[:1].expand_as(rows))  # the gradient of a logit is W[c]
        torch.testing.assert_close(rows[0], model.fc2.weight[c])
    logit_triage = deviation_scores(model, (x, noisy), "relu3", kind="logit", device="cpu")
    assert np.allclose(logit_triage.scores["cosine"], 0.0, atol=1e-6)  # carries nothing

    prob = deviation_scores(model, (x, noisy), "relu3", device="cpu")  # the default quantity
    assert prob.quantity.startswith("prob")
    pv = class_profiles(model, (x, noisy), "relu3", kind="prob", keep_instances=True, device="cpu")
    rows = pv.instances.instance_vectors[pv.instances.instance_labels == 0]
    assert (rows - rows.mean(0)).norm(dim=1).max() > 1e-3  # instance vectors differ
    # Its deviation scores find the flipped labels better than chance.
    for name in ("cosine", "spearman"):
        auc = roc_auc_score(flipped[prob.indices], prob.scores[name])
        assert auc > 0.6, (name, auc)


def test_ranking_table_and_why(digits) -> None:
    model, x, _, noisy, flipped = digits
    t = deviation_scores(model, (x, noisy), "fc1", top_k=8, device="cpu")
    n = len(x)
    assert set(t.scores) == set(SCORES)
    assert all(v.shape == (n,) and np.isfinite(v).all() for v in t.scores.values())
    assert t.score == "merged" and np.array_equal(t.deviation, t.scores["merged"])
    # merged keeps the top of each queue: the most doubtful and the most unusual reasoning both rank first
    assert t.scores["merged"][np.argmax(t.scores["self_confidence"])] == 1.0
    correct = np.flatnonzero(t.predicted == t.labels)
    assert t.scores["merged"][correct[np.argmax(t.scores["reasoning"][correct])]] == 1.0
    assert sorted(t.ranking.tolist()) == list(range(n))
    ordered = t.deviation[t.ranking]
    assert np.all(np.diff(ordered) <= 0)  # most deviant first
    np.testing.assert_allclose(
        t.confidence, torch.softmax(model(x), 1).max(1).values.detach().numpy(), rtol=1e-5
    )
    assert t.why_units.shape == (n, 5) and t.why_z.shape == (n, 5)
    assert np.all(np.diff(np.abs(t.why_z), axis=1) <= 1e-12)  # largest departures first
    rows = t.rows(10)
    assert len(rows) == 10 and rows[0]["deviation"] == ordered[0]
    assert {"index", "label", "predicted", "confidence", "deviation", "reasoning", "reading", "why"} <= set(
        rows[0]
    )
    # One name, one meaning: confidence is max p in the rows as in the arrays, doubt is 1 − max p.
    np.testing.assert_allclose(t.scores["doubt"], 1.0 - t.confidence, atol=1e-12)
    for row in t.rows():
        r = int(np.flatnonzero(t.indices == row["index"])[0])
        assert row["confidence"] == t.confidence[r] == t.probabilities[r].max()
        assert row["doubt"] == t.scores["doubt"][r] and row["label_probability"] == t.label_probability[r]
    sure = t.rows()[-1]  # the least suspect of the merged queue: a confident, right prediction
    assert sure["confidence"] > 0.9 and sure["doubt"] < 0.1
    # Self-confidence finds flipped labels (measured AUC near 1 on digits); the merged queue keeps most of it.
    assert roc_auc_score(flipped[t.indices], t.scores["self_confidence"]) > 0.9
    assert roc_auc_score(flipped[t.indices], t.deviation) > 0.8
    wrong = t.predicted != t.labels
    assert all((r["reading"] is None) == (r["label"] == r["predicted"]) for r in t.rows())
    assert set(t.reasoning.reading[wrong]) <= {"own", "predicted", "both", "neither", "unknown"}
    js = t.to_json()
    assert js["layer"] == "fc1" and len(js["scores"]) == n  # every ranked instance
    assert len(t.to_json(top=3)["scores"]) == 3


def test_profiles_are_reused_and_checked(digits) -> None:
    model, x, y, _, _ = digits
    p = class_profiles(model, (x, y), "fc1", kind="prob", keep_instances=True, device="cpu")
    a = deviation_scores(model, (x, y), "fc1", profiles=p, score="cosine", device="cpu")
    b = deviation_scores(model, (x, y), "fc1", score="cosine", device="cpu")
    np.testing.assert_allclose(a.deviation, b.deviation, atol=1e-9)
    with pytest.raises(SpecError, match="keep_instances"):
        deviation_scores(model, (x, y), "fc1", profiles=class_profiles(model, (x, y), "fc1", device="cpu"))


def test_bad_input(digits) -> None:
    model, x, y, _, _ = digits
    with pytest.raises(SpecError, match="unknown triage score"):
        deviation_scores(model, (x, y), "fc1", score="vibes")
    with pytest.raises(SpecError, match="now named 'doubt'"):  # it ranked by 1 − max p: a doubt
        deviation_scores(model, (x, y), "fc1", score="confidence")
    with pytest.raises(SpecError, match="top_k"):
        deviation_scores(model, (x, y), "fc1", top_k=1000, device="cpu")
