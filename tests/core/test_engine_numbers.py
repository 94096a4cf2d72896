"""The engine's numbers and API at the edges: sums sized to what is asked, float64 kept, per-row baselines
across batch boundaries, models whose instances are coupled by their batch, and units that fit the layout."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from essence.core.base.independence import BatchCouplingError
from essence.core.engine import influence as engine
from essence.core.engine.distributions import Instance, LinearPath
from essence.core.engine.influence import influence
from essence.core.engine.slices import LayoutError
from essence.core.engine.sums import InfluenceSums


def _data(n: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 6, 6, generator=g), torch.arange(n) % 3


def _cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 3),
    ).eval()


def test_one_instance_allocates_sums_for_one_instance(monkeypatch):
    sizes: list[int] = []
    zeros = InfluenceSums.zeros

    def spy(groups: int, units: int, device="cpu") -> InfluenceSums:
        sizes.append(groups)
        return zeros(groups, units, device)

    monkeypatch.setattr(InfluenceSums, "zeros", staticmethod(spy))
    x, y = _data(40)
    model = _cnn()
    one = influence(model, (x, y), "0", distribution=Instance(index=17), granularity="neuron", batch_size=8)
    assert sizes == [1]
    assert one.groups.tolist() == [17] and one.counts.tolist() == [1]
    every = influence(model, (x, y), "0", distribution=Instance(), granularity="neuron", batch_size=8)
    torch.testing.assert_close(one.mean[0], every.mean[17])
    shard = influence(model, (x, y), "0", distribution=Instance(), batch_size=8, indices=[30, 2, 11])
    assert shard.groups.tolist() == [2, 11, 30]
    channels = influence(model, (x, y), "0", distribution=Instance(), batch_size=8)
    torch.testing.assert_close(shard.mean, channels.mean[[2, 11, 30]])


def test_float64_models_give_float64_results():
    x, y = _data(6)
    model = _cnn().double()
    x64 = x.double()
    result = influence(model, (x64, y), "3", distribution=Instance(), batch_size=4)
    assert result.mean.dtype == torch.float64 and result.stderr.dtype == torch.float64
    # the reference: each instance alone, in float64 throughout
    for i in range(len(x)):
        z = model[:4](x64[i : i + 1]).detach().requires_grad_(True)
        (g,) = torch.autograd.grad(model[4:](z)[0, int(y[i])], z)
        torch.testing.assert_close(result.mean[i], g.reshape(-1), rtol=1e-12, atol=1e-14)
    # float32 data reach a float64 model as float64
    from_32 = influence(model, (x, y), "3", distribution=Instance(), batch_size=4)
    assert from_32.mean.dtype == torch.float64


def test_per_row_baselines_across_batch_boundaries():
    x, y = _data(7)
    model = _cnn()
    baselines = torch.randn(7, 3, 6, 6, generator=torch.Generator().manual_seed(5)) * 0.1
    path = LinearPath(steps=3, baseline=baselines, method="riemann_middle")
    batched = influence(model, (x, y), "", distribution=path, granularity="neuron", batch_size=3)
    for i in (0, 4, 6):
        alone = LinearPath(steps=3, baseline=baselines[i], method="riemann_middle")
        ref = influence(model, (x[i : i + 1], y[i : i + 1]), "", distribution=alone, granularity="neuron")
        torch.testing.assert_close(batched.mean[i], ref.mean[0], rtol=1e-5, atol=1e-6)


class _NoRunningStats(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4, track_running_stats=False)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.bn(self.conv(x)).mean((2, 3)))


class _FunctionalDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.dropout(self.conv(x).mean((2, 3)), 0.5))  # training=True whatever the mode


@pytest.mark.parametrize(
    ("model", "reason"),
    [(_NoRunningStats, "batch norm without running statistics at bn"), (_FunctionalDropout, "F.dropout")],
)
def test_models_that_couple_a_batch_are_refused(model, reason):
    torch.manual_seed(0)
    x, y = _data(8)
    with pytest.raises(BatchCouplingError, match=reason):
        influence(model().eval(), (x, y), "conv", batch_size=8)


def test_coupling_check_does_not_refuse_ordinary_models():
    x, y = _data(8)
    influence(_cnn(), (x, y), "1", batch_size=8)  # batch norm with running statistics: independent


def test_channel_units_need_channels_first():
    """A [B, H, W, C] slice's channels are its last axis: channel units (axis 1) are refused, features offered."""

    class ChannelsLast(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(3, 5)
            self.head = nn.Linear(5, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.head(self.embed(x.permute(0, 2, 3, 1)).mean((1, 2)))

    x, y = _data(4)
    torch.manual_seed(0)
    model = ChannelsLast().eval()
    with pytest.raises(LayoutError, match="feature"):
        influence(model, (x, y), "embed", batch_size=4)
    feats = influence(model, (x, y), "embed", granularity="feature", batch_size=4)
    assert feats.unit_shape == (5,)
    neurons = influence(model, (x, y), "embed", granularity="neuron", batch_size=4)
    torch.testing.assert_close(feats.mean, neurons.mean.reshape(3, 6, 6, 5).sum((1, 2)), rtol=1e-5, atol=1e-6)


def test_engine_keeps_its_batching():
    assert engine.influence is influence


def test_non_finite_outputs_are_not_called_a_coupling():
    """NaN outputs differ from themselves: the coupling check leaves them to the error that names them."""
    from essence.core.base.errors import NonFiniteOutputError
    from essence.core.base.independence import check_batch_independent

    class Nan(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3 * 6 * 6, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.flatten(1)) * float("nan")

    x, y = _data(4)
    check_batch_independent(Nan().eval(), x)  # no coupling claimed
    with pytest.raises(NonFiniteOutputError):
        influence(Nan().eval(), (x, y), "fc", batch_size=4)
