"""One process of a sharded class-profile job, run by the tests with ``launch_local``.

``python shard_worker.py OUT.pt [MODE]``: every process computes its shard of a small seeded CNN's class
profiles; rank 0 saves the merged sums to ``OUT.pt``, and only after the merge. MODE injects a failure into
rank 1 while it computes its shard: ``exit`` (the process dies: ``os._exit(3)``), ``raise`` (a Python error),
``hang`` (it never answers).
"""

from __future__ import annotations

import os
import sys
import time

import torch
from torch import nn

from essence.core.base.errors import EssenceError, NonFiniteOutputError
from essence.core.scale.distributed import process_group, sharded_class_profiles

N, CLASSES = 37, 3  # odd on purpose: the shards differ in size


def model() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.Conv2d(6, 8, 3, padding=1),
        nn.Softplus(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(32, CLASSES),
    )
    gen = torch.Generator().manual_seed(1)
    bn = net[1]
    bn.running_mean.copy_(torch.randn(6, generator=gen) * 0.5)
    bn.running_var.copy_(torch.rand(6, generator=gen) + 0.5)
    return net.eval()


def data() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    return torch.randn(N, 3, 8, 8, generator=gen), torch.arange(N) % CLASSES


class Fault(nn.Module):
    """Identity, except in rank 1 where it injects the failure of ``mode``."""

    def __init__(self, mode: str) -> None:
        super().__init__()
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if os.environ.get("RANK") == "1":
            if self.mode == "exit":
                os._exit(3)
            if self.mode == "raise":
                raise NonFiniteOutputError("injected failure in rank 1")
            if self.mode == "hang":
                time.sleep(3600)
        return x


def main(out: str, mode: str = "none") -> None:
    net = nn.Sequential(Fault(mode), model()).eval()
    with process_group("cpu") as env:
        p = sharded_class_profiles(net, data(), "1.3", batch_size=4, device="cpu")
        if env.rank == 0:
            torch.save({"sum": p.sums.sum, "sumsq": p.sums.sumsq, "count": p.sums.count, "mean": p.mean}, out)
        print(f"rank {env.rank} of {env.world_size} done")


if __name__ == "__main__":
    try:
        main(*sys.argv[1:])
    except EssenceError as exc:  # as the CLI does: one line, exit status 2
        sys.stderr.write(f"error: {exc}\n")
        sys.exit(2)
