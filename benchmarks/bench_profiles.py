"""Class profiles against the physical reference and Captum: time, agreement, and streaming memory.

On the same data in one run — torchvision resnet18 (random weights, 10 classes, batch norm statistics made
non-trivial), slice ``layer3``, channel granularity, q = each instance's own logit, batch 64, 2 CPU threads:

* **reference** — written here by hand: one forward through the whole model and one backward through the
  layers above the slice only (z detached at the slice, parameters frozen), per-class sums of the gradient;
* **class_profiles** — Essence, all classes at once (means, standard errors, counts);
* **captum** — Captum's best route to the same numbers: ``LayerGradientXActivation(multiply_by_inputs=False)``
  with per-instance targets (parameters frozen too), then per-class sums;
* **forward** — the forward pass alone (``torch.no_grad``).

Routes are rotated within each round (so none always runs first, or right after the same one); the medians of
the rounds are reported, with each route's ratio to the reference and the largest difference of its profiles
from the reference's.

Memory: a fresh subprocess per dataset size (N and 8N images) runs ``class_profiles`` on a dataset that makes
each image from its index on demand (nothing of the data is held), and reports its peak resident set size
(``getrusage(RUSAGE_SELF).ru_maxrss``, the whole process: interpreter, torch, model and the engine's
buffers). Streaming means the two peaks differ by < 10 %.

Run: ``.venv/bin/python benchmarks/bench_profiles.py [--images N] [--size PX] [--rounds R] [--quick]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn

from essence.core.analyses.profiles import class_profiles

CLASSES = 10
LAYER = "layer3"


def build_model(seed: int = 0) -> nn.Module:
    """resnet18 with random weights and random batch-norm statistics (a fresh init hides path bugs)."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(weights=None, num_classes=CLASSES)
    gen = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.2)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
    return model.eval()


def make_data(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=gen), torch.arange(n) % CLASSES


# --------------------------------------------------------------------------------------------- the routes


def reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> torch.Tensor:
    """The physical reference: per-class sums of ∂logit[y_i]/∂z_i, channel granularity, float64 ``[C, U]``."""
    layer = dict(model.named_modules())[LAYER]
    slot: dict[str, torch.Tensor] = {}

    def cut(_m: nn.Module, _i: tuple, out: torch.Tensor) -> torch.Tensor:
        slot["z"] = out.detach().requires_grad_(True)
        return slot["z"]

    handle = layer.register_forward_hook(cut)
    sums = None
    try:
        with torch.enable_grad():
            for s in range(0, len(x), batch):
                xb, yb = x[s : s + batch], y[s : s + batch]
                out = model(xb)
                (g,) = torch.autograd.grad(out.gather(1, yb[:, None]).sum(), slot["z"])
                v = g.sum((2, 3)).double()
                sums = torch.zeros(CLASSES, v.shape[1], dtype=torch.float64) if sums is None else sums
                sums.index_add_(0, yb, v)
    finally:
        handle.remove()
    return sums


