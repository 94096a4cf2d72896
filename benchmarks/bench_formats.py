"""The same network in every model format: each analysis's time against the module with its weights.

One network — a 3-conv CNN trained here on scikit-learn's digits (8×8, 1797 images), with the sevens
under-sampled in training so that the model rarely predicts them and the diagnosis runs its expert sweep — is
saved and loaded three ways, all through ``load_model`` as the CLI and the app load them:

* **module** — ``bench_formats:build_net --weights FILE.safetensors`` (the architecture in Python, the reference);
* **.pt2** — a ``torch.export`` program with a dynamic batch dimension (``PATH.pt2``);
* **ONNX** — ``onnx:PATH.onnx`` (opset 17, dynamic batch axis, converted by onnx2torch); left out if the onnx
  extra is not installed.

Each analysis runs through the Python API as its CLI command runs it, at the slice ``pool1`` (ONNX:
``pool1/MaxPool``), channel granularity, batch 256, on the CPU:

* **profile** — class profiles of the logits;
* **triage** — class profiles of the probabilities (per instance) and the deviation scores;
* **experts** — class profiles, the slice cache, the influence-ranked and activation-ranked sweeps and the
  honest test for the rare class;
* **diagnose** — class profiles and the diagnosis of every class (probes, the preprocessing audit, and the
  expert sweep of the rare class).

For every analysis the formats are rotated within each round; each format's median wall and CPU time over
the rounds is reported with its ratio to the module's (target: ≤ 1.3 for every format and analysis). The
numbers are checked too: the profiles' and triage scores' largest difference from the module's, relative to
the module's largest value, and the diagnosis verdicts and expert grids compared as they are.
``--before`` adds the ``.pt2`` as it ran before it was compiled and cut: its unflattened modules run through
``torch.fx.Interpreter`` and g re-runs the whole model (the hook route).

A short analysis is repeated within each timed sample (``--min-sample`` seconds at least, the same count for
every format). Run: ``.venv/bin/python benchmarks/bench_formats.py [--rounds 3] [--threads 1] [--before]
[--analyses profile triage experts diagnose] [--json FILE]``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from essence.core import load_dataset, load_model  # noqa: E402
from essence.core.analyses.diagnosis.verdict import DiagnosisSettings, diagnose  # noqa: E402
from essence.core.analyses.experts.evidence import expert_evidence  # noqa: E402
from essence.core.analyses.experts.sweep import cache_slice, expert_sweep  # noqa: E402
from essence.core.analyses.profiles import class_profiles  # noqa: E402
from essence.core.analyses.triage import deviation_scores  # noqa: E402
from essence.core.inputs.data import ImageData  # noqa: E402

LAYER = "pool1"
RARE = 7  # the class under-sampled in training
ANALYSES = ("profile", "triage", "experts", "diagnose")


def build_net() -> nn.Sequential:
    """The benchmark's architecture (the module format's factory: ``bench_formats:build_net``)."""
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 16, 3, padding=1),
            relu1=nn.ReLU(),
            conv2=nn.Conv2d(16, 32, 3, padding=1),
            relu2=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            conv3=nn.Conv2d(32, 32, 3, padding=1),
            relu3=nn.ReLU(),
            pool2=nn.AdaptiveAvgPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(128, 64),
            relu4=nn.ReLU(),
            fc2=nn.Linear(64, 10),
        )
    )


def train(data: ImageData, steps: int = 300) -> nn.Sequential:
    """The network trained on the digits, with all but a few sevens left out (so sevens are rarely predicted)."""
    x = data.tensors(np.arange(len(data)))
    y = torch.from_numpy(data.labels).long()
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[torch.nonzero(y == RARE).flatten()[5:]] = False
    x, y = x[keep], y[keep]
    torch.manual_seed(0)
    model = build_net()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(y), (64,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


def save_formats(model: nn.Module, folder: Path) -> dict[str, tuple[str, Path | None]]:
    """The model as each format's spec (and weights file)."""
    from safetensors.torch import save_file

    save_file(model.state_dict(), str(folder / "net.safetensors"))
    specs: dict[str, tuple[str, Path | None]] = {
        "module": (f"{Path(__file__).stem}:build_net", folder / "net.safetensors")
    }
    example = torch.zeros(4, 1, 8, 8)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
    torch.export.save(program, str(folder / "net.pt2"))
    specs[".pt2"] = (str(folder / "net.pt2"), None)
    try:
        import onnx  # noqa: F401
        import onnx2torch  # noqa: F401
    except ImportError:
        print("onnx or onnx2torch is not installed: ONNX left out")
        return specs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example[:1],), str(folder / "net.onnx"), dynamo=False, opset_version=17,
            input_names=["input"], dynamic_axes={"input": {0: "batch"}},
        )  # fmt: skip
    specs["ONNX"] = (f"onnx:{folder / 'net.onnx'}", None)
    return specs


