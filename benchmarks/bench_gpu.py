"""Profile throughput against raw forward+backward throughput, and what the GPU options change.

For torchvision resnet18 and resnet50 (random weights, batch-norm statistics made non-trivial, 10 classes) at
``--size`` px (224 by default), slice ``layer3``, on ``--device`` (``auto``: CUDA when present):

* **fwd+bwd** — the raw training-style pass: forward, then backward of Σ logit[y_i] to every parameter
  (``requires_grad`` on, gradients dropped each batch): the figure GPU vendors and papers publish as
  "training throughput" without the optimizer step, so a user can compare with their own GPU;
* **profiles** — :func:`essence.core.class_profiles` over the same images (fp32), and with the options:
  ``bf16`` / ``fp16`` autocast, ``channels-last``, and both.

Batches start on the host (as they would from a dataset), so every route includes the host-to-device copy.
Routes are rotated between rounds; the median of ``--rounds`` is reported as images/s with the ratio
profiles/fwd+bwd. For each autocast option the error of its profiles against fp32 is reported as
``max |Δ mean| / max |mean fp32|`` over all classes and units. On CUDA the clock is read after
``torch.cuda.synchronize()``. Options a device does not support are reported as such, not hidden.

Run: ``.venv/bin/python benchmarks/bench_gpu.py [--models resnet18 resnet50] [--images N] [--batch B]
[--size PX] [--device auto|cpu|cuda] [--quick]``.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch
import torchvision
from torch import nn

from essence.core.analyses.profiles import class_profiles
from essence.core.base.devices import resolve_device

CLASSES = 10
LAYER = "layer3"
VARIANTS: dict[str, dict] = {
    "profiles fp32": {},
    "profiles bf16": {"autocast": "bf16"},
    "profiles fp16": {"autocast": "fp16"},
    "profiles channels-last": {"channels_last": True},
    "profiles bf16 + channels-last": {"autocast": "bf16", "channels_last": True},
}


def build(arch: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.get_model(arch, weights=None, num_classes=CLASSES)
    gen = torch.Generator().manual_seed(seed + 1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model.eval()


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def raw_fwd_bwd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, dev: torch.device) -> None:
    """Forward + backward to every parameter, batch by batch (the published 'training throughput')."""
    model.to(dev)
    for p in model.parameters():
        p.requires_grad_(True)
    for s in range(0, len(x), batch):
        xb = x[s : s + batch].to(dev, non_blocking=True)
        yb = y[s : s + batch].to(dev, non_blocking=True)
        model(xb).gather(1, yb[:, None]).sum().backward()
        model.zero_grad(set_to_none=True)
    for p in model.parameters():
        p.requires_grad_(False)


def routes(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, dev: torch.device) -> dict:
    out: dict[str, Callable[[], torch.Tensor | None]] = {
        "fwd+bwd": lambda: raw_fwd_bwd(model, x, y, batch, dev)
    }
    for name, opts in VARIANTS.items():
        out[name] = lambda opts=opts: (
            class_profiles(model, (x, y), LAYER, batch_size=batch, device=dev, **opts).mean
        )
    return out


def supported(fn: Callable[[], object]) -> str | None:
    """``None`` if ``fn`` runs, else the first line of why not."""
    try:
        fn()
    except (RuntimeError, NotImplementedError) as exc:  # an option this device or build lacks
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:90]}"
    return None


def measure(arch: str, n: int, size: int, batch: int, rounds: int, dev: torch.device) -> list[dict]:
    model = build(arch)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, size, size, generator=gen)
    y = torch.arange(n) % CLASSES
    if dev.type == "cuda":
        x, y = x.pin_memory(), y.pin_memory()
    named = routes(model, x, y, batch, dev)
    warm_x, warm_y = x[: 2 * batch], y[: 2 * batch]
    warm = routes(model, warm_x, warm_y, batch, dev)
    failed = {k: why for k, fn in warm.items() if (why := supported(fn)) is not None}
    live = [k for k in named if k not in failed]
    times: dict[str, list[float]] = {k: [] for k in live}
    results: dict[str, torch.Tensor | None] = {}
    for r in range(rounds):
        for k in live[r % len(live) :] + live[: r % len(live)]:
            sync(dev)
            start = time.perf_counter()
            results[k] = named[k]()
            sync(dev)
            times[k].append(time.perf_counter() - start)
    raw = n / statistics.median(times["fwd+bwd"])
    ref = results.get("profiles fp32")
    rows = []
    for k in named:
        if k in failed:
            rows.append({"model": arch, "route": k, "unsupported": failed[k]})
            continue
        ips = n / statistics.median(times[k])
        row = {"model": arch, "route": k, "images_per_s": ips, "vs_fwd_bwd": ips / raw}
        got = results[k]
        if got is not None and ref is not None and k != "profiles fp32":
            scale = float(ref.abs().max())
            row["rel_error"] = float((got.double() - ref.double()).abs().max()) / scale
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnet50"])
    parser.add_argument("--images", type=int, default=None, help="default: 2048 on CUDA, 32 on the CPU")
    parser.add_argument("--batch", type=int, default=None, help="default: 128 on CUDA, 16 on the CPU")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (CPU runs)")
    parser.add_argument("--quick", action="store_true", help="resnet18 only, 16 images: a smoke run")
    args = parser.parse_args()
    dev = resolve_device(args.device)
    gpu = dev.type == "cuda"
    if not gpu:
        torch.set_num_threads(args.threads)
    n = args.images or (2048 if gpu else 32)
    batch = args.batch or (128 if gpu else 16)
    models = args.models
    if args.quick:
        n, batch, models = 16, 8, ["resnet18"]
    where = (
        torch.cuda.get_device_name(dev)
        if gpu
        else f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"
    )
    print(
        f"{where}, torch {torch.__version__}: {n} images {args.size}×{args.size}, batch {batch}, slice {LAYER}, "
        f"median of {args.rounds} rounds\n"
    )
    print("| model | route | images/s | × fwd+bwd | rel. error vs fp32 |")
    print("|---|---|---:|---:|---:|")
    for arch in models:
        for row in measure(arch, n, args.size, batch, args.rounds, dev):
            if "unsupported" in row:
                print(f"| {arch} | {row['route']} | not supported here: {row['unsupported']} | | |")
                continue
            err = f"{row['rel_error']:.1e}" if "rel_error" in row else "—"
            print(
                f"| {arch} | {row['route']} | {row['images_per_s']:.1f} | {row['vs_fwd_bwd']:.2f} | {err} |"
            )


if __name__ == "__main__":
    main()