def essence_route(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> torch.Tensor:
    p = class_profiles(model, (x, y), LAYER, granularity="channel", batch_size=batch, device="cpu")
    return p.sums.sum


def captum_route(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> torch.Tensor:
    from captum.attr import LayerGradientXActivation

    lga = LayerGradientXActivation(model, dict(model.named_modules())[LAYER], multiply_by_inputs=False)
    sums = None
    for s in range(0, len(x), batch):
        xb, yb = x[s : s + batch], y[s : s + batch]
        g = lga.attribute(xb, target=yb)
        v = g.sum((2, 3)).double()
        sums = torch.zeros(CLASSES, v.shape[1], dtype=torch.float64) if sums is None else sums
        sums.index_add_(0, yb, v)
    return sums


def forward_route(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> None:
    with torch.no_grad():
        for s in range(0, len(x), batch):
            model(x[s : s + batch])


ROUTES: dict[str, Callable] = {
    "reference": reference,
    "class_profiles": essence_route,
    "captum": captum_route,
    "forward": forward_route,
}


def time_routes(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, rounds: int
) -> tuple[dict[str, tuple[float, float]], dict]:
    """Median wall-clock and CPU seconds of each route, and each route's per-class sums (last round)."""
    for p in model.parameters():
        p.requires_grad_(False)  # the reference and Captum's best route: no parameter gradients
    names = list(ROUTES)
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    results: dict[str, torch.Tensor | None] = {}
    for n in names:  # warm-up (allocator, kernels) on two batches
        ROUTES[n](model, x[: 2 * batch], y[: 2 * batch], batch)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            start, start_cpu = time.perf_counter(), time.process_time()
            results[n] = ROUTES[n](model, x, y, batch)
            times[n].append(time.perf_counter() - start)
            cpu[n].append(time.process_time() - start_cpu)
    med = {n: (statistics.median(times[n]), statistics.median(cpu[n])) for n in names}
    return med, results


def time_paired(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, rounds: int
) -> tuple[dict[str, tuple[float, float]], dict]:
    """Like :func:`time_routes`, but the routes take turns batch by batch (order rotated every batch).

    On a machine shared with other work the load changes within seconds; interleaving at the batch level
    (~0.1 s) exposes every route to the same load. Each route still runs its whole pipeline on each batch
    (``class_profiles`` is called per batch and its sums merged, which only adds per-call overhead to it).
    """
    for p in model.parameters():
        p.requires_grad_(False)
    names = list(ROUTES)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    results: dict[str, torch.Tensor | None] = {}
    for n in names:
        ROUTES[n](model, x[: 2 * batch], y[: 2 * batch], batch)
    turn = 0
    for _ in range(rounds):
        w = dict.fromkeys(names, 0.0)
        c = dict.fromkeys(names, 0.0)
        results = dict.fromkeys(names)
        for s in range(0, len(x), batch):
            xb, yb = x[s : s + batch], y[s : s + batch]
            order = names[turn % len(names) :] + names[: turn % len(names)]
            turn += 1
            for n in order:
                start, start_cpu = time.perf_counter(), time.process_time()
                r = ROUTES[n](model, xb, yb, batch)
                w[n] += time.perf_counter() - start
                c[n] += time.process_time() - start_cpu
                if r is not None:
                    results[n] = r if results[n] is None else results[n] + r
        for n in names:
            wall[n].append(w[n])
            cpu[n].append(c[n])
    med = {n: (statistics.median(wall[n]), statistics.median(cpu[n])) for n in names}
    return med, results


# --------------------------------------------------------------------------------------------- memory


class OnDemandImages(torch.utils.data.Dataset):
    """Images made from their index when asked for: the dataset itself holds nothing."""

    def __init__(self, n: int, size: int) -> None:
        self.n, self.size = n, size
        self.targets = [i % CLASSES for i in range(n)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        gen = torch.Generator().manual_seed(i)
        return torch.randn(3, self.size, self.size, generator=gen), self.targets[i]


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise OSError(f"{field} not in /proc/self/status")


def memory_child(n: int, size: int, batch: int) -> None:
    """Peak RSS while computing the profiles, the high-water mark reset right before (Linux clear_refs)."""
    torch.set_num_threads(2)
    model = build_model()
    class_profiles(model, OnDemandImages(4, size), LAYER, batch_size=batch, device="cpu", allow_empty=True)
    before = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (the peak RSS) to the current RSS
    class_profiles(model, OnDemandImages(n, size), LAYER, batch_size=batch, device="cpu")
    peak = _rss_kib("VmHWM")
    ru_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"n": n, "before_kib": before, "peak_kib": peak, "ru_maxrss_kib": ru_peak}))


def measure_memory(n: int, size: int, batch: int) -> dict:
    cmd = [sys.executable, __file__, "--memory-child", str(n), "--size", str(size), "--batch", str(batch)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels (64 or 128)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--quick", action="store_true", help="128 images, 3 rounds, 2× memory check: a smoke run"
    )
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument(
        "--paired",
        action="store_true",
        help="interleave the routes batch by batch (for a machine shared with other work)",
    )
    parser.add_argument("--memory-child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child is not None:
        memory_child(args.memory_child, args.size, args.batch)
        return
    torch.set_num_threads(args.threads)
    n = 128 if args.quick else args.images
    model = build_model()
    x, y = make_data(n, args.size)
    print(
        f"resnet18 (random weights, {CLASSES} classes) at {LAYER}, {n} images {args.size}×{args.size}, "
        f"batch {args.batch}, {torch.get_num_threads()} threads, {args.rounds} rounds (median), "
        f"torch {torch.__version__}, {platform.processor() or platform.machine()}"
    )
    timer = time_paired if args.paired else time_routes
    print(
        "timing: "
        + ("routes interleaved batch by batch" if args.paired else "whole routes rotated per round")
    )
    medians, results = timer(model, x, y, args.batch, args.rounds)
    (ref_t, ref_c), ref = medians["reference"], results["reference"]
    print(f"{'route':<16}{'wall s':>9}{'× ref':>8}{'CPU s':>9}{'× ref':>8}{'max |Δ sums|':>15}")
    for name, (t, c) in medians.items():
        diff = "" if results[name] is None else f"{float((results[name] - ref).abs().max()):.2e}"
        print(f"{name:<16}{t:>9.3f}{t / ref_t:>8.3f}{c:>9.3f}{c / ref_c:>8.3f}{diff:>15}")
    ratio = medians["class_profiles"][0] / ref_t
    vs_captum = medians["class_profiles"][0] / medians["captum"][0]
    print(
        f"class_profiles (wall): {ratio:.3f}× the reference (target ≤ 1.10: {'met' if ratio <= 1.10 else 'MISSED'}), "
        f"{vs_captum:.3f}× Captum's route (target ≤ 1.00: {'met' if vs_captum <= 1.0 else 'MISSED'})"
    )
    if args.no_memory:
        return
    factor = 2 if args.quick else 8
    small = measure_memory(n, args.size, args.batch)
    large = measure_memory(factor * n, args.size, args.batch)
    growth = large["peak_kib"] / small["peak_kib"] - 1
    inc_small = small["peak_kib"] - small["before_kib"]
    inc_large = large["peak_kib"] - large["before_kib"]
    print(
        f"peak RSS while computing (whole process): {small['peak_kib'] / 1024:.0f} MiB at {n} images, "
        f"{large['peak_kib'] / 1024:.0f} MiB at {factor * n}: {100 * growth:+.1f} % "
        f"(target < 10 %: {'met' if abs(growth) < 0.10 else 'MISSED'})"
    )
    print(
        f"  of which above the RSS right before computing ({small['before_kib'] / 1024:.0f} MiB: interpreter, "
        f"torch, model): {inc_small / 1024:.0f} MiB at {n}, {inc_large / 1024:.0f} MiB at {factor * n}"
    )


if __name__ == "__main__":
    main()
