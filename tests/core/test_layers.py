"""Layer suggestion: concentration scores, the one-pass gradients at every layer, and the rule."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from essence.core.analyses.layer_choice import concentration, default_candidates, suggest_layer
from essence.core.analyses.profiles import class_profiles
from essence.core.base.errors import LayerNotFoundError, SpecError


def tiny_cnn(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Linear(32, 5),
    ).eval()


@pytest.fixture
def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return torch.randn(40, 1, 8, 8, generator=gen), torch.arange(40) % 5


def test_concentration_of_known_vectors() -> None:
    share, gini = concentration(torch.ones(10))
    assert share == pytest.approx(0.8) and gini == pytest.approx(0.0, abs=1e-12)
    share, gini = concentration(torch.tensor([0.0, 0.0, -5.0, 0.0]))
    assert share == pytest.approx(0.25) and gini == pytest.approx(0.75)
    # |χ| = 4, 3, 2, 1: 4 + 3 = 70 %, 4 + 3 + 2 = 90 % ≥ 80 % → 3 of 4 units
    share, gini = concentration(torch.tensor([1.0, -2.0, 3.0, 4.0]))
    assert share == pytest.approx(0.75)
    assert gini == pytest.approx((-3 * 1 - 1 * 2 + 1 * 3 + 3 * 4) / (4 * 10))
    assert concentration(torch.tensor([4.0, 3.0, 2.0, 1.0]), mass=0.7)[0] == pytest.approx(0.5)
    share, gini = concentration(torch.zeros(3))
    assert share != share and gini != gini  # NaN: no influence at all


def test_default_candidates_leave_out_the_output() -> None:
    model = tiny_cnn()
    assert default_candidates(model) == ["0", "2", "4", "8", "10"]
    wrapped = nn.Sequential()
    wrapped.add_module("features", model[:6])
    wrapped.add_module("head", model[6:])
    assert default_candidates(wrapped) == ["features.0", "features.2", "features.4", "head.8", "head.10"]


def test_one_pass_gradients_equal_the_engines_class_profiles(data) -> None:
    model = tiny_cnn()
    result = suggest_layer(model, data, device="cpu", batch_size=16)
    assert [s.name for s in result.layers] == ["0", "2", "4", "8"]  # output layer 10 excluded
    for s in result.layers:
        profiles = class_profiles(model, data, s.name, device="cpu")
        scores = [concentration(profiles.mean[c]) for c in range(5)]
        assert s.share80 == pytest.approx(sum(p[0] for p in scores) / 5, abs=1e-6)
        assert s.gini == pytest.approx(sum(p[1] for p in scores) / 5, abs=1e-5)
        assert s.units == profiles.num_units
    assert result.layers[0].output_shape == (8, 8, 8) and result.layers[-1].output_shape == (32,)
    assert all(not m._forward_hooks for m in model.modules())


def test_the_rule_picks_the_most_concentrated_eligible_layer(data) -> None:
    model = tiny_cnn()
    result = suggest_layer(model, data, device="cpu")
    depths = [s.depth for s in result.layers]
    assert depths == pytest.approx([0, 1 / 3, 2 / 3, 1])
    eligible = [s for s in result.layers if s.eligible]
    assert [s.name for s in eligible] == ["2", "4"]  # depth in [0.25, 0.75] and ≥ 8 units
    assert result.suggested == min(eligible, key=lambda s: s.share80).name
    assert result.suggested in result.reason and result.settings["mass"] == 0.8
    # a window no candidate falls in is dropped; the unit floor stays
    loose = suggest_layer(model, data, device="cpu", min_depth=0.4, max_depth=0.5, min_units=9)
    assert {s.name for s in loose.layers if s.eligible} == {"2", "4", "8"}
    explicit = suggest_layer(model, data, layers=["0", "8", "10"], device="cpu")
    assert [s.name for s in explicit.layers] == ["0", "8", "10"]  # named layers are all kept
    js = explicit.to_json()
    assert js["suggested"] == explicit.suggested and "10" in js["all_layers"]


def test_bad_settings_and_layers(data) -> None:
    model = tiny_cnn()
    with pytest.raises(SpecError, match="mass"):
        suggest_layer(model, data, mass=1.5, device="cpu")
    with pytest.raises(SpecError):
        suggest_layer(model, data, min_depth=0.8, max_depth=0.2, device="cpu")
    with pytest.raises(LayerNotFoundError, match="conv7"):
        suggest_layer(model, data, layers=["conv7"], device="cpu")
    shared = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU())
    twice = nn.Sequential(shared, shared, nn.Linear(64, 3))
    with pytest.raises(LayerNotFoundError, match="more than once"):
        suggest_layer(twice, (torch.randn(4, 1, 8, 8), torch.arange(4) % 3), layers=["0"], device="cpu")
    assert all(not m._forward_hooks for m in twice.modules())