def layer_of(module: nn.Module, layer: str) -> str:
    """The slice's path in ``module``: the same name, or the ONNX node named after it (``pool1/MaxPool``)."""
    names = [n for n, _ in module.named_modules()]
    if layer in names:
        return layer
    return next(n for n in names if n.startswith(f"{layer}/"))


def analyses(model: nn.Module, data: ImageData, layer: str) -> dict[str, Callable[[], Any]]:
    common: dict[str, Any] = dict(batch_size=256, device="cpu")

    def profile() -> Any:
        return class_profiles(model, data, layer, kind="logit", **common)

    def triage() -> Any:
        p = class_profiles(model, data, layer, kind="prob", keep_instances=True, **common)
        return deviation_scores(model, data, layer, profiles=p, kind="prob", **common)

    def experts() -> Any:
        p = class_profiles(model, data, layer, kind="logit", **common)
        cache = cache_slice(model, data, layer, **common)
        sweep = expert_sweep(model, data, layer, RARE, profiles=p, cache=cache, **common)
        control = expert_sweep(
            model, data, layer, RARE, profiles=p, cache=cache, rank_by="activation", **common
        )
        evidence = expert_evidence(model, data, layer, RARE, cache=cache, **common)
        return sweep, control, evidence

    def diagnosis() -> Any:
        settings = DiagnosisSettings()
        p = class_profiles(model, data, layer, kind=settings.kind, allow_empty=True, **common)
        return diagnose(model, data, layer, profiles=p, settings=settings, **common)

    return {"profile": profile, "triage": triage, "experts": experts, "diagnose": diagnosis}


@contextlib.contextmanager
def as_before(module: nn.Module) -> Iterator[None]:
    """The ``.pt2`` as it ran before: every unflattened module interpreted, g on the hook route."""
    flags = [m for m in module.modules() if getattr(m, "_run_with_interpreter", None) is False]
    for m in flags:
        m._run_with_interpreter = True  # type: ignore[assignment]
    try:
        with mock.patch("essence.core.engine.split.traceable_root", lambda m: m):
            yield
    finally:
        for m in flags:
            m._run_with_interpreter = False  # type: ignore[assignment]


