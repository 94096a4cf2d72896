"""The benchmark table: each analysis against the physical reference and Captum's best route, in one run.

One command measures, side by side on the same model and data (torchvision resnet18, random weights with
non-trivial batch-norm statistics, 10 classes, slice ``layer3``, channel units, ``--size`` px, CPU):

==================  ===============================================  ==============================================
analysis            physical reference (written here by hand)        Captum's best route to the same numbers
==================  ===============================================  ==============================================
class profiles      one forward of the model + one backward above    ``LayerGradientXActivation``
                    the slice, per-class sums of ∂logit[y]/∂z         (``multiply_by_inputs=False``), per-instance
                                                                     targets, per-class sums
triage vectors      the same pass with q = softmax[y], every          the same Captum route on softmax outputs,
                    instance's vector kept                            vectors kept
8×10 expert sweep   h once (z cached) + 80 forwards of g on z         none: Captum has no masked-slice route; the
                    (the minimum any route pays)                      usual way, a forward hook per mask re-running
                                                                     the whole model, is shown instead
one-image explain   one forward + backward of the image to the input  ``LayerGradientXActivation`` + ``Saliency``
                                                                     per top unit + ``IntegratedGradients``
==================  ===============================================  ==============================================

Essence's routes are ``class_profiles``, ``deviation_scores`` (its profiles pass included), ``expert_sweep``
(its slice cache included) and ``explain`` (top 5 units, 32 integrated-gradient points). Within each analysis the
routes are rotated between rounds and the median of ``--rounds`` (≥ 3) is taken, as wall-clock seconds and as
this process's CPU seconds (on a shared machine the CPU time is the steadier of the two).

Peak memory: a fresh subprocess per analysis and dataset size (N and 8N images; the sweep uses its own N)
runs Essence's route on a dataset that makes each image from its index on demand (the data itself holds
nothing) and reports its peak resident set size (``getrusage(RUSAGE_SELF).ru_maxrss``: the whole process, i.e.
interpreter, torch, model and the analysis's buffers). One image's explanation has no N.

The table is printed and written to ``docs/benchmarks.md`` with the machine and the date.
Run: ``.venv/bin/python benchmarks/bench_table.py [--images 512] [--size 64] [--rounds 3] [--quick]``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import bench_experts  # noqa: E402  (the per-mask re-run route)
import bench_explain  # noqa: E402  (the one-image routes)
import bench_profiles  # noqa: E402  (the model, the profile routes, on-demand images)

from essence.core.analyses.experts.sweep import expert_sweep  # noqa: E402
from essence.core.analyses.profiles import class_profiles  # noqa: E402
from essence.core.analyses.triage import deviation_scores  # noqa: E402

LAYER = bench_profiles.LAYER
CLASSES = bench_profiles.CLASSES
SWEEP_CLASS = 1
TOP_K, IG_STEPS = bench_explain.TOP_K, bench_explain.IG_STEPS


# --------------------------------------------------------------------------------------------- routes


def slice_vectors(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int, prob: bool) -> torch.Tensor:
    """The reference pass keeping every instance's vector ``[N, U]`` (q = logit or softmax of its label)."""
    layer = dict(model.named_modules())[LAYER]
    slot: dict[str, torch.Tensor] = {}

    def cut(_m: nn.Module, _i: tuple, out: torch.Tensor) -> torch.Tensor:
        slot["z"] = out.detach().requires_grad_(True)
        return slot["z"]

    handle = layer.register_forward_hook(cut)
    rows = []
    try:
        with torch.enable_grad():
            for s in range(0, len(x), batch):
                out = model(x[s : s + batch])
                out = torch.softmax(out, 1) if prob else out
                (g,) = torch.autograd.grad(out.gather(1, y[s : s + batch, None]).sum(), slot["z"])
                rows.append(g.sum((2, 3)))
    finally:
        handle.remove()
    return torch.cat(rows)


def captum_vectors(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch: int) -> torch.Tensor:
    from captum.attr import LayerGradientXActivation

    probs = nn.Sequential(model, nn.Softmax(1)).eval()
    lga = LayerGradientXActivation(probs, dict(model.named_modules())[LAYER], multiply_by_inputs=False)
    return torch.cat(
        [
            lga.attribute(x[s : s + batch], target=y[s : s + batch]).sum((2, 3))
            for s in range(0, len(x), batch)
        ]
    )


