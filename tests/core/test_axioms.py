"""The axioms that single out distributional influence (Leino et al. 2018, Theorems 1 and 2), as properties.

* linear agreement — for a linear f(x) = Wx + b the influence of input j on class c is W[c, j];
* distributional marginality — influence depends only on ∂q/∂z: units q does not depend on get 0, and two
  models with the same partial derivatives for a unit give it the same influence;
* distribution linearity — the influence over a mixture of datasets is the count-weighted mixture of theirs;
* slice invariance — j-equivalent slices (one maps to the other by an identity or a reshape) agree;
* preprocessing — a fixed preprocessing step applied to the data or folded into the model changes nothing.
"""

from __future__ import annotations

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from essence.core.engine.distributions import (
    ClassConditional,
    GaussianNoise,
    Instance,
    LinearPath,
    WholeDataset,
)
from essence.core.engine.influence import influence
from essence.core.engine.quantities import ClassScore, Comparative, OwnLabel
from essence.core.inputs.preprocessing import Preprocessing

SETTINGS = settings(max_examples=15, deadline=None, derandomize=True)
seeds = st.integers(0, 2**16)

DISTRIBUTIONS = st.sampled_from(
    [
        Instance(),
        ClassConditional(),
        WholeDataset(),
        LinearPath(steps=4, baseline=0.5, method="riemann_middle"),
        GaussianNoise(samples=2, sigma=0.3),
    ]
)


def present(result) -> torch.Tensor:
    """The rows of groups that have instances (an empty class's row is NaN by design)."""
    return result.mean[result.counts > 0]


def close(a: torch.Tensor, b: torch.Tensor, tol: float = 1e-5) -> bool:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return bool((a - b).abs().max() <= tol * max(float(b.abs().max()), 1e-6))


# ---------------------------------------------------------------------------------------- linear agreement


@SETTINGS
@given(seed=seeds, d_in=st.integers(1, 7), d_out=st.integers(2, 5), n=st.integers(1, 9), dist=DISTRIBUTIONS)
def test_linear_agreement_at_the_input(seed, d_in, d_out, n, dist):
    torch.manual_seed(seed)
    model = nn.Linear(d_in, d_out).eval()
    x = torch.randn(n, d_in) * 3
    y = torch.randint(0, d_out, (n,))
    c = seed % d_out
    got = present(influence(model, (x, y), "", ClassScore(c), dist, "neuron"))
    assert close(got, model.weight[c].detach().expand_as(got))
    # and for the comparative quantity a − b: W[a] − W[b]
    b = (c + 1) % d_out
    comp = present(influence(model, (x, y), "", Comparative(c, b), dist, "neuron"))
    assert close(comp, (model.weight[c] - model.weight[b]).detach().expand_as(comp))


