"""Unit matching of two models at their slices, and the drift of a class profile over matched units."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from digits_models import digits_tensors, permuted_copy, trained_cnn
from torch import nn

from essence.core.analyses.matching import (
    ActivationMoments,
    Matching,
    ProfileDrift,
    joint_pass,
    match_units,
    profile_drift,
)
from essence.core.base.errors import Cancelled, LayerNotFoundError, SpecError


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = digits_tensors()
    return x[:600], y[:600]


@pytest.fixture(scope="module")
def trained(digits: tuple[torch.Tensor, torch.Tensor]) -> nn.Sequential:
    return trained_cnn(0, n=len(digits[1]))  # as train_cnn(0, *digits), trained once for every file


def matched(a: nn.Module, b: nn.Module, data: tuple[torch.Tensor, torch.Tensor], layer: str) -> Matching:
    _, _, moments = joint_pass(a, b, data, data, layer, layer, "channel", 64, torch.device("cpu"), None)
    return match_units(moments)


def test_matching_recovers_a_permutation(trained, digits) -> None:
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(3))
    m = matched(trained, permuted_copy(trained, perm), digits, "6")
    # unit j of B is unit perm[j] of A
    assert torch.equal(perm[m.pairs_b], m.pairs_a)
    assert all(m.partner_of(int(perm[j])) == j for j in range(32))
    live = [i for i in range(32) if i not in m.constant_a]
    assert m.mean_corr > 0.99 * len(live) / 32


def test_two_separately_trained_models_match_better_than_chance(trained, digits) -> None:
    m = matched(trained, trained_cnn(1, n=len(digits[1])), digits, "6")
    assert sorted(m.pairs_a.tolist()) == list(range(32)) and sorted(m.pairs_b.tolist()) == list(range(32))
    # the assignment is optimal: no other permutation of B gives a larger total correlation (check random ones)
    total = float(m.correlation[m.pairs_a, m.pairs_b].sum())
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        assert float(m.correlation[torch.arange(32), torch.randperm(32, generator=gen)].sum()) <= total + 1e-6
    assert m.mean_corr > 0.3


def test_joint_pass_predicts_and_refuses_the_input_slice_and_a_cancel(trained, digits) -> None:
    x, _ = digits
    cpu = torch.device("cpu")
    pa, pb, moments = joint_pass(trained, trained, digits, digits, "2", "6", "channel", 100, cpu, None)
    with torch.no_grad():
        want = trained(x).argmax(1)
    assert torch.equal(pa, want) and torch.equal(pb, want)
    assert moments.n == len(x) and moments.outputs == 10 and moments.sab.shape == (16, 32)
    with pytest.raises(LayerNotFoundError, match="above it"):
        joint_pass(trained, trained, digits, digits, "", "", "channel", 100, cpu, None)
    with pytest.raises(Cancelled):
        joint_pass(trained, trained, digits, digits, "6", "6", "channel", 100, cpu, lambda: True)


def moments_of(a: torch.Tensor, b: torch.Tensor) -> ActivationMoments:
    mo = ActivationMoments()
    mo.add(a[:50], b[:50])
    mo.add(a[50:], b[50:])
    return mo


def test_signed_and_absolute_matching_and_constant_units() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(120, 3, generator=gen)
    b = torch.stack([-a[:, 0], a[:, 2] + 0.1 * torch.randn(120, generator=gen), a[:, 1]], 1)
    corr, _, _ = moments_of(a, b).correlation()
    torch.testing.assert_close(
        corr.float(), torch.tensor(np.corrcoef(a.T, b.T)[:3, 3:], dtype=torch.float32), atol=1e-5, rtol=1e-5
    )
    signed = match_units(moments_of(a, b), mode="signed")
    absolute = match_units(moments_of(a, b), mode="abs")
    assert absolute.partner_of(0) == 0 and absolute.partner_of(1) == 2 and absolute.partner_of(2) == 1
    # maximising the signed correlation never pairs a unit with its mirror image, even at a cost elsewhere
    assert signed.partner_of(1) == 2 and signed.partner_of(0) != 0
    assert float(signed.corr.sum()) >= float(absolute.corr.sum())
    assert signed.share_above == pytest.approx(1 / 3)
    assert absolute.share_above == 1.0
    constant = torch.cat([a[:, :2], torch.ones(120, 1)], 1)
    m = match_units(moments_of(a, constant))
    assert m.constant_b == [2] and float(m.correlation[:, 2].abs().max()) == 0.0


def test_slices_of_different_widths_match_only_partially_when_allowed() -> None:
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(120, 3, generator=gen)
    b = torch.cat([a[:, [2, 0]], torch.randn(120, 3, generator=gen)], 1)  # 5 units: 2 of them A's
    with pytest.raises(SpecError, match="different widths: A's 'x' has 3 units, B's 'y' has 5"):
        match_units(moments_of(a, b), layers=("x", "y"))
    m = match_units(moments_of(a, b), allow_partial=True)
    assert len(m.pairs_a) == 3 and len(m.unmatched_b) == 2 and not m.unmatched_a
    assert m.partner_of(2) == 0 and m.partner_of(0) == 1
    assert m.to_json()["unmatched_b"] == m.unmatched_b


def test_profile_drift_over_matched_units() -> None:
    perm = torch.tensor([2, 0, 3, 1])
    matching = Matching(pairs_a=perm, pairs_b=torch.arange(4), corr=torch.ones(4), correlation=torch.eye(4))
    pa = torch.tensor([0.5, -1.0, 2.0, 0.1])
    same = profile_drift(pa, pa[perm], matching, top_k=2)  # B's unit j is A's unit perm[j]: no drift
    assert same == ProfileDrift(l2=0.0, cosine=1.0, spearman=1.0, top_overlap=1.0, k=2)
    flipped = profile_drift(pa, -pa[perm], matching, top_k=2)
    assert flipped.cosine == pytest.approx(-1.0) and flipped.spearman == pytest.approx(-1.0)
    assert flipped.l2 == pytest.approx(2 * float(pa.norm())) and flipped.top_overlap == 0.0
    undefined = profile_drift(pa, torch.full((4,), float("nan")), matching)
    assert undefined.k == 0 and all(math.isnan(undefined.to_json()[key]) for key in ("l2", "cosine"))
    assert set(same.to_json()) == {"l2", "cosine", "spearman", "top_overlap", "k"}
