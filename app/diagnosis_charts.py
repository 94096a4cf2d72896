"""The diagnosis's evidence as charts a clinician can read: how much of a class's separation from its neighbour
survives each preprocessing step, and an expert against the masks that should fail (plain functions returning
Altair charts, tested on their specs)."""

from __future__ import annotations

import altair as alt
import pandas as pd

from essence.app.charts import NEGATIVE, POSITIVE, nan_none


def separation_stages(diagnosis: object) -> pd.DataFrame:
    """How well a class is told from its neighbour at each stage, for :func:`separation_chart`.

    Args:
        diagnosis: a :class:`~essence.core.analyses.diagnosis.verdict.ClassDiagnosis` with a probe.

    Returns:
        Rows ``{"stage", "auc", "chance"}``: the raw images and each lossy preprocessing step (when the audit
        ran), then the slice; empty without a probe.
    """
    c = diagnosis
    rows = []
    audit = getattr(c, "audit", None)
    if audit is not None:
        rows.append({"stage": "raw images", "auc": nan_none(audit.raw_auc), "chance": audit.threshold})
        for step in audit.steps:
            rows.append(
                {"stage": f"after {step.step}", "auc": nan_none(step.auc_after), "chance": step.threshold}
            )
    probe = getattr(c, "probe", None)
    if probe is not None:
        rows.append({"stage": "at the slice", "auc": nan_none(probe.auc), "chance": probe.threshold})
    return pd.DataFrame(rows, columns=["stage", "auc", "chance"])


def separation_chart(frame: pd.DataFrame, name: str, neighbour: str) -> alt.LayerChart:
    """Bars of how well ``name`` is told from ``neighbour`` at each stage, against the chance level.

    A bar at 1 separates perfectly, one at ½ not at all; the tick on each bar is what chance alone can reach
    for these class sizes. A bar that falls under its tick after a step: that step erased the difference.
    """
    order = list(frame["stage"])
    base = alt.Chart(frame, title=f"Can {name} be told from {neighbour}? (held-out AUC)")
    bars = base.mark_bar().encode(
        x=alt.X("stage:N", sort=order, title=None, axis=alt.Axis(labelAngle=0, labelLimit=180)),
        y=alt.Y("auc:Q", scale=alt.Scale(domain=[0, 1]), title="AUC (½ = cannot tell them apart)"),
        color=alt.condition(alt.datum.auc > alt.datum.chance, alt.value(POSITIVE), alt.value(NEGATIVE)),
        tooltip=["stage:N", alt.Tooltip("auc:Q", format=".2f"), alt.Tooltip("chance:Q", format=".2f")],
    )
    chance = base.mark_tick(color="black", thickness=2, size=40).encode(
        x=alt.X("stage:N", sort=order), y="chance:Q"
    )
    return (bars + chance).properties(height=260, width=max(240, 130 * len(order)))


def expert_evidence_chart(name: str, model: float, reference: float, expert: float, gain: float) -> alt.Chart:
    """Recall on ``name`` of the model, of the best control or random mask, and of the best honest mask.

    Args:
        name: the class.
        model: the model's recall.
        reference: the best recall of the activation-ranked control and the random masks (same cell).
        expert: the best cross-fitted influence-ranked mask's recall (the expert's, if one was found).
        gain: the recall an expert had to add over both.
    """
    frame = pd.DataFrame(
        {
            "who": ["the model", "best control or random mask", "best influence mask (cross-fitted)"],
            "recall": [nan_none(model), nan_none(reference), nan_none(expert)],
        }
    )
    return (
        alt.Chart(frame, title=f"Recall on {name}: an expert must beat both by {gain:.2f}")
        .mark_bar()
        .encode(
            x=alt.X(
                "who:N", sort=list(frame["who"]), title=None, axis=alt.Axis(labelAngle=0, labelLimit=220)
            ),
            y=alt.Y("recall:Q", scale=alt.Scale(domain=[0, 1])),
            color=alt.Color("who:N", legend=None),
            tooltip=["who:N", alt.Tooltip("recall:Q", format=".2f")],
        )
        .properties(height=240, width=480)
    )


def diagnosis_evidence(diagnosis: object) -> alt.TopLevelMixin | None:
    """The chart of a flagged class's evidence: its separation by stage, or its expert against the references.

    Args:
        diagnosis: a :class:`~essence.core.analyses.diagnosis.verdict.ClassDiagnosis`.

    Returns:
        :func:`expert_evidence_chart` for drowning experts, :func:`separation_chart` for "not read out" and
        "not learned", ``None`` for "ok".
    """
    c = diagnosis
    if c.diagnosis == "ok":  # type: ignore[attr-defined]
        return None
    evidence = c.evidence  # type: ignore[attr-defined]
    if c.diagnosis == "drowning experts" and evidence is not None and evidence.best is not None:  # type: ignore[attr-defined]
        best = evidence.best
        return expert_evidence_chart(
            c.name,
            c.recall,
            best["reference_recall"],
            best["recall"],
            evidence.gain,  # type: ignore[attr-defined]
        )
    frame = separation_stages(c)
    if frame.empty:
        return None
    return separation_chart(frame, c.name, c.neighbour or "the others")  # type: ignore[attr-defined]
