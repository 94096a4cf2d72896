"""Run one half of the planted-defect benchmark and print its tables.

``python -m benchmarks.planted --half dev|heldout [--seeds 0 1 2] [--archs cnn resnet vit] [--generators digits
fundus] [--layer last|suggest] [--variants NAME ...] [--out results.json] [--report-only]``

Each case is written to ``--out`` as soon as it is measured, and cases already there (same key and slice rule)
are skipped: a grid can be run in pieces and the table printed from the file (``--report-only``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.planted.cases import SEEDS, SPLIT, VARIANTS, build_case
from benchmarks.planted.images import GENERATORS
from benchmarks.planted.measure import ANALYSES, measure
from benchmarks.planted.models import ARCHS
from benchmarks.planted.report import render


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.planted", description=__doc__.splitlines()[0])
    p.add_argument("--half", choices=tuple(SPLIT), required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=list(SEEDS))
    p.add_argument("--archs", nargs="+", choices=ARCHS, default=list(ARCHS))
    p.add_argument("--generators", nargs="+", choices=GENERATORS, default=list(GENERATORS))
    p.add_argument("--layer", choices=("last", "suggest"), default="last")
    p.add_argument(
        "--analyses",
        nargs="+",
        choices=ANALYSES,
        default=list(ANALYSES),
        help="which analyses to run per case",
    )
    p.add_argument("--variants", nargs="+", help="a subset of the half's variants (default: all of them)")
    p.add_argument("--out", type=Path, default=Path("planted-results.json"))
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument(
        "--no-training-data",
        dest="training",
        action="store_false",
        help="diagnose without the cases' training data (by default it is given, as a user who has it would)",
    )
    p.add_argument("--report-only", action="store_true", help="print the tables of --out; run nothing")
    return p.parse_args(argv)


def chosen_variants(args: argparse.Namespace) -> list[str]:
    """The half's variants, or the asked subset of them (a variant of the other half is refused)."""
    names = list(SPLIT[args.half])
    if not args.variants:
        return names
    wrong = [v for v in args.variants if v not in names]
    if wrong:
        raise SystemExit(f"not variants of the {args.half} half: {wrong}; its variants: {names}")
    return [v for v in names if v in args.variants]


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} CPUs (shared), torch {torch.__version__} at {torch.get_num_threads()} thread(s)"


def load(path: Path) -> dict[str, Any]:
    if path.is_file():
        return json.loads(path.read_text())
    return {"meta": {}, "cases": []}


def save(path: Path, results: dict[str, Any]) -> None:
    """Write the results, merged with whatever another run wrote to the same file meanwhile (by key and rule)."""
    on_disk = load(path)["cases"]
    ours = {(c["key"], c["rule"]) for c in results["cases"]}
    results["cases"] = [c for c in on_disk if (c["key"], c["rule"]) not in ours] + results["cases"]
    tmp = path.with_suffix(f"{path.suffix}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(results, indent=1, default=float))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    torch.set_num_threads(args.threads)
    variants = chosen_variants(args)
    results = load(args.out)
    if not args.report_only:
        run(args, variants, results)
    cases = [
        c for c in results["cases"]
        if c["half"] == args.half and c["variant"] in variants and c["seed"] in args.seeds
        and c["arch"] in args.archs and c["generator"] in args.generators and c["rule"] == args.layer
    ]  # fmt: skip
    meta = {
        "half": args.half,
        "variants": variants,
        "seeds": args.seeds,
        "archs": args.archs,
        "generators": args.generators,
        "layer": args.layer,
        "cases": len(cases),
        "seconds": sum(c["seconds"] + c.get("build_seconds", 0.0) for c in cases),
        "core": sorted({c.get("core_source", "?") for c in cases}),
        "machine": results["meta"].get("machine", machine()),
        "date": results["meta"].get("date", datetime.date.today().isoformat()),
    }
    print(render(meta, cases))


def run(args: argparse.Namespace, variants: list[str], results: dict[str, Any]) -> None:
    """Build and measure every case of the grid not yet in ``results``, saving after each."""
    done = {(c["key"], c["rule"]) for c in results["cases"]}
    results["meta"] = {"machine": machine(), "date": datetime.date.today().isoformat(), "split": SPLIT}
    for generator in args.generators:
        for seed in args.seeds:
            for arch in args.archs:
                for name in variants:
                    key = f"{name}|{generator}|s{seed}|{arch}"
                    if (key, args.layer) in done:
                        continue
                    start = time.perf_counter()
                    case = build_case(VARIANTS[name], seed, arch, generator)
                    built = time.perf_counter() - start
                    record = measure(case, args.layer, tuple(args.analyses), args.training)
                    record.update(rule=args.layer, build_seconds=round(built, 1))
                    results["cases"].append(record)
                    save(args.out, results)
                    print(
                        f"{key}: {_summary(record)} ({built:.0f} + {record['seconds']:.0f} s)",
                        file=sys.stderr,
                    )


def _summary(record: dict[str, Any]) -> str:
    d = record.get("diagnosis")
    said = (
        ""
        if d is None
        else d.get("verdict", f"alarms {d['false_alarms']}" if d["any_false_alarm"] else "all ok")
    )
    auc = record.get("auc", {})
    tri = " ".join(
        f"{k} reasoning {v['reasoning']:.2f} self_conf {v['self_confidence']:.2f}" for k, v in auc.items()
    )
    return f"{said} {tri}".strip()


if __name__ == "__main__":
    main()
