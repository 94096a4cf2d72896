"""What one case measures: triage AUCs (Essence's scores and cleanlab's, on the same probabilities) and whether
the diagnosis names the planted cause — through Essence's public API only.

**The slice.** ``last`` (the default): the module ``hidden``, the last hidden layer that the linear head reads,
``[B, 32]`` in all three architectures — one meaning everywhere, and the slice the existing diagnosis benchmark
uses. ``suggest``: :func:`essence.core.suggest_layer`'s pick on the review set (what the app does when no slice is
chosen; a token layer of the transformer is then read at ``neuron`` granularity: the reasoning score takes
``channel`` or ``neuron`` only).

**Triage.** For each kind of planted review image (``flipped``, ``cue``: shortcut images right for the wrong
reason, ``spill``: other classes' images carrying the cue and labelled as the target), the ROC AUC of every score
at ranking them above the clean ones (every review image with no planted kind: genuine model errors included,
as in a real queue). Higher = more suspect for every score. Cleanlab's, from the triage's own softmax:
``cl_self_confidence`` and ``cl_normalized_margin`` (1 − ``get_label_quality_scores``), and ``cl_find_issues``
(``find_label_issues`` ranked by self-confidence: flagged images by their rank, the rest tied last).

**Diagnosis.** The verdict of the planted class against the variant's expected one; a *false alarm* is any other
class not "ok" (any class at all, for cases that plant nothing the diagnosis is meant to see: noise, shortcuts,
controls). *Effective* says whether the plant worked: the planted class's recall fell below ½ (judged on the
model's predictions, not by the diagnosis), so hits can be read with and without the plants that failed. The audit is
judged where the variant says which step should (or that none should) be named.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
from sklearn.metrics import roc_auc_score

from benchmarks.planted.cases import Case
from essence.core import deviation_scores, diagnose, suggest_layer

TRIAGE_FAMILIES = ("label noise", "shortcut")
ANALYSES = ("triage", "diagnosis")


def slice_of(case: Case, layer: str) -> tuple[str, str]:
    """``(module path, granularity)`` of the case's slice for the ``layer`` rule (``last`` or ``suggest``)."""
    if layer == "last":
        return "hidden", "channel"
    if layer != "suggest":
        raise ValueError(f"unknown layer rule {layer!r}: use last or suggest")
    name = suggest_layer(case.model, case.review, device="cpu").suggested
    # A token layer [B, T, D]: every element is a unit (the reasoning score takes channel or neuron only).
    granularity = "neuron" if case.arch == "vit" and name != "hidden" else "channel"
    return name, granularity


def measure(
    case: Case, layer: str = "last", analyses: tuple[str, ...] = ANALYSES, training: bool = True
) -> dict[str, Any]:
    """Everything the report needs from one case, as plain JSON values (``analyses``: which to run;
    ``training``: the diagnosis is given the case's training data, as a user who has it gives it)."""
    start = time.perf_counter()
    name, granularity = slice_of(case, layer)
    out: dict[str, Any] = {
        "key": case.key,
        "variant": case.variant.name,
        "family": case.variant.family,
        "half": case.variant.half,
        "generator": case.generator,
        "seed": case.seed,
        "arch": case.arch,
        "layer": name,
        "granularity": granularity,
        "notes": case.notes,
        "review_images": len(case.true_labels),
        "planted_counts": {k: int(m.sum()) for k, m in case.kinds.items()},
        "core_source": core_source(),
    }
    if "triage" in analyses and case.variant.family in TRIAGE_FAMILIES:
        out["auc"] = triage_aucs(case, name, granularity)
    if "diagnosis" in analyses:
        out["diagnosis"] = diagnosis_record(case, name, granularity, training)
    out["seconds"] = round(time.perf_counter() - start, 1)
    return out


