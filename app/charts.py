"""Every chart of the app, each a plain function of numbers returning an Altair chart (tested on its spec).

The influence grid is the paper's Fig. 3: units laid out row by row in the class-wide order (most positive
first), each a square sized by its |influence| and coloured by its sign; an instance's own influences are laid
out in *the class's* order, so an instance that reasons like its class looks like the class's grid and a
deviant one looks scrambled.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

import altair as alt
import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from essence.core import ExpertSweep

POSITIVE = "#1f77b4"  # blue: pushes towards the class
NEGATIVE = "#d62728"  # red: pushes against it
COLUMNS = 16  # units per row of the influence grid (the paper's figure uses a square-ish block)
SQUARE = 260  # area in px² of the largest square of a grid


# Characters shown as escapes wherever text from data is drawn: every C0 control (tab and newline too: labels are
# one line), DEL, C1 controls, the bidirectional overrides and isolates, and lone surrogates (a file name that was
# not UTF-8). The offline SVG renderer aborts the whole process on a control character.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` with unprintable characters shown as Python escapes (``"a\\x01b"``), so a name stays visible
    and distinct and no renderer sees the character itself."""
    return _UNPRINTABLE.sub(
        lambda m: m.group().encode("unicode_escape", "backslashreplace").decode("ascii"), text
    )


def printable_spec(spec: object) -> object:
    """A chart spec (nested dicts and lists) with every string, key or value, made :func:`printable`."""
    if isinstance(spec, str):
        return printable(spec)
    if isinstance(spec, dict):
        return {printable_spec(k): printable_spec(v) for k, v in spec.items()}
    if isinstance(spec, list | tuple):
        return [printable_spec(v) for v in spec]
    return spec


