"""g(h(x)) == model(x): the graph cut where it traces, the hook route where it does not or cannot."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from essence.core.base.errors import LayerNotFoundError
from essence.core.engine.split import split_model


class Residual(nn.Module):
    """A skip connection from below ``b`` to above it: g needs more than z."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.a(x))
        return self.fc(torch.relu(self.bn(self.b(y)) + y).mean((2, 3)))


class Branchy(nn.Module):
    """Control flow on values: symbolic tracing fails."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 6)
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.a(x)
        if z.sum() > 0:
            z = z * 2
        return self.fc(torch.relu(z))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x))


def cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        Block(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 8),
        nn.ReLU(inplace=True),
        nn.Linear(8, 3),
    ).eval()


@pytest.mark.parametrize("layer", ["0", "1", "2", "2.conv", "5", "6"])
def test_fx_route_reproduces_the_model(layer: str) -> None:
    model = cnn()
    x = torch.randn(6, 3, 8, 8)
    sliced = split_model(model, layer, example=x)
    assert sliced.route == "fx", sliced.reason
    with torch.no_grad():
        z = sliced.h(x)
        z_before = z.clone()
        torch.testing.assert_close(sliced.g(z), model(x))
    # In-place ReLUs above the slice must not touch the caller's z (experts reuse the cached z).
    assert torch.equal(z, z_before)


def test_fx_g_does_not_run_the_layers_below() -> None:
    model = cnn()
    calls = []
    model[0].register_forward_hook(lambda *_: calls.append(1))
    sliced = split_model(model, "5")
    with torch.no_grad():
        z = sliced.h(torch.randn(2, 3, 8, 8))
        calls.clear()
        sliced.g(z)
    assert calls == []


def test_skip_across_the_slice_falls_back_to_the_hook_and_stays_correct() -> None:
    torch.manual_seed(1)
    model = Residual()
    model.bn.running_mean.uniform_(-1, 1)
    model.bn.running_var.uniform_(0.5, 2)
    model.eval()
    x = torch.randn(5, 3, 6, 6)
    sliced = split_model(model, "b", example=x)
    assert sliced.route == "hook"
    assert "skip" in sliced.reason
    with torch.no_grad():
        z = sliced.h(x)
        torch.testing.assert_close(sliced.g(z, x), model(x))
        # The substituted z really is used: a changed z changes the output.
        assert not torch.allclose(sliced.g(z * 0, x), model(x))
    with pytest.raises(LayerNotFoundError, match="needs the inputs"):
        sliced.g(z)


def test_a_slice_below_the_skip_still_cuts() -> None:
    model = Residual().eval()
    x = torch.randn(2, 3, 6, 6)
    sliced = split_model(model, "a", example=x)
    assert sliced.route == "fx"
    with torch.no_grad():
        torch.testing.assert_close(sliced.g(sliced.h(x)), model(x))


def test_untraceable_model_takes_the_hook_route() -> None:
    torch.manual_seed(2)
    model = Branchy().eval()
    x = torch.randn(4, 5)
    sliced = split_model(model, "a")
    assert sliced.route == "hook"
    with torch.no_grad():
        torch.testing.assert_close(sliced.g(sliced.h(x), x), model(x))


def test_bad_layers() -> None:
    with pytest.raises(LayerNotFoundError, match="fc9"):
        split_model(cnn(), "fc9")
    with pytest.raises(LayerNotFoundError):
        split_model(cnn(), "")
