"""Fixtures of the CLI's tests: the small digits CNN that several of them train, trained once per session.

Five test files train the same network (``conv1 → pool1 → fc1 → fc2`` on scikit-learn's digits, Adam at 3e-3,
batches of 64 drawn from torch's global generator after ``torch.manual_seed(seed)``) for 0 to 150 steps. The
first ``k`` steps of a longer run are exactly a ``k``-step run, so one run per seed serves every step count: a
snapshot of the weights and of the global generator is kept after each step. A test gets the weights it trained
before, and the global generator left as its own training loop would have left it.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

import pytest
import torch
from torch import nn


def digits_net() -> nn.Sequential:
    """The network of the CLI tests' factories (``build()``): its slices are ``conv1``, ``fc1``, ``fc2``."""
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 8, 3, padding=1),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(128, 32),
            relu3=nn.ReLU(),
            fc2=nn.Linear(32, 10),
        )
    )


class _Run:
    """One seed's training run, extended on demand, with the weights and generator state after every step."""

    def __init__(self, seed: int, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y
        outer = torch.get_rng_state()
        torch.manual_seed(seed)
        self.model = digits_net()
        self.opt = torch.optim.Adam(self.model.parameters(), lr=3e-3)
        self.snapshots = [(self._weights(), torch.get_rng_state())]
        torch.set_rng_state(outer)

    def _weights(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def after(self, steps: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        if steps >= len(self.snapshots):
            torch.set_rng_state(self.snapshots[-1][1])
            for _ in range(steps + 1 - len(self.snapshots)):
                idx = torch.randint(0, len(self.y), (64,))
                self.opt.zero_grad()
                nn.functional.cross_entropy(self.model(self.x[idx]), self.y[idx]).backward()
                self.opt.step()
                self.snapshots.append((self._weights(), torch.get_rng_state()))
        return self.snapshots[steps]


@pytest.fixture(scope="session")
def trained_digits_net() -> Callable[[int, int], nn.Sequential]:
    """``trained_digits_net(seed, steps)``: a fresh :func:`digits_net` (train mode) with the weights of

    ``torch.manual_seed(seed)``, the net built, then ``steps`` Adam steps on random batches of 64 digits;
    torch's global generator is left where that loop leaves it.
    """
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # the digits recipe: scale 16
    y = torch.tensor(d.target)
    runs: dict[int, _Run] = {}

    def trained(seed: int, steps: int) -> nn.Sequential:
        if seed not in runs:
            runs[seed] = _Run(seed, x, y)
        weights, rng = runs[seed].after(steps)
        model = digits_net()
        model.load_state_dict(weights)
        torch.set_rng_state(rng)
        return model

    return trained
