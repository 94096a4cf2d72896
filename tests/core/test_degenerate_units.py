"""Units whose influence is zero up to rounding (a token's features feeding a LayerNorm) are refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from essence.core import class_profiles
from essence.core.base.errors import EssenceError
from essence.core.engine.slices import DegenerateUnitsError, check_units_carry, reduce_units


class _Tokens(nn.Module):
    """[B, 12] → [B, 3, 4] tokens → Linear → LayerNorm → mean over tokens → head (optionally a residual)."""

    def __init__(self, residual: bool) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.head = nn.Linear(4, 3)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.embed(x.reshape(len(x), 3, 4))
        h = self.norm(z) + (z if self.residual else 0)
        return self.head(h.mean(1))


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(30, 12, generator=g), torch.arange(30) % 3


def test_token_units_before_a_layer_norm_are_refused() -> None:
    torch.manual_seed(0)
    model = _Tokens(residual=False).eval()
    with pytest.raises(DegenerateUnitsError, match=r"every token unit.*granularity='feature'") as e:
        class_profiles(model, _data(), "embed", granularity="token", device="cpu")
    assert isinstance(e.value, EssenceError)
    # The same slice at features is a real influence.
    p = class_profiles(model, _data(), "embed", granularity="feature", device="cpu")
    assert p.mean.abs().max() > 1e-3


def test_a_residual_keeps_token_units() -> None:
    torch.manual_seed(0)
    p = class_profiles(_Tokens(residual=True).eval(), _data(), "embed", granularity="token", device="cpu")
    assert p.unit_shape == (3,) and p.mean.abs().max() > 1e-3


def test_float64_and_zero_gradients() -> None:
    g = torch.randn(5, 3, 8, dtype=torch.float64)
    g = g - g.mean(-1, keepdim=True)
    with pytest.raises(DegenerateUnitsError):
        check_units_carry(g, reduce_units(g, "token"), "token")
    zero = torch.zeros(5, 3, 8)  # the layers above never read the slice: no rounding, let through
    check_units_carry(zero, reduce_units(zero, "token"), "token")
    # Neuron units sum nothing, and a healthy conv-like gradient's channels are not flagged.
    check_units_carry(g, reduce_units(g, "neuron"), "neuron")
    conv = torch.randn(4, 2, 3, 3)
    check_units_carry(conv, reduce_units(conv, "channel"), "channel")


def test_instance_norm_channels_are_refused() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3, padding=1), nn.InstanceNorm2d(2), nn.Flatten(), nn.Linear(2 * 16, 3)
    ).eval()
    x, y = torch.randn(12, 1, 4, 4), torch.arange(12) % 3
    with pytest.raises(DegenerateUnitsError, match="granularity='neuron'"):
        class_profiles(model, (x, y), "0", granularity="channel", device="cpu")