def core_source() -> str:
    """A short hash of Essence's analysis code as run (``core/**/*.py``): cases measured under different code
    are told apart."""
    import hashlib
    from pathlib import Path

    import essence.core

    root = Path(essence.core.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def triage_aucs(case: Case, layer: str, granularity: str) -> dict[str, dict[str, float]]:
    """Per planted kind, per score: ROC AUC of the kind against the clean review images."""
    t = deviation_scores(case.model, case.review, layer, granularity=granularity, device="cpu")  # type: ignore[arg-type]
    scores = {**t.scores, **cleanlab_scores(t.labels, t.probabilities)}
    kinds = {k: m[t.indices] for k, m in case.kinds.items()}
    clean = np.ones(len(t), dtype=bool)
    for m in kinds.values():
        clean &= ~m
    out: dict[str, dict[str, float]] = {}
    for kind, m in kinds.items():
        if not m.any() or not clean.any():
            continue
        truth = np.r_[np.ones(m.sum()), np.zeros(clean.sum())]
        out[kind] = {
            s: float(roc_auc_score(truth, np.nan_to_num(np.r_[v[m], v[clean]], nan=-1e9)))
            for s, v in scores.items()
        }
    return out


def cleanlab_scores(labels: np.ndarray, probs: np.ndarray) -> dict[str, np.ndarray]:
    """Cleanlab's suspicion scores ``[N]`` each (higher = more suspect) from the same predicted probabilities."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    out = {
        f"cl_{m}": 1.0 - get_label_quality_scores(labels, probs, method=m)
        for m in ("self_confidence", "normalized_margin")
    }
    try:
        ranked = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence", n_jobs=1)
        issues = np.zeros(len(labels))
        issues[ranked] = len(ranked) - np.arange(len(ranked))  # the first flagged scores highest
        out["cl_find_issues"] = issues
    except (ValueError, IndexError) as exc:  # a class absent from the labels, for instance
        out["cl_find_issues"] = np.full(len(labels), np.nan)
        print(f"  cleanlab's find_label_issues failed: {exc}")
    return out


def diagnosis_record(case: Case, layer: str, granularity: str, training: bool = True) -> dict[str, Any]:
    """The diagnosis of every class, and how it compares with the truth (given the case's training data when
    ``training``: :func:`~benchmarks.planted.small.training_data` plants it again from the case's seed)."""
    from benchmarks.planted.small import training_data

    settings = None
    if granularity != "channel":  # the default settings but the granularity (a ViT token slice)
        from essence.core.analyses.diagnosis.results import DiagnosisSettings

        settings = DiagnosisSettings(granularity=granularity)  # type: ignore[arg-type]
    train = training_data(case) if training else None
    d = diagnose(case.model, case.review, layer, settings=settings, device="cpu", train_data=train)
    verdicts = [c.diagnosis for c in d.classes]
    v, k = case.variant, case.planted_class
    record: dict[str, Any] = {"verdicts": verdicts, "accuracy": d.accuracy, "training_data": training}
    if training:  # what a user without the training data is told (cheap: the slice is cached in-process)
        without = diagnose(case.model, case.review, layer, settings=settings, device="cpu")
        record["verdicts_without_training"] = [c.diagnosis for c in without.classes]
    others = [c for i, c in enumerate(verdicts) if i != k or v.verdict is None]
    record["false_alarms"] = [
        d.classes[i].name for i, c in enumerate(verdicts) if c != "ok" and (i != k or v.verdict is None)
    ]
    record["any_false_alarm"] = any(c != "ok" for c in others)
    if v.verdict is None or k is None:
        return record
    c = d.classes[k]
    audit = c.audit
    named = [s.step for s in audit.suspects] if audit is not None else []
    record.update(
        planted=c.name,
        expected=v.verdict,
        verdict=c.diagnosis,
        hit=c.diagnosis == v.verdict,
        effective=bool(c.recall < 0.5),
        audit_reason=getattr(c, "audit_reason", None),
        predicted_count=c.predicted_count,
        count=c.count,
        recall=c.recall,
        precision=c.precision,
        neighbour=c.neighbour,
        probe_auc=None if c.probe is None else c.probe.auc,
        probe_threshold=None if c.probe is None else c.probe.threshold,
        expert=c.expert is not None,
        steps_tested=[s.step for s in audit.steps] if audit is not None else None,
        steps_named=named,
        raw_separates=None if audit is None else audit.raw_separates,
        raw_auc=None if audit is None else audit.raw_auc,
    )
    if c.expert is not None:
        record["expert_detail"] = {
            key: c.expert[key] for key in ("alpha", "beta", "recall", "precision", "reference_recall")
        }
    if v.step is not None:
        # The audit runs only for a "not learned" verdict: None where it did not run.
        right = named == [] if v.step == "" else (len(named) == 1 and named[0].startswith(v.step))
        record["step_hit"] = right if audit is not None else None
        record["expected_step"] = v.step
    return record
