"""Follow-up questions at a stored slice: the same answers as a fresh pass, from the layers above the slice only."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import pytest
import torch
from torch import nn

from essence.core.analyses.experts.sweep import expert_sweep
from essence.core.analyses.profiles import class_profiles
from essence.core.analyses.triage import deviation_scores
from essence.core.base.errors import SpecError
from essence.core.engine.activation_cache import cache_slice
from essence.core.engine.activation_source import StoredSlice, open_stored_slice
from essence.core.engine.distributions import (
    ClassConditional,
    GaussianNoise,
    Instance,
    LinearPath,
    WholeDataset,
)
from essence.core.engine.influence import influence
from essence.core.engine.quantities import ClassScore, Comparative, OwnLabel, PredictedClass

LAYER = "2"


def net(seed: int = 0) -> nn.Sequential:
    """A CNN with batch norm statistics that are not the identity (a bug hidden by fresh BN shows here)."""
    torch.manual_seed(seed)
    m = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 16),
        nn.Tanh(),
        nn.Linear(16, 4),
    )
    m[1].running_mean.uniform_(-0.5, 0.5)
    m[1].running_var.uniform_(0.5, 2.0)
    return m.eval()


def dataset(n: int = 40) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, 3, 6, 6, generator=g), torch.arange(n) % 4


class BelowSlice:
    """Counts the forwards of the layers below the slice (a follow-up must make none)."""

    def __init__(self, model: nn.Module) -> None:
        self.calls = 0
        model[0].register_forward_hook(lambda *_: self._seen())

    def _seen(self) -> None:
        self.calls += 1


class MemorySource:
    """A slice source over one model and data, in memory (the store's source does the same on disk)."""

    def __init__(self, model: nn.Module, data: object) -> None:
        self.model, self.data = model, data
        self.stored: StoredSlice | None = None
        self.records = 0

    def find(self, model, data, layer):
        return self.stored if model is self.model and data is self.data else None

    def recorder(self, model, data, layer, n):
        if model is not self.model or data is not self.data or self.stored is not None:
            return None
        source = self

        class Rec:
            def __init__(self) -> None:
                self.z, self.y, self.out, self.layout = [], [], [], "unknown"

            def write(self, z, y, out, layout):
                self.z.append(z.clone())
                self.y.append(y.clone())
                self.out.append(out.clone())
                self.layout = layout

        @contextmanager
        def ctx():
            rec = Rec()
            yield rec
            source.records += 1
            source.stored = open_stored_slice(
                model, data, layer, torch.cat(rec.z), torch.cat(rec.y), torch.cat(rec.out), layout=rec.layout
            )

        return ctx()


QUANTITIES = [OwnLabel("logit"), OwnLabel("prob"), ClassScore(2, "prob"), Comparative(1, 3), PredictedClass()]
DISTRIBUTIONS = [ClassConditional(), ClassConditional(cls=1), WholeDataset(), Instance(), Instance(index=5)]


@pytest.mark.parametrize("granularity", ["channel", "neuron"])
def test_every_quantity_and_distribution_from_a_stored_z_equals_a_fresh_pass(granularity):
    model, data = net(), dataset()
    cache = cache_slice(model, data, LAYER, device="cpu")
    stored = open_stored_slice(
        model, data, LAYER, cache.z, cache.labels, cache.outputs, layout="channels_first"
    )
    assert stored is not None
    below = BelowSlice(model)
    for q in QUANTITIES:
        for dist in DISTRIBUTIONS:
            fresh = influence(model, data, LAYER, q, dist, granularity, batch_size=16, device="cpu")
            calls = below.calls
            got = influence(
                model, data, LAYER, q, dist, granularity, batch_size=16, device="cpu", slices=stored
            )
            assert below.calls == calls, f"{q} {dist}: the layers below the slice ran"
            torch.testing.assert_close(got.mean, fresh.mean, rtol=1e-5, atol=1e-6, equal_nan=True)
            torch.testing.assert_close(got.stderr, fresh.stderr, rtol=1e-4, atol=1e-6, equal_nan=True)
            assert torch.equal(got.counts, fresh.counts) and torch.equal(got.groups, fresh.groups)
            assert got.unit_shape == fresh.unit_shape and got.quantity == fresh.quantity


def test_an_in_memory_cache_serves_the_engine_too():
    model, data = net(), dataset()
    cache = cache_slice(model, data, LAYER, device="cpu")  # its layout is read from one instance's forward
    fresh = influence(model, data, LAYER, Comparative(0, 2, "prob"), device="cpu")
    got = influence(model, data, LAYER, Comparative(0, 2, "prob"), device="cpu", slices=cache)
    torch.testing.assert_close(got.mean, fresh.mean, rtol=1e-5, atol=1e-6, equal_nan=True)


def test_paths_and_noise_run_h_whatever_is_stored():
    model, data = net(), dataset(12)
    cache = cache_slice(model, data, LAYER, device="cpu")
    below = BelowSlice(model)
    for dist in (LinearPath(steps=3), GaussianNoise(samples=2, sigma=0.1)):
        fresh = influence(model, data, LAYER, "logit", dist, device="cpu")
        got = influence(model, data, LAYER, "logit", dist, device="cpu", slices=cache)
        torch.testing.assert_close(got.mean, fresh.mean)
    assert below.calls > 0


def test_triage_vectors_and_profiles_from_the_first_pass_stored_z():
    model, data = net(), dataset()
    source = MemorySource(model, data)
    fresh_triage = deviation_scores(model, data, LAYER, kind="prob", device="cpu")
    fresh_logit = class_profiles(model, data, LAYER, kind="logit", device="cpu")
    first = class_profiles(
        model, data, LAYER, kind="prob", keep_instances=True, device="cpu", activations=source
    )
    assert source.records == 1 and source.stored is not None  # the first question stored z on the way
    below = BelowSlice(model)
    logit = class_profiles(model, data, LAYER, kind="logit", device="cpu", activations=source)
    vectors = class_profiles(
        model, data, LAYER, kind="prob", keep_instances=True, device="cpu", activations=source
    )
    assert below.calls == 0  # another quantity, and the triage vectors, from g alone
    triage = deviation_scores(
        model, data, LAYER, profiles=vectors, kind="prob", device="cpu", activations=source
    )
    torch.testing.assert_close(logit.mean, fresh_logit.mean, rtol=1e-5, atol=1e-6)
    assert first.instances is not None and first.instances.instance_vectors is not None
    for name, values in fresh_triage.scores.items():
        np.testing.assert_allclose(triage.scores[name], values, rtol=1e-4, atol=1e-6, err_msg=name)
    np.testing.assert_array_equal(triage.indices, fresh_triage.indices)


def test_sweep_on_a_stored_z_equals_the_sweep_on_a_fresh_one():
    model, data = net(), dataset()
    source = MemorySource(model, data)
    fresh = expert_sweep(model, data, LAYER, 1, device="cpu")
    class_profiles(model, data, LAYER, device="cpu", activations=source)  # the first question stores z
    below = BelowSlice(model)
    got = expert_sweep(model, data, LAYER, 1, device="cpu", activations=source)
    assert below.calls == 0
    np.testing.assert_array_equal(got.recall, fresh.recall)
    np.testing.assert_array_equal(got.predicted, fresh.predicted)
    np.testing.assert_equal(got.baseline, fresh.baseline)


def test_a_slice_of_another_layer_model_or_size_is_refused():
    model, data = net(), dataset()
    cache = cache_slice(model, data, LAYER, device="cpu")
    with pytest.raises(SpecError, match="layer"):
        influence(model, data, "6", slices=cache, device="cpu")
    with pytest.raises(SpecError, match="another model"):
        influence(net(1), data, LAYER, slices=cache, device="cpu")
    with pytest.raises(SpecError, match="instances"):
        influence(model, (data[0][:10], data[1][:10]), LAYER, slices=cache, device="cpu")


def test_a_stored_z_of_another_model_is_not_trusted():
    model, other, data = net(0), net(1), dataset(8)
    cache = cache_slice(model, data, LAYER, device="cpu")
    assert open_stored_slice(other, data, LAYER, cache.z, cache.labels, cache.outputs) is None
    assert open_stored_slice(model, data, LAYER, cache.z, cache.labels, cache.outputs) is not None