@SETTINGS
@given(seed=seeds, n=st.integers(2, 8), granularity=st.sampled_from(["neuron", "channel"]))
def test_linear_agreement_above_a_slice(seed, n, granularity):
    """Where g is linear (flatten → linear head) the influence at the slice is the head's coefficients."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4)
    ).eval()
    x = torch.randn(n, 2, 4, 4)
    y = torch.arange(n) % 4
    c = seed % 4
    got = influence(model, (x, y), "1", ClassScore(c), Instance(), granularity)
    w = model[3].weight[c].detach().view(3, 4, 4)
    expected = w.reshape(-1) if granularity == "neuron" else w.sum((1, 2))
    assert close(got.mean, expected.expand_as(got.mean))


# ------------------------------------------------------------------------------ distributional marginality


class TwoHeads(nn.Module):
    """z = tanh(A x) with 8 units; the output reads units 0..3 linearly, plus ``extra`` × a function of 4..7."""

    def __init__(self, extra: float) -> None:
        super().__init__()
        self.a = nn.Linear(5, 8)
        self.z = nn.Tanh()
        self.head = nn.Linear(4, 3)
        self.extra = extra

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.z(self.a(x))
        out = self.head(torch.sin(z[:, :4]))
        return out + self.extra * torch.cos(z[:, 4:]).sum(1, keepdim=True)


@SETTINGS
@given(seed=seeds, n=st.integers(1, 8), extra=st.floats(0.1, 5.0), dist=DISTRIBUTIONS)
def test_distributional_marginality(seed, n, extra, dist):
    torch.manual_seed(seed)
    without = TwoHeads(0.0).eval()
    with_extra = TwoHeads(extra).eval()
    with_extra.load_state_dict(without.state_dict())
    x = torch.randn(n, 5)
    y = torch.arange(n) % 3
    q = ClassScore(seed % 3)
    a = present(influence(without, (x, y), "z", q, dist, "neuron"))
    b = present(influence(with_extra, (x, y), "z", q, dist, "neuron"))
    # units the quantity does not depend on get exactly 0
    assert torch.all(a[:, 4:] == 0)
    # units whose partial derivatives are the same in both models get the same influence
    assert close(a[:, :4], b[:, :4])
    assert not torch.allclose(b[:, 4:], torch.zeros_like(b[:, 4:]))


# ------------------------------------------------------------------------------------ distribution linearity


@SETTINGS
@given(seed=seeds, n_a=st.integers(1, 9), n_b=st.integers(1, 9), kind=st.sampled_from(["logit", "prob"]))
def test_distribution_linearity(seed, n_a, n_b, kind, cnn_factory):
    model = cnn_factory(seed % 5)
    gen = torch.Generator().manual_seed(seed)
    xa, xb = torch.randn(n_a, 3, 8, 8, generator=gen), torch.randn(n_b, 3, 8, 8, generator=gen) * 2 + 0.5
    ya, yb = torch.randint(0, 3, (n_a,), generator=gen), torch.randint(0, 3, (n_b,), generator=gen)
    x, y = torch.cat([xa, xb]), torch.cat([ya, yb])
    q = OwnLabel(kind)

    mix = influence(model, (x, y), "block", q, WholeDataset(), "channel").mean[0]
    a = influence(model, (xa, ya), "block", q, WholeDataset(), "channel").mean[0]
    b = influence(model, (xb, yb), "block", q, WholeDataset(), "channel").mean[0]
    assert close(mix, (n_a * a + n_b * b) / (n_a + n_b))

    # per class: the mixture's class sums are the sums of the parts' class sums
    parts = [
        influence(model, d, "block", q, ClassConditional(), "channel", num_groups=3)
        for d in ((xa, ya), (xb, yb))
    ]
    whole = influence(model, (x, y), "block", q, ClassConditional(), "channel")
    for c in range(3):
        counts = [int(p.counts[c]) for p in parts]
        if sum(counts) == 0:
            assert torch.isnan(whole.mean[c]).all()
            continue
        weighted = sum(k * torch.nan_to_num(p.mean[c]) for k, p in zip(counts, parts, strict=True)) / sum(
            counts
        )
        assert close(whole.mean[c], weighted)


# -------------------------------------------------------------------------------------------- slice invariance


class Reshaped(nn.Module):
    """fc → Identity → Unflatten(3×4) → tanh → Flatten → out: fc, ident and unflat are j-equivalent slices."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 12)
        self.ident = nn.Identity()
        self.unflat = nn.Unflatten(1, (3, 4))
        self.act = nn.Tanh()
        self.flat = nn.Flatten()
        self.out = nn.Linear(12, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.flat(self.act(self.unflat(self.ident(self.fc(x))))))


@SETTINGS
@given(seed=seeds, n=st.integers(1, 8), dist=DISTRIBUTIONS, q=st.sampled_from(["logit", "prob"]))
def test_slice_invariance(seed, n, dist, q):
    torch.manual_seed(seed)
    model = Reshaped().eval()
    x = torch.randn(n, 6)
    y = torch.arange(n) % 3
    at_fc = influence(model, (x, y), "fc", q, dist, "neuron")
    at_ident = influence(model, (x, y), "ident", q, dist, "neuron")
    at_unflat = influence(model, (x, y), "unflat", q, dist, "neuron")
    assert at_unflat.unit_shape == (3, 4) and at_fc.unit_shape == (12,)
    assert close(present(at_ident), present(at_fc))
    assert close(present(at_unflat), present(at_fc))  # units flattened in C-order match one to one


# -------------------------------------------------------------------------------------------- preprocessing


class Folded(nn.Module):
    """A preprocessing recipe as the model's first layer: raw images in, the model's logits out."""

    def __init__(self, recipe: Preprocessing, model: nn.Module) -> None:
        super().__init__()
        self.recipe = recipe
        self.model = model

    def forward(self, raw: torch.Tensor) -> torch.Tensor:
        return self.model(self.recipe.apply_array(raw))


@SETTINGS
@given(
    seed=seeds,
    n=st.integers(1, 6),
    blur=st.sampled_from([0.0, 0.8]),
    mean=st.floats(0.0, 0.6),
    std=st.floats(0.2, 2.0),
)
def test_preprocessing(seed, n, blur, mean, std, cnn_factory):
    rng = np.random.default_rng(seed)
    raw = rng.integers(0, 256, size=(n, 8, 8, 3)).astype(np.float32)  # NHWC, like images on disk
    y = torch.as_tensor(rng.integers(0, 3, size=n))
    recipe = Preprocessing(blur_sigma=blur, mean=(mean,), std=(std,))
    model = cnn_factory(seed % 3)
    applied = influence(model, (recipe.apply_array(raw), y), "block", "prob", Instance(), "channel")
    folded = influence(
        Folded(recipe, model).eval(), (torch.from_numpy(raw), y), "model.block", "prob", Instance(), "channel"
    )
    assert close(folded.mean, applied.mean)
