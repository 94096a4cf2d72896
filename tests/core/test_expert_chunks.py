"""The expert sweep's hook route bounds each pass by the inputs it repeats, not only by the slice's size."""

from __future__ import annotations

import torch
from torch import nn

from essence.core.analyses.experts import masks as experts
from essence.core.analyses.experts.sweep import expert_sweep


class SkipAcross(nn.Module):
    """A skip connection crosses the slice ``fc1``: the graph cannot be cut there, g re-runs the model."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(4, 4)
        self.fc2 = nn.Linear(4, 2)
        self.skip = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = torch.flatten(self.pool(self.conv(x)), 1)
        return self.fc2(torch.relu(self.fc1(f))) + self.skip(f)


def test_hook_route_passes_are_bounded_by_the_input_size(monkeypatch):
    torch.manual_seed(0)
    model = SkipAcross().eval()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 3, 32, 32, generator=g), torch.arange(16) % 2
    per_input = 3 * 32 * 32
    budget = per_input * 8
    monkeypatch.setattr(experts, "MAX_ELEMENTS_PER_PASS", budget)
    sizes: list[int] = []
    handle = model.register_forward_pre_hook(lambda _m, args: sizes.append(args[0].numel()))
    try:
        sweep = expert_sweep(
            model, (x, y), "fc1", 0, alphas=[1, 2, 3], betas=[0, 1], batch_size=8, device="cpu"
        )
    finally:
        handle.remove()
    assert sweep.route == "hook"
    assert sweep.recall.shape == (3, 2)
    assert max(sizes) <= budget, (max(sizes), budget)
