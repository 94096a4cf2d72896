"""Merge results files of one half (run in pieces, e.g. one generator per process) into one.

``python -m benchmarks.planted.merge OUT IN [IN ...]``: the cases of every input, in order (a case already taken,
by key and slice rule, is not taken twice), with the first input's ``meta``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def merge(paths: list[Path]) -> dict[str, Any]:
    """The inputs' cases in order, each (key, rule) once, under the first input's meta."""
    results = [json.loads(p.read_text()) for p in paths]
    seen: set[tuple[str, str]] = set()
    cases = []
    for r in results:
        for c in r["cases"]:
            key = (c["key"], c.get("rule", "last"))
            if key not in seen:
                seen.add(key)
                cases.append(c)
    return {"meta": results[0]["meta"], "cases": cases}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.planted.merge", description=__doc__.splitlines()[0]
    )
    p.add_argument("out", type=Path)
    p.add_argument("inputs", type=Path, nargs="+")
    args = p.parse_args(argv)
    merged = merge(args.inputs)
    args.out.write_text(json.dumps(merged, indent=1) + "\n")
    print(f"{args.out}: {len(merged['cases'])} cases from {len(args.inputs)} files")


if __name__ == "__main__":
    main()