def resnet_h(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    m = model
    x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
    return m.layer3(m.layer2(m.layer1(x)))


def resnet_g(model: nn.Module, z: torch.Tensor) -> torch.Tensor:
    return model.fc(torch.flatten(model.avgpool(model.layer4(z)), 1))


def sweep_reference(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, masks: torch.Tensor, batch: int
) -> None:
    """h once (z cached), then each mask's g forward and its recall/precision counts: the physical minimum."""
    with torch.no_grad():
        zs = [resnet_h(model, x[s : s + batch]) for s in range(0, len(x), batch)]
        for mask in masks:
            hits = 0
            for z in zs:
                p = torch.softmax(resnet_g(model, z * mask.view(1, -1, 1, 1)), 1)
                hits += int((p[:, SWEEP_CLASS] > 0.5).sum())


def analysis_routes(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, xs: torch.Tensor, ys: torch.Tensor, batch: int
) -> dict[str, dict[str, Callable[[], object]]]:
    """For each analysis: ``{"essence", "reference", "captum"}`` callables (captum may be a stand-in)."""
    sweep_profiles = class_profiles(model, (xs, ys), LAYER, batch_size=batch, device="cpu")
    width = sweep_profiles.num_units
    masks = torch.ones(80, width)
    one = x[:1]
    explain = bench_explain.routes(model, LAYER, one, cls=SWEEP_CLASS)
    return {
        "class profiles": {
            "essence": lambda: bench_profiles.essence_route(model, x, y, batch),
            "reference": lambda: bench_profiles.reference(model, x, y, batch),
            "captum": lambda: bench_profiles.captum_route(model, x, y, batch),
        },
        "triage vectors": {
            "essence": lambda: deviation_scores(model, (x, y), LAYER, batch_size=batch, device="cpu"),
            "reference": lambda: slice_vectors(model, x, y, batch, prob=True),
            "captum": lambda: captum_vectors(model, x, y, batch),
        },
        "8×10 expert sweep": {
            "essence": lambda: expert_sweep(
                model, (xs, ys), LAYER, SWEEP_CLASS, profiles=sweep_profiles, batch_size=batch, device="cpu"
            ),
            "reference": lambda: sweep_reference(model, xs, ys, masks, batch),
            "captum": lambda: bench_experts.rerun(model, xs, LAYER, masks, batch, SWEEP_CLASS),
        },
        "one-image explanation": {
            "essence": explain["explain"],
            "reference": explain["fwd+bwd"],
            "captum": explain["captum"],
        },
    }


def timed(named: dict[str, Callable[[], object]], rounds: int) -> dict[str, tuple[float, float]]:
    """Median ``(wall, cpu)`` seconds per route; routes rotated between rounds, one warm-up each."""
    for fn in named.values():
        fn()
    keys = list(named)
    got: dict[str, list[tuple[float, float]]] = {k: [] for k in keys}
    for r in range(rounds):
        for k in keys[r % len(keys) :] + keys[: r % len(keys)]:
            wall, cpu = time.perf_counter(), time.process_time()
            named[k]()
            got[k].append((time.perf_counter() - wall, time.process_time() - cpu))
    return {
        k: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for k, v in got.items()
    }


# --------------------------------------------------------------------------------------------- memory


def memory_child(analysis: str, n: int, size: int, batch: int) -> None:
    torch.set_num_threads(2)
    model = bench_profiles.build_model()
    data = bench_profiles.OnDemandImages(n, size)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if analysis == "profiles":
        class_profiles(model, data, LAYER, batch_size=batch, device="cpu")
    elif analysis == "triage":
        deviation_scores(model, data, LAYER, batch_size=batch, device="cpu")
    else:
        expert_sweep(model, data, LAYER, SWEEP_CLASS, batch_size=batch, device="cpu")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"before_kib": before, "peak_kib": peak}))


def peak_mib(analysis: str, n: int, size: int, batch: int) -> float:
    cmd = [
        sys.executable,
        __file__,
        "--memory-child",
        analysis,
        str(n),
        "--size",
        str(size),
        "--batch",
        str(batch),
    ]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_kib"] / 1024


