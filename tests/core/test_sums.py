"""Running sums: a group's mean and standard error from Σv, Σv² and n, and the merge of disjoint shards."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from essence.core.base.errors import SpecError
from essence.core.engine.distributions import ClassConditional
from essence.core.engine.influence import influence
from essence.core.engine.sums import InfluenceSums


def test_mean_and_stderr_match_numpy_on_uneven_groups():
    rng = np.random.default_rng(3)
    v = rng.normal(size=(11, 4))
    g = np.array([0, 2, 2, 0, 2, 2, 0, 2, 2, 2, 0])
    s = InfluenceSums.zeros(3, 4)
    s.add(torch.from_numpy(v[:5]).float(), torch.from_numpy(g[:5]))  # two batches, float32 in
    s.add(torch.from_numpy(v[5:]).float(), torch.from_numpy(g[5:]))
    assert s.sum.dtype == torch.float64 and s.count.tolist() == [4, 0, 7]
    v32 = v.astype(np.float32).astype(np.float64)  # what the float32 batches carried
    for k in (0, 2):
        rows = v32[g == k]
        np.testing.assert_allclose(s.mean()[k].numpy(), rows.mean(0), rtol=1e-12)
        np.testing.assert_allclose(s.stderr()[k].numpy(), rows.std(0, ddof=1) / np.sqrt(len(rows)), rtol=1e-9)
    assert torch.isnan(s.mean()[1]).all() and torch.isnan(s.stderr()[1]).all()


def test_merging_two_shards_equals_one_pass(cnn, cnn_xy):
    x, y = cnn_xy
    whole = influence(cnn, (x, y), "block", "logit", ClassConditional(), "channel", batch_size=4)
    a = influence(cnn, (x[:7], y[:7]), "block", "logit", ClassConditional(), "channel", num_groups=3)
    b = influence(cnn, (x[7:], y[7:]), "block", "logit", ClassConditional(), "channel", num_groups=3)
    merged = a.sums.merge(b.sums)
    assert torch.equal(merged.count, whole.sums.count)
    torch.testing.assert_close(merged.sum, whole.sums.sum, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(merged.sumsq, whole.sums.sumsq, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(merged.mean(), whole.sums.mean(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(merged.stderr(), whole.sums.stderr(), rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(b.sums.merge(a.sums).sum, merged.sum, rtol=0, atol=0)


def test_sums_of_an_empty_group_give_nan_and_merge_checks_shapes():
    s = InfluenceSums.zeros(2, 3)
    s.add(torch.ones(2, 3), torch.tensor([0, 0]))
    assert s.mean()[0].tolist() == [1.0, 1.0, 1.0] and torch.isnan(s.mean()[1]).all()
    assert s.stderr()[0].tolist() == [0.0, 0.0, 0.0] and torch.isnan(s.stderr()[1]).all()
    with pytest.raises(SpecError, match="cannot merge"):
        s.merge(InfluenceSums.zeros(2, 4))


def test_select_keeps_the_chosen_groups_in_order_and_merge_leaves_its_inputs():
    s = InfluenceSums.zeros(4, 2)
    s.add(torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]), torch.tensor([3, 1, 3]))
    picked = s.select(torch.tensor([3, 1]))
    assert picked.sum.tolist() == [[6.0, 8.0], [3.0, 4.0]]
    assert picked.sumsq.tolist() == [[26.0, 40.0], [9.0, 16.0]]
    assert picked.count.tolist() == [2, 1]
    before = s.sum.clone()
    s.merge(s)
    assert torch.equal(s.sum, before)  # merge returns new sums; it does not add in place
