"""Reference images of a unit: the class's images ranked by the unit's influence, with or without a stored pass."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_cnn
from torch import nn

from essence.core.analyses.exemplars import unit_exemplars
from essence.core.analyses.profiles import class_profiles
from essence.core.base.errors import EmptyClassError, SpecError


@pytest.fixture
def model() -> nn.Sequential:
    return tiny_cnn()


def test_unit_exemplars_rank_the_class_images_by_the_units_influence(model) -> None:
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(30, 3, 10, 10, generator=gen)
    y = torch.arange(30) % 4
    ex = unit_exemplars(model, (x, y), "6", 5, 2, k=3, device="cpu")
    members = torch.nonzero(y == 2).view(-1)
    brute = []
    for i in members.tolist():
        z = model[:7](x[i : i + 1]).detach().requires_grad_(True)
        (g,) = torch.autograd.grad(model[7:](z)[0, 2], z)
        brute.append(float(g[0, 5]))
    brute_t = torch.tensor(brute)
    want = members[torch.argsort(brute_t, descending=True)[:3]]
    assert torch.equal(ex.indices, want) and ex.cls == 2 and ex.unit == 5
    assert ex.class_mean == pytest.approx(float(brute_t.mean()), abs=1e-6)
    profiles = class_profiles(model, (x, y), "6", keep_instances=True, device="cpu")
    again = unit_exemplars(
        model,
        (x, y),
        "6",
        5,
        2,
        k=3,
        instance_vectors=profiles.instances.instance_vectors,
        instance_indices=profiles.instances.instance_indices,
    )
    assert torch.equal(again.indices, ex.indices)
    with pytest.raises(SpecError, match="unit 99"):
        unit_exemplars(model, (x, y), "6", 99, 2, device="cpu")
    with pytest.raises(EmptyClassError):
        unit_exemplars(model, (x, torch.zeros(30, dtype=torch.long)), "6", 1, 3, device="cpu")