def _finite(x: np.ndarray) -> np.ndarray:
    return np.nan_to_num(np.asarray(x, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)


def grid_frame(values: np.ndarray, order: np.ndarray, columns: int = COLUMNS) -> pd.DataFrame:
    """One row per unit: its place in ``order`` (row, column), its value, |value| scaled to [0, 1], its sign.

    Args:
        values: float ``[U]`` the influences to draw.
        order: int ``[U]`` units in display order (the class-wide order, most positive first).
        columns: units per row.
    """
    v = _finite(values)
    order = np.asarray(order, dtype=np.int64)
    peak = float(np.abs(v[order]).max()) if len(order) else 0.0
    rank = np.arange(len(order))
    shown = v[order]
    return pd.DataFrame(
        {
            "unit": order,
            "rank": rank,
            "row": rank // columns,
            "column": rank % columns,
            "influence": shown,
            "magnitude": np.abs(shown) / peak if peak > 0 else np.zeros(len(order)),
            "sign": np.where(shown >= 0, "positive", "negative"),
        }
    )


def influence_grid(
    values: np.ndarray, order: np.ndarray, title: str, columns: int = COLUMNS, cell: int = 20
) -> alt.Chart:
    """The sorted influence grid (Fig. 3): squares sized by |influence|, coloured by sign, in ``order``."""
    frame = grid_frame(values, order, columns)
    rows = int(frame["row"].max()) + 1 if len(frame) else 1
    return (
        alt.Chart(frame, title=title)
        .mark_square(opacity=0.9)
        .encode(
            x=alt.X("column:O", axis=None),
            y=alt.Y("row:O", axis=None),
            size=alt.Size("magnitude:Q", scale=alt.Scale(domain=[0, 1], range=[4, SQUARE]), legend=None),
            color=alt.Color(
                "sign:N",
                scale=alt.Scale(domain=["positive", "negative"], range=[POSITIVE, NEGATIVE]),
                legend=alt.Legend(title="influence", orient="bottom"),
            ),
            tooltip=["unit:Q", "rank:Q", alt.Tooltip("influence:Q", format=".3g")],
        )
        .properties(width=columns * cell, height=rows * cell)
    )


def class_and_instance_grids(
    profile: np.ndarray, instance: np.ndarray, class_name: str, instance_title: str, columns: int = COLUMNS
) -> alt.HConcatChart:
    """The class's grid and an instance's own influences placed on the class's order, side by side."""
    order = np.argsort(-_finite(profile), kind="stable")
    return alt.hconcat(
        influence_grid(profile, order, f"class {class_name} (class-wide order)", columns),
        influence_grid(instance, order, instance_title, columns),
    )


UNCERTAIN = "#bbbbbb"  # grey: within two standard errors of zero (sign not established)


def profiles_frame(
    mean: np.ndarray, stderr: np.ndarray, names: Sequence[str], columns: int = COLUMNS
) -> pd.DataFrame:
    """Every class's grid, each in its own class-wide order, with each unit's standard error.

    Args:
        mean: float ``[C, U]`` the class profiles; stderr: float ``[C, U]`` their standard errors.
        names: the ``C`` class names.
        columns: units per row of each grid.

    Returns:
        :func:`grid_frame`'s rows for every class, plus ``class``, ``stderr`` and a ``sign`` that is
        ``"uncertain"`` where |influence| ≤ 2 standard errors (or the unit has no influence at all).
    """
    frames = []
    for c, name in enumerate(names):
        v, se = _finite(mean[c]), _finite(stderr[c])
        order = np.argsort(-v, kind="stable")
        frame = grid_frame(v, order, columns)
        frame["class"] = name
        frame["stderr"] = se[order]
        unsure = (np.abs(v[order]) <= 2 * se[order]) | (v[order] == 0)
        frame.loc[unsure, "sign"] = "uncertain"
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def all_profiles_grid(
    mean: np.ndarray, stderr: np.ndarray, names: Sequence[str], columns: int = COLUMNS, cell: int = 14
) -> alt.FacetChart:
    """The paper's Fig. 3 for every class side by side: squares sized by |influence|, coloured by sign, and
    grey where the sign is within two standard errors of zero (the profile does not establish it)."""
    frame = profiles_frame(mean, stderr, names, columns)
    rows = int(frame["row"].max()) + 1 if len(frame) else 1
    return (
        alt.Chart(frame)
        .mark_square(opacity=0.9)
        .encode(
            x=alt.X("column:O", axis=None),
            y=alt.Y("row:O", axis=None),
            size=alt.Size("magnitude:Q", scale=alt.Scale(domain=[0, 1], range=[2, SQUARE // 2]), legend=None),
            color=alt.Color(
                "sign:N",
                scale=alt.Scale(
                    domain=["positive", "negative", "uncertain"], range=[POSITIVE, NEGATIVE, UNCERTAIN]
                ),
                legend=alt.Legend(title="influence", orient="bottom"),
            ),
            tooltip=[
                "class:N",
                "unit:Q",
                "rank:Q",
                alt.Tooltip("influence:Q", format=".3g"),
                alt.Tooltip("stderr:Q", format=".2g", title="standard error"),
            ],
        )
        .properties(width=columns * cell, height=rows * cell)
        .facet(facet=alt.Facet("class:N", sort=list(names), title=None), columns=min(len(names), 3))
    )


def class_bars(names: Sequence[str], recall: np.ndarray, precision: np.ndarray) -> alt.Chart:
    """Per-class recall and precision as grouped bars (a missing bar = undefined: never predicted)."""
    rows = []
    for i, name in enumerate(names):
        rows.append({"class": name, "measure": "recall", "value": nan_none(recall[i])})
        rows.append({"class": name, "measure": "precision", "value": nan_none(precision[i])})
    frame = pd.DataFrame(rows)
    return (
        alt.Chart(frame, title="Per-class recall and precision")
        .mark_bar()
        .encode(
            x=alt.X("class:N", sort=list(names), title=None),
            xOffset="measure:N",
            y=alt.Y("value:Q", scale=alt.Scale(domain=[0, 1]), title=None),
            color=alt.Color("measure:N", legend=alt.Legend(orient="bottom", title=None)),
            tooltip=["class:N", "measure:N", alt.Tooltip("value:Q", format=".2f")],
        )
        .properties(height=260)
    )


def nan_none(x: float) -> float | None:
    return None if x is None or not np.isfinite(x) else float(x)


def confusion_chart(
    confusion: np.ndarray, names: Sequence[str], title: str = "Confusion matrix"
) -> alt.LayerChart:
    """Counts of true (rows) × predicted (columns) classes, darker = more, with the counts written in."""
    c = np.asarray(confusion)
    frame = pd.DataFrame(
        [
            {"true": names[i], "predicted": names[j], "count": int(c[i, j])}
            for i in range(c.shape[0])
            for j in range(c.shape[1])
        ]
    )
    base = alt.Chart(frame, title=title).encode(
        x=alt.X("predicted:N", sort=list(names), title="predicted"),
        y=alt.Y("true:N", sort=list(names), title="true class"),
    )
    peak = max(int(c.max()), 1)
    cells = base.mark_rect().encode(
        color=alt.Color("count:Q", scale=alt.Scale(scheme="blues", domain=[0, peak]), legend=None),
        tooltip=["true:N", "predicted:N", "count:Q"],
    )
    text = base.mark_text(fontSize=13).encode(
        text="count:Q",
        color=alt.condition(alt.datum.count > peak / 2, alt.value("white"), alt.value("black")),
    )
    return (cells + text).properties(width=320, height=320)


def sweep_frame(
    alphas: np.ndarray, betas: np.ndarray, values: np.ndarray, experts: np.ndarray | None = None
) -> pd.DataFrame:
    """One row per (α, β) cell with its value and whether it is an expert."""
    rows = []
    for a_i, a in enumerate(alphas):
        for b_i, b in enumerate(betas):
            v = values[a_i, b_i]
            rows.append(
                {
                    "alpha": int(a),
                    "beta": int(b),
                    "value": None if not np.isfinite(v) else float(v),
                    "expert": bool(experts[a_i, b_i]) if experts is not None else False,
                }
            )
    return pd.DataFrame(rows)


def sweep_heatmap(
    alphas: np.ndarray,
    betas: np.ndarray,
    values: np.ndarray,
    measure: str,
    title: str,
    experts: np.ndarray | None = None,
) -> alt.LayerChart:
    """One α×β heat map (Fig. 5) of ``measure`` in [0, 1]; expert cells outlined."""
    frame = sweep_frame(alphas, betas, values, experts)
    base = alt.Chart(frame, title=title).encode(
        x=alt.X("beta:O", title="features kept that push against it (β negative units)"),
        y=alt.Y("alpha:O", title="features kept that push for it (α positive units)", sort="descending"),
    )
    cells = base.mark_rect().encode(
        color=alt.Color("value:Q", scale=alt.Scale(scheme="viridis", domain=[0, 1]), title=measure),
        tooltip=["alpha:O", "beta:O", alt.Tooltip("value:Q", format=".2f", title=measure), "expert:N"],
    )
    marks = base.transform_filter(alt.datum.expert).mark_point(
        shape="square", size=180, color="white", strokeWidth=2
    )
    return (cells + marks).properties(width=280, height=240)


def sweep_heatmaps(sweep: ExpertSweep, experts: np.ndarray | None = None) -> alt.HConcatChart:
    """Recall and precision heat maps of an :class:`~essence.core.ExpertSweep`, side by side."""
    base = sweep.baseline
    name = sweep.class_name
    rank = sweep.rank_by
    a, b = sweep.alphas, sweep.betas
    rec = f"model: {_fmt(base['recall'])}"
    pre = f"model: {_fmt(base['precision'])}"
    return alt.hconcat(
        sweep_heatmap(a, b, sweep.recall, "recall", f"{name} recall ({rank}; {rec})", experts),
        sweep_heatmap(a, b, sweep.precision, "precision", f"{name} precision ({rank}; {pre})", experts),
    ).resolve_scale(color="independent")


def _fmt(x: float | None) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:.2f}"


def roc_points(scores: np.ndarray, positive: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """``(false positive rate, true positive rate, AUC)`` of ranking by ``scores`` (higher = more suspect).

    Raises:
        ValueError: ``positive`` has no positive or no negative instance (no curve exists).
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    y = np.asarray(positive, dtype=bool)
    if y.all() or not y.any():
        raise ValueError("a ROC curve needs both positive and negative instances")
    fpr, tpr, _ = roc_curve(y, scores)
    return fpr, tpr, float(roc_auc_score(y, scores))


def roc_chart(scores: np.ndarray, positive: np.ndarray, what: str) -> alt.LayerChart:
    """ROC curve of the triage score at finding ``what`` (e.g. misclassified instances), AUC in the title."""
    fpr, tpr, auc = roc_points(scores, positive)
    frame = pd.DataFrame({"false positive rate": fpr, "true positive rate": tpr})
    diagonal = pd.DataFrame({"false positive rate": [0.0, 1.0], "true positive rate": [0.0, 1.0]})
    curve = (
        alt.Chart(frame, title=f"ROC of the triage score at finding {what} (AUC {auc:.2f})")
        .mark_line(interpolate="step-after")
        .encode(
            x=alt.X("false positive rate:Q", scale=alt.Scale(domain=[0, 1])),
            y=alt.Y("true positive rate:Q", scale=alt.Scale(domain=[0, 1])),
        )
    )
    chance = (
        alt.Chart(diagonal)
        .mark_line(strokeDash=[4, 4], color="gray")
        .encode(x="false positive rate:Q", y="true positive rate:Q")
    )
    return (curve + chance).properties(width=320, height=300)


def compare_bars(
    names: Sequence[str], recall_a: Sequence[float], recall_b: Sequence[float], label_a: str, label_b: str
) -> alt.Chart:
    """Per-class recall of model A and model B side by side."""
    rows = []
    for i, name in enumerate(names):
        rows.append({"class": name, "model": label_a, "recall": nan_none(recall_a[i])})
        rows.append({"class": name, "model": label_b, "recall": nan_none(recall_b[i])})
    return (
        alt.Chart(pd.DataFrame(rows), title="Recall per class, before and after")
        .mark_bar()
        .encode(
            x=alt.X("class:N", sort=list(names), title=None),
            xOffset=alt.XOffset("model:N", sort=[label_a, label_b]),
            y=alt.Y("recall:Q", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color(
                "model:N", sort=[label_a, label_b], legend=alt.Legend(orient="bottom", title=None)
            ),
            tooltip=["class:N", "model:N", alt.Tooltip("recall:Q", format=".2f")],
        )
        .properties(height=260)
    )


def layer_chart(names: Sequence[str], share80: Sequence[float], suggested: str) -> alt.Chart:
    """Share of units carrying 80 % of the influence per layer (lower = more concentrated)."""
    frame = pd.DataFrame(
        {
            "layer": list(names),
            "share": [nan_none(s) for s in share80],
            "suggested": [n == suggested for n in names],
        }
    )
    return (
        alt.Chart(frame, title="Share of units carrying 80 % of the influence (lower = more concentrated)")
        .mark_bar()
        .encode(
            x=alt.X("layer:N", sort=list(names)),
            y=alt.Y("share:Q", scale=alt.Scale(domain=[0, 1])),
            color=alt.condition(alt.datum.suggested, alt.value(POSITIVE), alt.value("#bbbbbb")),
            tooltip=["layer:N", alt.Tooltip("share:Q", format=".2f")],
        )
        .properties(height=220)
    )
