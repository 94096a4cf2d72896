"""Small CNNs trained on scikit-learn's digits, for the tests of unit matching and model comparison."""

from __future__ import annotations

import copy

import torch
from torch import nn


def digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1797 digits as ``x [N, 1, 8, 8]`` in [0, 1] and ``labels [N]``."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    return x, torch.tensor(d.target, dtype=torch.long)


def train_cnn(seed: int, x: torch.Tensor, y: torch.Tensor, steps: int = 60) -> nn.Sequential:
    """A CNN trained from ``seed``; its fc1 is module ``"6"`` (32 units), its second conv ``"2"`` (16)."""
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def permuted_copy(model: nn.Sequential, perm: torch.Tensor) -> nn.Sequential:
    """The same function with fc1's units renumbered: unit i of the copy is unit ``perm[i]`` of the original."""
    b = copy.deepcopy(model)
    with torch.no_grad():
        b[6].weight.copy_(model[6].weight[perm])
        b[6].bias.copy_(model[6].bias[perm])
        b[8].weight.copy_(model[8].weight[:, perm])
    return b
