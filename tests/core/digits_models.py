"""Small CNNs trained on scikit-learn's digits, for the tests of unit matching and model comparison.

Training is the slow part of those tests, and several test files train the same model (same seed, same data,
same steps): :func:`trained_cnn` trains each one once per test session and hands every caller a fresh copy, so
no test can change the model another test sees.
"""

from __future__ import annotations

import copy
import functools

import torch
from torch import nn


@functools.cache
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    return x, torch.tensor(d.target, dtype=torch.long)


def digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1797 digits as ``x [N, 1, 8, 8]`` in [0, 1] and ``labels [N]`` (fresh tensors on each call)."""
    x, y = _digits()
    return x.clone(), y.clone()


def _cnn() -> nn.Sequential:
    return nn.Sequential(
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


def train_cnn(seed: int, x: torch.Tensor, y: torch.Tensor, steps: int = 60) -> nn.Sequential:
    """A CNN trained from ``seed``; its fc1 is module ``"6"`` (32 units), its second conv ``"2"`` (16)."""
    torch.manual_seed(seed)
    model = _cnn()
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@functools.cache
def _trained_state(seed: int, n: int, steps: int) -> dict[str, torch.Tensor]:
    x, y = _digits()
    return train_cnn(seed, x[:n], y[:n], steps).state_dict()


def trained_cnn(seed: int, n: int = 600, steps: int = 60) -> nn.Sequential:
    """``train_cnn(seed, *first n digits, steps)``, trained once per session: a fresh copy in eval mode."""
    model = _cnn()
    model.load_state_dict(_trained_state(seed, n, steps))
    return model.eval()


def permuted_copy(model: nn.Sequential, perm: torch.Tensor) -> nn.Sequential:
    """The same function with fc1's units renumbered: unit i of the copy is unit ``perm[i]`` of the original."""
    b = copy.deepcopy(model)
    with torch.no_grad():
        b[6].weight.copy_(model[6].weight[perm])
        b[6].bias.copy_(model[6].bias[perm])
        b[8].weight.copy_(model[8].weight[:, perm])
    return b