# --------------------------------------------------------------------------------------------- table


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{os.cpu_count()}-core CPU ({cpu}), {gpu}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def render(rows: list[dict], args: argparse.Namespace, n: int, n_sweep: int, seconds: float) -> str:
    load = os.getloadavg()[0]
    lines = [
        "# Benchmarks",
        "",
        f"Measured {datetime.date.today().isoformat()} on a {machine()}; load average {load:.1f} at the end of "
        f"the run (other work shares the machine: the CPU-time ratios are the steadier figures). "
        f"resnet18 (random weights, {CLASSES} classes), slice `{LAYER}` (channels), {args.size}×{args.size} px, "
        f"batch {args.batch}, N = {n} images ({n_sweep} for the sweep, 1 for explanations), median of "
        f"{args.rounds} rotated rounds. The whole run took {seconds / 60:.1f} min. Command: "
        f"`python benchmarks/bench_table.py{''.join(' ' + a for a in sys.argv[1:])}`.",
        "",
        "| analysis | Essence s | reference s | Captum s | Essence ÷ ref | Captum ÷ ref | Essence ÷ Captum "
        "| CPU-time: Essence ÷ ref | Essence ÷ Captum | peak RSS N | peak RSS 8N |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        (ew, ec), (rw, rc), (cw, cc) = r["essence"], r["reference"], r["captum"]
        mem = r.get("memory")
        small = f"{mem[0]:.0f} MiB" if mem else "—"
        large = f"{mem[1]:.0f} MiB ({100 * (mem[1] / mem[0] - 1):+.0f} %)" if mem else "—"
        cap = r["analysis"] == "8×10 expert sweep"
        lines.append(
            f"| {r['analysis']} | {ew:.3f} | {rw:.3f} | {cw:.3f}{'*' if cap else ''} | {ew / rw:.2f} | "
            f"{cw / rw:.2f} | {ew / cw:.2f} | {ec / rc:.2f} | {ec / cc:.2f} | {small} | {large} |"
        )
    lines += [
        "",
        "References: profiles and triage — one forward of the model and one backward above the slice (z detached, "
        "no parameter gradients); sweep — h once and 80 forwards of g on the cached z; explanation — one forward "
        "and backward of the image to the input. Captum: `LayerGradientXActivation(multiply_by_inputs=False)` "
        "with per-instance targets (profiles; triage on softmax outputs); for the explanation it plus `Saliency` "
        "on each of the top 5 units and `IntegratedGradients` (32 points). *Captum has no route to an expert "
        "sweep: the column shows the usual alternative, a forward hook masking the slice and the whole model "
        "re-run per mask.",
        "",
        "Peak RSS: a fresh process per analysis and size running Essence's route on images made on demand from "
        "their index (the dataset holds nothing); the figure is the whole process (interpreter, torch, model, "
        "buffers). Triage keeps one vector per instance (N × units floats) and the sweep caches z (N × "
        "units × positions floats): both grow with N by design, profiles should not.",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--sweep-images", type=int, default=64)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--quick", action="store_true", help="128 images, 32 for the sweep: a ~1 min smoke run"
    )
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--out", type=Path, default=HERE.parent / "docs" / "benchmarks.md")
    parser.add_argument("--memory-child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child is not None:
        memory_child(args.memory_child[0], int(args.memory_child[1]), args.size, args.batch)
        return
    if args.rounds < 3:
        parser.error("--rounds must be at least 3 (medians of fewer are not worth printing)")
    start = time.perf_counter()
    torch.set_num_threads(args.threads)
    n, n_sweep = (128, 32) if args.quick else (args.images, args.sweep_images)
    model = bench_profiles.build_model()
    for p in model.parameters():
        p.requires_grad_(False)  # the references and Captum's best routes: no parameter gradients
    x, y = bench_profiles.make_data(n, args.size)
    xs, ys = x[:n_sweep], y[:n_sweep]
    rows = []
    for analysis, named in analysis_routes(model, x, y, xs, ys, args.batch).items():
        med = timed(named, args.rounds)
        rows.append({"analysis": analysis, **med})
        print(f"{analysis}: " + ", ".join(f"{k} {w:.3f} s" for k, (w, _) in med.items()), flush=True)
    if not args.no_memory:
        sizes = {"class profiles": ("profiles", n), "triage vectors": ("triage", n)}
        sizes["8×10 expert sweep"] = ("experts", n_sweep)
        for r in rows:
            if r["analysis"] in sizes:
                kind, base = sizes[r["analysis"]]
                r["memory"] = (
                    peak_mib(kind, base, args.size, args.batch),
                    peak_mib(kind, 8 * base, args.size, args.batch),
                )
    text = render(rows, args, n, n_sweep, time.perf_counter() - start)
    print("\n" + text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"written to {args.out}")


if __name__ == "__main__":
    main()
