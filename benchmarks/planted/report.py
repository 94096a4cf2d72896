"""The markdown tables of a run: triage AUCs per family and kind, and the diagnosis per family and variant."""

from __future__ import annotations

from collections import Counter, defaultdict
from typing import Any

import numpy as np

# The scores shown (the JSON keeps every score): Essence's ranking scores, the output baselines, cleanlab's.
SHOWN = (
    "reasoning",
    "merged",
    "cosine",
    "combined",
    "self_confidence",
    "doubt",
    "cl_normalized_margin",
    "cl_find_issues",
)


def header(meta: dict[str, Any]) -> str:
    """The run's facts: half, grid, slice rule, machine, time."""
    return "\n".join(
        [
            f"**Planted-defect benchmark — {meta['half']} half** (variants: {', '.join(meta['variants'])})",
            "",
            f"seeds {meta['seeds']}, architectures {meta['archs']}, generators {meta['generators']}, "
            f"slice rule `{meta['layer']}`; {meta['cases']} cases, {meta['seconds']:.0f} s; "
            f"{meta['machine']}; {meta['date']}; Essence core source {', '.join(meta['core'])}",
        ]
    )


def triage_table(cases: list[dict[str, Any]]) -> str:
    """Per family and planted kind: median / worst ROC AUC of each score over the cases."""
    groups: dict[tuple[str, str], list[dict[str, float]]] = defaultdict(list)
    for c in cases:
        for kind, row in c.get("auc", {}).items():
            groups[(c["family"], kind)].append(row)
    lines = [
        "| family | kind | cases | " + " | ".join(SHOWN) + " |",
        "|---|---|---|" + "---|" * len(SHOWN),
    ]
    for (family, kind), rows in sorted(groups.items()):
        cells = [_median_worst([r[s] for r in rows]) for s in SHOWN]
        lines.append(f"| {family} | {kind} | {len(rows)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def variant_table(
    cases: list[dict[str, Any]],
    scores: tuple[str, ...] = ("reasoning", "merged", "cosine", "self_confidence"),
) -> str:
    """Per variant and kind: the median AUC of a few scores (where a family's median hides a pattern), with how
    often the cue alone turns a clean image of another class into the target (was the shortcut learned?)."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for c in cases:
        for kind in c.get("auc", {}):
            groups[(c["variant"], kind)].append(c)
    lines = [
        "| variant | kind | cases | cue followed | " + " | ".join(scores) + " |",
        "|---|---|---|---|" + "---|" * len(scores),
    ]
    for (variant, kind), rows in sorted(groups.items()):
        follows = [r["notes"]["follows_cue"] for r in rows if "follows_cue" in r["notes"]]
        followed = f"{np.median(follows):.2f}" if follows else "—"
        cells = [f"{np.nanmedian([r['auc'][kind][s] for r in rows]):.2f}" for s in scores]
        lines.append(f"| {variant} | {kind} | {len(rows)} | {followed} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def diagnosis_table(cases: list[dict[str, Any]]) -> str:
    """Per variant: the expected verdict, hits (all cases; effective plants only), what was said instead, the
    audit's step, and false alarms on the other classes."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for c in cases:
        if "diagnosis" in c:
            groups[c["variant"]].append(c)
    lines = [
        "| family | variant | expected | hit | hit (effective) | verdicts given | planted class recall | step right "
        "(audited; all) | false alarms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for variant, rows in sorted(groups.items(), key=lambda kv: (kv[1][0]["family"], kv[0])):
        d = [r["diagnosis"] for r in rows]
        alarms = f"{sum(x['any_false_alarm'] for x in d)}/{len(d)}"
        if "expected" not in d[0]:
            lines.append(f"| {rows[0]['family']} | {variant} | all ok | — | — | — | — | — | {alarms} |")
            continue
        hits = f"{sum(x['hit'] for x in d)}/{len(d)}"
        eff = [x for x in d if x["effective"]]
        hit_eff = f"{sum(x['hit'] for x in eff)}/{len(eff)}"
        said = ", ".join(f"{v} {n}" for v, n in Counter(x["verdict"] for x in d).most_common())
        recall = _median_range([x["recall"] for x in d])
        lines.append(
            f"| {rows[0]['family']} | {variant} | {d[0]['expected']} | {hits} | {hit_eff} | {said} | {recall} | "
            f"{_steps(d)} | {alarms} |"
        )
    return "\n".join(lines)


def _steps(d: list[dict[str, Any]]) -> str:
    """``right/audited; right/all`` for variants whose audit is judged (``—`` otherwise). Of all cases, a step
    that should be named is right only where the audit ran and named it; where none should be, a case whose
    audit never ran blamed nothing, and is right too."""
    if "step_hit" not in d[0]:
        return "—"
    audited = [x["step_hit"] for x in d if x["step_hit"] is not None]
    none_expected = d[0].get("expected_step") == ""
    overall = sum(x["step_hit"] is not False for x in d) if none_expected else sum(audited)
    return f"{sum(audited)}/{len(audited)}; {overall}/{len(d)}"


def _median_range(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    return f"{np.nanmedian(v):.2f} ({np.nanmin(v):.2f}–{np.nanmax(v):.2f})"


def _median_worst(values: list[float]) -> str:
    v = np.asarray(values, dtype=float)
    if not np.isfinite(v).any():
        return "—"
    return f"{np.nanmedian(v):.2f} / {np.nanmin(v):.2f}"


def render(meta: dict[str, Any], cases: list[dict[str, Any]]) -> str:
    """The whole report: header, triage (per family, per variant), diagnosis."""
    return "\n\n".join(
        [
            header(meta),
            "ROC AUC of planted review images against the clean ones, median / worst over cases:",
            triage_table(cases),
            "Median ROC AUC per variant:",
            variant_table(cases),
            "Diagnosis (hit: the planted class gets the expected verdict; false alarms: cases where another class "
            "— any class, where nothing was planted for the diagnosis — is not ok):",
            diagnosis_table(cases),
        ]
    )
