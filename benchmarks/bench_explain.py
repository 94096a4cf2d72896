"""Cost of a one-image explanation against one forward+backward of the same image, and against Captum's route.

Routes, for one image (batch of 1), on two models: the demo-sized CNN (64×64 RGB, slices ``conv3`` and
``fc1``) and a ResNet-18 (128×128, slice ``layer3``; random weights: only the timing matters here):

- ``fwd+bwd``: one forward of the whole model and one backward of the class score to the input — the unit of
  cost (what a plain saliency map costs);
- ``explain``: :func:`essence.core.analyses.explanation.explain` with ``top_k=5`` (influence at the slice, 5 unit maps,
  integrated gradients with 32 points), everything the ``Explanation`` holds;
- ``  influence``, ``  units``, ``  ig``: its three parts alone;
- ``captum``: the same answers the usual Captum way — ``LayerGradientXActivation`` (``multiply_by_inputs=False``)
  for the influence at the slice, ``Saliency`` on the model cut at the slice once per unit (5 calls), and
  ``IntegratedGradients`` (32 points, Gauss–Legendre, one batch).

Each route runs ``REPEATS`` times in rotation; the medians of the process's CPU time and of wall time are
reported, with ratios to ``fwd+bwd``. One thread by default (the argument sets it), so the ratios do not depend on
how busy the other core is. Run: ``.venv/bin/python benchmarks/bench_explain.py [THREADS]``.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable

import torch
from torch import nn

from essence.core.analyses.explanation import explain
from essence.core.analyses.interpret import integrated_gradients, unit_input_gradients
from essence.core.engine.distributions import Instance
from essence.core.engine.influence import influence
from essence.core.engine.quantities import ClassScore
from essence.core.engine.slices import resolve_layer

REPEATS = 5
TOP_K = 5
IG_STEPS = 32


def demo_cnn(classes: int = 5) -> nn.Module:
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


def resnet18() -> nn.Module:
    import torchvision

    torch.manual_seed(0)
    return torchvision.models.resnet18(weights=None, num_classes=10).eval()


class _UnitOf(nn.Module):
    """The model up to a slice; outputs each unit (channel activations summed over positions)."""

    def __init__(self, model: nn.Module, layer: str) -> None:
        super().__init__()
        self.model, self.module = model, resolve_layer(model, layer)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        got = {}

        class Stop(Exception):
            pass

        def hook(_m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
            got["z"] = out
            raise Stop

        handle = self.module.register_forward_hook(hook)
        try:
            self.model(x)
        except Stop:
            pass
        finally:
            handle.remove()
        z = got["z"]
        return z.flatten(2).sum(-1) if z.ndim > 2 else z


def routes(model: nn.Module, layer: str, x: torch.Tensor, cls: int) -> dict[str, Callable[[], object]]:
    from captum.attr import IntegratedGradients, LayerGradientXActivation, Saliency

    q = ClassScore(cls)
    y = torch.tensor([cls])
    units = list(range(TOP_K))
    layer_grad = LayerGradientXActivation(model, resolve_layer(model, layer), multiply_by_inputs=False)
    unit_model = _UnitOf(model, layer)
    saliency = Saliency(unit_model)
    ig = IntegratedGradients(model)

    def fwd_bwd() -> None:
        xx = x.clone().requires_grad_(True)
        torch.autograd.grad(model(xx)[0, cls], xx)

    def captum() -> None:
        layer_grad.attribute(x, target=cls)
        for u in units:
            saliency.attribute(x, target=u, abs=False)
        ig.attribute(x, target=cls, n_steps=IG_STEPS, method="gausslegendre")

    return {
        "fwd+bwd": fwd_bwd,
        "explain": lambda: explain(
            model, x[0], cls, layer=layer, top_k=TOP_K, ig_steps=IG_STEPS, device="cpu"
        ),
        "  influence": lambda: influence(model, (x, y), layer, q, Instance(), batch_size=1, device="cpu"),
        "  units": lambda: unit_input_gradients(model, x[0], layer, units),
        "  ig": lambda: integrated_gradients(model, x[0], q, steps=IG_STEPS, label=cls, device="cpu"),
        "captum": captum,
    }


def measure(named: dict[str, Callable[[], object]]) -> dict[str, tuple[float, float]]:
    """Median ``(wall, cpu)`` seconds of each route, routes rotated between repeats.

    CPU time of this process is reported beside wall time: on a machine shared with other work, wall time
    measures the neighbours as much as the route, while the process's CPU time stays close to the work done.
    """
    for fn in named.values():  # warm-up
        fn()
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in named}
    keys = list(named)
    for r in range(REPEATS):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:  # rotate the order
            wall, cpu = time.perf_counter(), time.process_time()
            named[k]()
            times[k].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {
        k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in times.items()
    }


def main(threads: int = 1) -> None:
    warnings.filterwarnings("ignore")
    torch.set_num_threads(threads)
    cases = [
        ("demo CNN 64×64", demo_cnn(), "conv3", (1, 3, 64, 64)),
        ("demo CNN 64×64", demo_cnn(), "fc1", (1, 3, 64, 64)),
        ("resnet18 128×128", resnet18(), "layer3", (1, 3, 128, 128)),
    ]
    print(f"threads: {torch.get_num_threads()}, top_k={TOP_K}, IG points={IG_STEPS}, median of {REPEATS}")
    for name, model, layer, shape in cases:
        for p in model.parameters():
            p.requires_grad_(False)
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
        med = measure(routes(model, layer, x, cls=1))
        ref_wall, ref_cpu = med["fwd+bwd"]
        print(f"\n{name}, slice {layer}")
        print(f"  {'route':<14}{'cpu ms':>9}{'× fwd+bwd':>11}{'wall ms':>10}{'× fwd+bwd':>11}")
        for k, (w, c) in med.items():
            print(f"  {k:<14}{c * 1e3:>9.2f}{c / ref_cpu:>11.2f}{w * 1e3:>10.2f}{w / ref_wall:>11.2f}")
        print(
            f"  explain / captum: cpu {med['explain'][1] / med['captum'][1]:.2f}, "
            f"wall {med['explain'][0] / med['captum'][0]:.2f}"
        )


if __name__ == "__main__":
    import sys

    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
