"""How often each verdict was right when given, on the held-out half of the planted-defect benchmark.

``benchmark_precision.json`` beside this module is computed — not typed — by ``python -m
benchmarks.planted.precision`` from the committed benchmark results (docs/analyses.md, "Planted-defect
benchmark"), and a test recomputes it from them. For each verdict ("ok", "drowning experts", "not read out",
"not learned", and "lossy step named" for the preprocessing audit's suspect) it holds how many times the
diagnosis gave it on the held-out cases and how many of those were right: precision = right / given. Every
verdict of a diagnosis carries its row (:func:`precision_of`), so a reader sees how far to trust it.

The table says whether the benchmark's diagnoses were given their cases' training data (``training_data``); a
verdict reached the other way is the same kind of call, measured under other conditions (:func:`said` says so).
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

TABLE = "benchmark_precision.json"
STEP_NAMED = "lossy step named"
HALF_WORDS = {"heldout": "held-out", "dev": "development"}


def precision_table() -> dict[str, Any] | None:
    """The shipped table (``None`` when it is missing or unreadable: a verdict then carries no precision)."""
    try:
        text = resources.files(__package__).joinpath(TABLE).read_text(encoding="utf-8")
        table = json.loads(text)
    except (OSError, ValueError):
        return None
    return table if isinstance(table, dict) and isinstance(table.get("verdicts"), dict) else None


def precision_of(kind: str, table: dict[str, Any] | None) -> dict[str, Any] | None:
    """``{"precision", "right", "count", "half", "training_data"}`` of a verdict kind, or ``None`` when the table
    has no row (``training_data``: whether the benchmark's diagnoses were given their training data).

    Examples:
        >>> table = {"half": "heldout", "verdicts": {"not learned": {"right": 14, "count": 20}}}
        >>> precision_of("not learned", table)
        {'precision': 0.7, 'right': 14, 'count': 20, 'half': 'heldout', 'training_data': False}
        >>> precision_of("ok", table) is None
        True
    """
    if table is None:
        return None
    row = table.get("verdicts", {}).get(kind)
    if not isinstance(row, dict) or not row.get("count"):
        return None
    right, count = int(row["right"]), int(row["count"])
    return {
        "precision": right / count,
        "right": right,
        "count": count,
        "half": str(table.get("half")),
        "training_data": bool(table.get("training_data", False)),
    }


def said(kind: str, row: dict[str, Any] | None, with_training: bool = False) -> str:
    """A verdict's benchmark row in words: ``not learned — right in 14 of 20 such calls on the held-out
    benchmark`` (empty without a row); where the verdict was reached with training data and the benchmark's
    were not (or the other way round), it says so.

    Examples:
        >>> said("not learned", {"precision": 0.7, "right": 14, "count": 20, "half": "heldout"})
        'not learned — right in 14 of 20 such calls on the held-out benchmark'
    """
    if row is None:
        return ""
    half = HALF_WORDS.get(row["half"], row["half"])
    text = f"{kind} — right in {row['right']} of {row['count']} such calls on the {half} benchmark"
    measured = bool(row.get("training_data", False))
    if with_training == measured:
        return text
    return text + (" (measured without training data)" if with_training else " (measured with training data)")


def provenance(table: dict[str, Any] | None) -> dict[str, Any] | None:
    """The table's facts without its rows: half, grid, date, the results it was computed from."""
    if table is None:
        return None
    return {k: v for k, v in table.items() if k != "verdicts"}
