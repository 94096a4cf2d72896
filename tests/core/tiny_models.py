"""A tiny CNN with named classes, for the tests of explanations, exemplars, the panel and image reading."""

from __future__ import annotations

import torch
from torch import nn

NAMES = ["cat", "dog", "owl", "fox"]


def tiny_cnn(seed: int = 0) -> nn.Sequential:
    """Four classes from ``[3, H, W]`` inputs; module ``"2"`` is an 8-channel conv, ``"6"`` a 16-unit linear."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, 16),
        nn.ReLU(),
        nn.Linear(16, 4),
    ).eval()