def differences(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each format's answers against the module's: relative differences and whether the verdicts agree."""
    ref = results["module"]
    out: dict[str, dict[str, Any]] = {}
    for fmt, res in results.items():
        if fmt == "module":
            continue

        def rel(a: Any, b: Any) -> float:
            a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
            return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))

        sweep, control, evidence = res["experts"]
        r_sweep, r_control, r_evidence = ref["experts"]
        out[fmt] = {
            "profile": rel(res["profile"].mean, ref["profile"].mean),
            "triage": rel(res["triage"].deviation, ref["triage"].deviation),
            "experts recall": rel(np.nan_to_num(sweep.recall), np.nan_to_num(r_sweep.recall)),
            "experts same": bool(
                np.array_equal(sweep.predicted, r_sweep.predicted)
                and np.array_equal(control.predicted, r_control.predicted)
                and evidence.best == r_evidence.best
            ),
            "diagnose same": [c.diagnosis for c in res["diagnose"].classes]
            == [c.diagnosis for c in ref["diagnose"].classes],
            "routes": [res["experts"][0].route, res["diagnose"].route],
        }
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-sample", type=float, default=2.0, help="seconds a timed sample lasts at least")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--before", action="store_true", help="also time the .pt2 as it ran before the fix")
    parser.add_argument("--analyses", nargs="+", default=list(ANALYSES), choices=ANALYSES)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    start_all = time.perf_counter()
    data = load_dataset("digits")
    folder = Path(tempfile.mkdtemp(prefix="bench-formats-"))
    specs = save_formats(train(data), folder)
    models = {fmt: load_model(spec, weights=weights).module for fmt, (spec, weights) in specs.items()}
    runs = {fmt: analyses(m, data, layer_of(m, LAYER)) for fmt, m in models.items()}
    wrappers: dict[str, Callable[[], contextlib.AbstractContextManager]] = {
        fmt: contextlib.nullcontext for fmt in runs
    }
    if args.before:
        runs[".pt2 before"] = runs[".pt2"]
        wrappers[".pt2 before"] = lambda: as_before(models[".pt2"])
    formats = list(runs)
    results: dict[str, dict[str, Any]] = {fmt: {} for fmt in formats}
    for fmt in formats:  # warm-up, and the answers compared below
        with wrappers[fmt]():
            for a in ANALYSES:
                results[fmt][a] = runs[fmt][a]()
    # A short analysis is repeated within each timed sample (the same count for every format) so that a
    # sample lasts at least --min-sample seconds; times are per run of the analysis.
    reps = {}
    for a in args.analyses:
        t0 = time.perf_counter()
        runs["module"][a]()
        reps[a] = max(1, math.ceil(args.min_sample / max(time.perf_counter() - t0, 1e-6)))
    times = {a: {fmt: [] for fmt in formats} for a in args.analyses}
    cpu = {a: {fmt: [] for fmt in formats} for a in args.analyses}
    for r in range(args.rounds):
        for a in args.analyses:
            for fmt in formats[r % len(formats) :] + formats[: r % len(formats)]:
                with wrappers[fmt]():
                    t0, c0 = time.perf_counter(), time.process_time()
                    for _ in range(reps[a]):
                        runs[fmt][a]()
                    times[a][fmt].append((time.perf_counter() - t0) / reps[a])
                    cpu[a][fmt].append((time.process_time() - c0) / reps[a])
    med = {a: {f: statistics.median(v) for f, v in times[a].items()} for a in args.analyses}
    med_cpu = {a: {f: statistics.median(v) for f, v in cpu[a].items()} for a in args.analyses}
    checks = differences({f: results[f] for f in formats})
    result = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}",
        "threads": args.threads,
        "rounds": args.rounds,
        "repeats_per_sample": reps,
        "layer": LAYER,
        "images": len(data),
        "load_average": os.getloadavg(),
        "seconds": med,
        "cpu_seconds": med_cpu,
        "all_seconds": times,
        "ratio_to_module": {a: {f: med[a][f] / med[a]["module"] for f in formats} for a in args.analyses},
        "cpu_ratio_to_module": {
            a: {f: med_cpu[a][f] / med_cpu[a]["module"] for f in formats} for a in args.analyses
        },
        "checks": checks,
        "run_seconds": time.perf_counter() - start_all,
    }
    print(
        f"median seconds per run over {args.rounds} rounds, {args.threads} thread(s); (wall ÷ module, CPU ÷ module)"
    )
    print(f"{'analysis':<10}" + "".join(f"{f:>22}" for f in formats))
    for a in args.analyses:
        cells = [
            f"{med[a][f]:.3f}" if f == "module"
            else f"{med[a][f]:.3f} ({med[a][f] / med[a]['module']:.2f}, {med_cpu[a][f] / med_cpu[a]['module']:.2f})"
            for f in formats
        ]  # fmt: skip
        print(f"{a:<10}" + "".join(f"{c:>22}" for c in cells))
    for fmt, c in checks.items():
        print(
            f"{fmt}: profile rel. diff {c['profile']:.1e}, triage {c['triage']:.1e}, expert recall "
            f"{c['experts recall']:.1e}; expert grids {'equal' if c['experts same'] else 'DIFFER'}; verdicts "
            f"{'equal' if c['diagnose same'] else 'DIFFER'}; g route {c['routes'][0]}"
        )
    print(f"load average {os.getloadavg()[0]:.1f}; whole run {result['run_seconds']:.0f} s")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
