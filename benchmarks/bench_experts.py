"""Cost of an expert sweep: 8×10 masks through g on cached z, against the model run once and per mask.

Three routes over the same data (a CNN on 64×64 RGB images, slice ``fc1`` as in the demo, and a conv slice):

- ``forward``: one forward pass of the whole model (the unit of cost);
- ``sweep``: :func:`expert_sweep` with the default 8×10 grid — h once (z cached), then 80 masks batched
  through g alone (the slice cache's cost included);
- ``rerun``: the same 80 masks, each by re-running the whole model with z substituted at the slice.

Routes are rotated and the median of the repeats is taken. Run: ``.venv/bin/python benchmarks/bench_experts.py``.
"""

from __future__ import annotations

import statistics
import time
from collections import OrderedDict

import torch
from torch import nn

from essence.core.analyses.experts.sweep import cache_slice, expert_sweep
from essence.core.analyses.profiles import class_profiles


def cnn(classes: int = 5) -> nn.Module:
    torch.manual_seed(0)
    c = [3, 16, 32, 64]
    layers: OrderedDict = OrderedDict()
    for i in range(3):
        layers[f"conv{i + 1}"] = nn.Conv2d(c[i], c[i + 1], 3, padding=1)
        layers[f"bn{i + 1}"] = nn.BatchNorm2d(c[i + 1])
        layers[f"relu{i + 1}"] = nn.ReLU()
        layers[f"pool{i + 1}"] = nn.MaxPool2d(2)
    layers["flatten"] = nn.Flatten()
    layers["fc1"] = nn.Linear(64 * 8 * 8, 64)
    layers["relu4"] = nn.ReLU()
    layers["fc2"] = nn.Linear(64, classes)
    return nn.Sequential(layers).eval()


def forward(model: nn.Module, x: torch.Tensor, batch: int) -> None:
    with torch.no_grad():
        for s in range(0, len(x), batch):
            model(x[s : s + batch])


def rerun(model: nn.Module, x: torch.Tensor, layer: str, masks: torch.Tensor, batch: int, cls: int) -> None:
    """Each mask: one pass of the whole model with a hook that masks the slice's output (h recomputed)."""
    module = dict(model.named_modules())[layer]
    with torch.no_grad():
        for mask in masks:

            def hook(_m: nn.Module, _i: tuple, out: torch.Tensor, mask: torch.Tensor = mask) -> torch.Tensor:
                return out * mask.view((1, -1) + (1,) * (out.ndim - 2))

            handle = module.register_forward_hook(hook)
            try:
                for s in range(0, len(x), batch):
                    (torch.softmax(model(x[s : s + batch]), 1)[:, cls] > 0.5).sum()
            finally:
                handle.remove()


def main(n: int = 256, batch: int = 128, repeats: int = 3) -> None:
    torch.set_num_threads(2)
    model = cnn()
    x = torch.randn(n, 3, 64, 64)
    y = torch.arange(n) % 5
    for layer, width in (("fc1", 64), ("conv3", 64)):
        profiles = class_profiles(model, (x, y), layer, device="cpu")
        masks = torch.ones(80, width)
        times: dict[str, list[float]] = {"forward": [], "sweep": [], "rerun": []}
        for _ in range(repeats):
            for route in ("forward", "sweep", "rerun"):
                t = time.perf_counter()
                if route == "forward":
                    forward(model, x, batch)
                elif route == "sweep":
                    cache = cache_slice(model, (x, y), layer, batch_size=batch, device="cpu")
                    sweep = expert_sweep(
                        model,
                        (x, y),
                        layer,
                        1,
                        profiles=profiles,
                        cache=cache,
                        device="cpu",
                        batch_size=batch,
                    )
                else:
                    rerun(model, x, layer, masks, batch, 1)
                times[route].append(time.perf_counter() - t)
        med = {k: statistics.median(v) for k, v in times.items()}
        cells = len(sweep.alphas) * len(sweep.betas)
        print(
            f"{layer}: {n} images 64×64, {cells} masks ({len(sweep.alphas)}×{len(sweep.betas)}), route "
            f"{sweep.route}: forward {med['forward']:.3f} s, sweep {med['sweep']:.3f} s "
            f"({med['sweep'] / med['forward']:.2f}× one forward), re-run per mask {med['rerun']:.2f} s "
            f"({med['rerun'] / med['forward']:.1f}× one forward); sweep is {med['rerun'] / med['sweep']:.1f}× "
            "faster than re-running"
        )


if __name__ == "__main__":
    main()
