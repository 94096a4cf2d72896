"""The diagnosis in words: how seldom a class is predicted, the probe's doubt, and each verdict's remedy.

The verdicts themselves are reached in :mod:`essence.core.analyses.diagnosis.verdict`; here is how they are
said, and which classes a drowning expert's advice names. A remedy never states as fact what the evidence cannot know: without the training data, "not read out"
says that the training data would tell it from a class never seen in training.
"""

from __future__ import annotations

import numpy as np

from essence.core.analyses.diagnosis.probe import Probe
from essence.core.analyses.diagnosis.results import ClassDiagnosis
from essence.core.analyses.diagnosis.suspect_steps import StepAudit
from essence.core.analyses.diagnosis.training import TrainingFacts
from essence.core.analyses.experts.sweep import Expert
from essence.core.analyses.profiles import ClassProfiles


def doubt(probe: Probe) -> str:
    """The probe's doubt, in words: empty unless its AUC lies within one standard error of the threshold."""
    if not probe.borderline:
        return ""
    return (
        f"; borderline: the probe AUC {probe.auc:.3f} is within its standard error {probe.stderr:.3f} of the "
        f"threshold {probe.threshold:.3f}"
    )


def margin(probe: Probe | None) -> float | None:
    """The probe's (AUC − threshold) in standard errors, when defined."""
    return None if probe is None or not np.isfinite(probe.margin) else float(probe.margin)


def probe_words(probe: Probe | None) -> str:
    """`` (held-out probe AUC 0.71, chance up to 0.60)`` with its doubt, or nothing without a probe."""
    if probe is None:
        return ""
    return f" (held-out probe AUC {probe.auc:.2f}, chance up to {probe.threshold:.2f}{doubt(probe)})"


def rarity(c: ClassDiagnosis) -> str:
    """How seldom the model predicts the class (or how seldom it gets it right), in words."""
    if c.audit_reason == "low recall":
        return (
            f"low recall ({c.recall:.2f} of {c.count} instances, though predicted {c.predicted_count} times: "
            "its images go elsewhere while others are predicted as it)"
        )
    if c.predicted_count == 0:
        return "never predicted"
    return f"rarely predicted ({c.predicted_count} predictions for {c.count} instances)"


def training_words(c: ClassDiagnosis) -> str:
    """``; training data: 98 training images labelled 5 (...)`` — or nothing when no training data was given."""
    return "" if c.training is None else f"; training data: {c.training.describe(c.name)}"


def expert_words(best: Expert | None) -> str:
    """What the expert test found for a class the slice does not separate: no mask, or a mask that is no expert."""
    if best is None:
        return "no expert"
    return (
        f"a mask passes the expert test (α={best['alpha']}, β={best['beta']}: precision {best['precision']:.2f}) "
        "but is no expert"
    )


def read_out_remedy(layer: str, facts: TrainingFacts | None) -> str:
    """The remedy of "not read out": fix the head — stated as fact only when the training data backs it."""
    fix = (
        f"retrain or rebalance the head (e.g. fine-tune the layers above {layer} with a class-balanced loss)"
    )
    if facts is None:
        return (
            f"the layers above the slice never read it out: {fix} — provided its training images show what "
            "these show; the training data would tell this from a class never seen in training"
        )
    if facts.resembles is None:
        return (
            f"the layers above the slice never read it out, though the training data holds {facts.count} "
            f"images of it (not compared with these: too few evaluated images): {fix}"
        )
    return (
        f"the layers above the slice never read it out, though the training data holds {facts.count} images "
        f"of it that look like these at the slice: {fix}"
    )


def not_learned_remedy(audit: StepAudit | None, recipe: str | None, neighbour: str | None) -> str:
    """What to do about a class that was not learned, from the preprocessing audit."""
    if audit is None:
        where = f" (recipe: {recipe})" if recipe else ""
        return f"look at the data and the preprocessing{where}"
    if audit.suspects:
        named = "; ".join(f"{t.step} — {t.evidence}" for t in audit.suspects)
        return f"suspect the preprocessing: {named}; retrain without that step or with a milder one"
    if not audit.raw_separates:
        return (
            f"no step of the recipe is to blame: even the raw images do not separate it from {neighbour} on their "
            f"contrast (AUC {audit.raw_auc:.2f}, chance up to {audit.threshold:.2f}); check the labels and "
            "whether the images can show the class"
        )
    tested = ", ".join(t.step for t in audit.steps) or "none"
    return (
        f"the raw images separate it from {neighbour} (contrast AUC {audit.raw_auc:.2f}) and no lossy step of "
        f"the recipe (tested: {tested}) erases that: the layers below the slice do not extract it — more "
        "images of the class, or more capacity or resolution below the slice"
    )


def drowned_by(
    expert: Expert, confused: list[tuple[str, int]], names: list[str], profiles: ClassProfiles
) -> list[str]:
    """Classes its instances are predicted as whose top positive units overlap the expert's positive units."""
    mine = set(expert["positive_units"])
    alpha = max(1, expert["alpha"])
    out = []
    for name, _ in confused:
        theirs = {int(u) for u in profiles.order(names.index(name))[:alpha]}
        if mine & theirs:
            out.append(name)
    return out
