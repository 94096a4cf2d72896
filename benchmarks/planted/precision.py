"""How often each verdict of the diagnosis was right when given, on the held-out half of the planted benchmark.

``python -m benchmarks.planted.precision --results FILES... [--rule last] --out
core/analyses/diagnosis/benchmark_precision.json``

Reads benchmark results files (``python -m benchmarks.planted ... --out FILE``), keeps the **held-out** cases
only (development cases in a file are left out: the reported number is never tuned on), and counts, for every
verdict kind, how often it was given and how often it was right: precision = right / given. The table ships with
Essence (``essence.core.analyses.diagnosis``) and every verdict carries its row.

**The truth of each call**, from what each case records (``measure.py``, ``diagnosis_record``):

- Every class of a case that plants nothing for the diagnosis (label noise, shortcuts, controls), and every
  class but the planted one elsewhere, should be "ok": "ok" there is right, any other verdict wrong.
- The planted class should get the variant's verdict where the plant *took* (``effective``: its recall fell
  below ½, judged on the model's predictions); where it did not, the model uses the class as well as a
  healthy one, and the right verdict is "ok".
- "lossy step named": the audit named a step for the planted class; right when it named exactly one and it
  is the variant's step (``expected_step``); wrong where the variant expects none, or none is judged (its
  cause is no preprocessing step).

**Computed from what is recorded.** A case records the verdict of every class (``verdicts``) but details only
the planted class: the other classes' verdicts are the list without one occurrence of the planted class's
verdict (the planted class's index is not recorded; the count needs only the multiset). Which step the audit
named is recorded for the planted class only; an audit runs only for a "not learned" verdict, so a "not
learned" on another class may have named a step that no file records: such classes are counted in
``unrecorded_audits`` (0 in the shipped table, so its "lossy step named" row is complete).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from essence.core.analyses.diagnosis.benchmark import STEP_NAMED
from essence.core.analyses.diagnosis.results import DROWNING, NOT_LEARNED, NOT_READ_OUT, OK

KINDS = (OK, DROWNING, NOT_READ_OUT, NOT_LEARNED, STEP_NAMED)
HALF = "heldout"


def calls(case: dict[str, Any]) -> Iterator[tuple[str, bool]]:
    """``(verdict kind, right)`` for every call the diagnosis made in one case (module docstring)."""
    d = case["diagnosis"]
    others = list(d["verdicts"])
    if "expected" in d:
        given = d["verdict"]
        truth = d["expected"] if d["effective"] else OK
        yield given, given == truth
        others.remove(given)
        named = d.get("steps_named") or []
        if named:
            step = d.get("expected_step") or ""
            yield STEP_NAMED, bool(step) and len(named) == 1 and named[0].startswith(step)
    for verdict in others:
        yield verdict, verdict == OK


def unrecorded_audits(case: dict[str, Any]) -> int:
    """Classes other than the planted one called "not learned": their audit ran, what it named is not recorded."""
    d = case["diagnosis"]
    others = list(d["verdicts"])
    if "expected" in d:
        others.remove(d["verdict"])
    return others.count(NOT_LEARNED)


def held_out(results: list[dict[str, Any]], rule: str) -> list[dict[str, Any]]:
    """The held-out cases with a diagnosis, measured at slice ``rule``, of every results file."""
    return [
        c
        for r in results
        for c in r["cases"]
        if c["half"] == HALF and c.get("rule", "last") == rule and "diagnosis" in c
    ]


def precision_table(paths: list[Path], rule: str = "last") -> dict[str, Any]:
    """The table shipped as ``benchmark_precision.json``, from results files.

    Raises:
        SystemExit: no held-out case with a diagnosis in the files.
    """
    results = [json.loads(Path(p).read_text()) for p in paths]
    cases = held_out(results, rule)
    if not cases:
        raise SystemExit(
            f"no {HALF} case with a diagnosis at slice rule {rule!r} in {[str(p) for p in paths]}"
        )
    given: Counter[str] = Counter()
    right: Counter[str] = Counter()
    for case in cases:
        for kind, ok in calls(case):
            given[kind] += 1
            right[kind] += ok
    used = [(Path(p).name, r) for p, r in zip(paths, results, strict=True) if held_out([r], rule)]
    dates = sorted({r["meta"].get("date", "?") for _, r in used})
    return {
        "half": HALF,
        "rule": rule,
        "results": sorted(name for name, _ in used),
        "date": dates[-1],
        "grid": {
            "cases": len(cases),
            "seeds": sorted({c["seed"] for c in cases}),
            "archs": sorted({c["arch"] for c in cases}),
            "generators": sorted({c["generator"] for c in cases}),
            "variants": sorted({c["variant"] for c in cases}),
        },
        "core_source": sorted({c.get("core_source", "?") for c in cases}),
        # Whether every case's diagnosis was given its training data (older results do not say: without).
        "training_data": all(c["diagnosis"].get("training_data", False) for c in cases),
        "unrecorded_audits": sum(unrecorded_audits(c) for c in cases),
        "verdicts": {
            k: {"right": right[k], "count": given[k], "precision": right[k] / given[k]}
            for k in KINDS
            if given[k]
        },
    }


def render(table: dict[str, Any]) -> str:
    """The table as markdown (docs/analyses.md)."""
    lines = ["| verdict | given | right | precision |", "|---|---|---|---|"]
    for kind, row in table["verdicts"].items():
        lines.append(f"| {kind} | {row['count']} | {row['right']} | {row['precision']:.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.planted.precision", description=__doc__.splitlines()[0]
    )
    p.add_argument("--results", type=Path, nargs="+", required=True, help="benchmark results files")
    p.add_argument("--rule", choices=("last", "suggest"), default="last", help="the slice rule of the cases")
    p.add_argument("--out", type=Path, help="write the table as JSON here (default: print it only)")
    args = p.parse_args(argv)
    table = precision_table(args.results, args.rule)
    if args.out is not None:
        args.out.write_text(json.dumps(table, indent=1) + "\n")
    print(render(table))


if __name__ == "__main__":
    main()
