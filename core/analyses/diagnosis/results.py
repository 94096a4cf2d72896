"""What a diagnosis says: its settings, each class's verdict with its evidence, and the JSON (DESIGN §4).

How the verdicts are reached is :mod:`essence.core.analyses.diagnosis.verdict`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from essence.core.analyses.diagnosis.probe import Probe, ProbeSettings
from essence.core.analyses.diagnosis.suspect_steps import StepAudit, StepTest, SuspectSettings
from essence.core.analyses.diagnosis.training import TrainingFacts, TrainingSettings
from essence.core.analyses.experts.criterion import ExpertCriterion
from essence.core.analyses.experts.evidence import ExpertEvidence
from essence.core.analyses.experts.sweep import Expert, ExpertSweep
from essence.core.engine.quantities import Kind
from essence.core.engine.slices import Granularity

OK, DROWNING, NOT_READ_OUT, NOT_LEARNED = "ok", "drowning experts", "not read out", "not learned"


@dataclass(frozen=True)
class DiagnosisSettings:
    """Settings of the diagnosis (each a documented choice, the same for every dataset).

    Attributes:
        rare_share: a class is *rarely predicted* when the model predicts it for fewer than
            ``rare_share`` × its true count of instances. ½: a class the model names at most half as often
            as it occurs has lost at least half its recall even if every prediction of it is right — a loss
            no calibrated classifier shows; a balanced model predicts each class about as often as it occurs.
        low_recall_share, low_recall_confidence: a class predicted often enough is audited all the same when
            its recall is *significantly low*: a one-sided binomial test rejects, at ``low_recall_confidence``,
            that its recall reaches ``low_recall_share`` × the median per-class recall (½ for the same reason
            as ``rare_share``: a class that has lost half the recall the model typically reaches; the test keeps
            a small class from being audited on a few unlucky instances). Its images go elsewhere while other
            images are predicted as it — the same question of drowning, reading out or learning.
        criterion: when a mask counts as an expert (:class:`ExpertCriterion`).
        alphas, betas: the sweep's grid (default: :func:`~essence.core.analyses.experts.sweep.default_grid`).
        kind: the quantity of the class profiles the masks are taken from (``"logit"``).
        granularity: ``"channel"`` or ``"neuron"``.
        top_units: how many top positive and negative units of each class are listed.
        probe: the linear probe's settings (:class:`~essence.core.analyses.diagnosis.probe.ProbeSettings`).
        suspects: the preprocessing audit's settings (:class:`~essence.core.analyses.diagnosis.suspect_steps.SuspectSettings`).
        training: what makes a class absent, rare or unlike in the training data, when it is given
            (:class:`~essence.core.analyses.diagnosis.training.TrainingSettings`).
        seed: seed of the cross-fit halves and the random masks.
    """

    rare_share: float = 0.5
    low_recall_share: float = 0.5
    low_recall_confidence: float = 0.99
    criterion: ExpertCriterion = field(default_factory=ExpertCriterion)
    alphas: Sequence[int] | None = None
    betas: Sequence[int] | None = None
    kind: Kind = "logit"
    granularity: Granularity = "channel"
    top_units: int = 5
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    suspects: SuspectSettings = field(default_factory=SuspectSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    seed: int = 0


@dataclass(frozen=True)
class ClassDiagnosis:
    """One class's diagnosis.

    Attributes:
        cls, name: the class.
        count: its instances in the data.
        recall: of the model's use (argmax); NaN without instances.
        precision: NaN when the model never predicts it.
        predicted_count: how many instances the model predicts as it.
        diagnosis: ``"ok"``, ``"drowning experts"``, ``"not read out"`` or ``"not learned"``.
        expert: the best honest expert ``{"alpha", "beta", "recall", "precision", "reference_recall", ...}``
            or ``None``.
        confused_with: ``[(class name, count)]`` what its instances are predicted as instead, most first.
        drowned_by: names of the classes that drown its expert (drowning experts only).
        top_positive, top_negative: its profile's top units.
        advice: the evidence and the remedy, for people (empty when ok).
        neighbour: the class it is probed against (most confused with it), or ``None``.
        probe: the probe against the neighbour (decides "not read out" against "not learned").
        probe_rest: the probe against every other class (reported).
        audit: the preprocessing audit (not learned only, on data with raw images and a recipe).
        evidence: the honest expert test (rarely predicted classes only).
        remedy: the one-sentence remedy (empty when ok).
        borderline: whether the statistic that decided the verdict lies within one standard error of its
            threshold (the probe's AUC, for "not read out" and "not learned").
        borderline_margin: that statistic's distance from its threshold in standard errors (``None`` when no
            such statistic decided).
        audit_reason: why the class was audited: ``"rarely predicted"``, ``"low recall"`` or ``None`` (ok).
        training: what the training data says of the class (``None`` when none was given).
        benchmark_precision: how often this verdict was right when given on the held-out planted-defect
            benchmark, ``{"precision", "right", "count", "half"}`` (``None``: the table has no row for it;
            :mod:`~essence.core.analyses.diagnosis.benchmark`).
        step_benchmark_precision: the same for the audit's naming of a suspect step (``None`` unless one is named).
    """

    cls: int
    name: str
    count: int
    recall: float
    precision: float
    predicted_count: int
    diagnosis: str
    expert: Expert | None
    confused_with: list[tuple[str, int]]
    drowned_by: list[str]
    top_positive: list[int]
    top_negative: list[int]
    advice: str
    neighbour: str | None = None
    probe: Probe | None = None
    probe_rest: Probe | None = None
    audit: StepAudit | None = field(default=None, repr=False)
    evidence: ExpertEvidence | None = field(default=None, repr=False)
    remedy: str = ""
    borderline: bool = False
    borderline_margin: float | None = None
    audit_reason: str | None = None
    training: TrainingFacts | None = None
    benchmark_precision: dict[str, Any] | None = None
    step_benchmark_precision: dict[str, Any] | None = None

    @property
    def sweep(self) -> ExpertSweep | None:
        """The cross-fitted influence-ranked sweep (rarely predicted classes only)."""
        return None if self.evidence is None else self.evidence.sweep

    @property
    def control(self) -> ExpertSweep | None:
        """The cross-fitted activation-ranked control (rarely predicted classes only)."""
        return None if self.evidence is None else self.evidence.control

    @property
    def suspect_steps(self) -> list[StepTest]:
        """The preprocessing steps suspected of erasing the class (empty unless not learned)."""
        return [] if self.audit is None else self.audit.suspects

    def to_json(self) -> dict[str, Any]:
        """One class's verdict and evidence as JSON (the ``classes`` rows of :meth:`Diagnosis.to_json`)."""
        e = self.expert
        expert = None
        if e is not None:
            expert = {
                "alpha": e["alpha"],
                "beta": e["beta"],
                "recall": e["recall"],
                "precision": e["precision"],
                "reference_recall": e["reference_recall"],
                "units": e["positive_units"] + e["negative_units"],
            }
        return {
            "name": self.name,
            "index": self.cls,
            "count": self.count,
            "recall": self.recall,
            "precision": self.precision,
            "predicted_count": self.predicted_count,
            "diagnosis": self.diagnosis,
            "expert": expert,
            "probe": None if self.probe is None else self.probe.to_json(),
            "probe_rest": None if self.probe_rest is None else self.probe_rest.to_json(),
            "suspect_steps": [s.to_json() for s in self.suspect_steps],
            "tested_steps": [] if self.audit is None else [s.to_json() for s in self.audit.steps],
            "raw_images_auc": None if self.audit is None else self.audit.raw_auc,
            "neighbour": self.neighbour,
            "confused_with": [{"class": c, "count": n} for c, n in self.confused_with],
            "drowned_by": self.drowned_by,
            "top_positive_units": self.top_positive,
            "top_negative_units": self.top_negative,
            "expert_test": None if self.evidence is None else self.evidence.to_json(),
            "activation_control": None
            if self.evidence is None
            else {"best_recall": float(np.max(self.evidence.control.recall))},
            "advice": self.advice,
            "remedy": self.remedy,
            "borderline": self.borderline,
            "borderline_margin_se": self.borderline_margin,
            "audit_reason": self.audit_reason,
            "training": None if self.training is None else self.training.to_json(),
            "benchmark_precision": self.benchmark_precision,
            "step_benchmark_precision": self.step_benchmark_precision,
        }


@dataclass(frozen=True)
class Diagnosis:
    """The whole recipe's verdict at one slice.

    Attributes:
        layer: the slice.
        classes: one :class:`ClassDiagnosis` per class.
        accuracy: of the model's use on the data.
        confusion: int64 ``[C, C]`` rows = true class, columns = predicted.
        preprocessing: the data's preprocessing recipe, described (``None`` if unknown).
        route: how g was run (``"fx"`` or ``"hook"``).
        settings: the settings used.
        recipe: the recipe as applied (``Preprocessing.to_dict()``), when the data records one.
        training_instances: instances of the training data given (``None``: none was given).
        benchmark: where the verdicts' benchmark precision comes from (half, grid, date; ``None`` without a
            table).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from essence.core import Diagnosis, diagnose
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
        >>> d = diagnose(model, (torch.randn(60, 4), torch.arange(60) % 3), "1", device="cpu")
        >>> isinstance(d, Diagnosis), d.confusion.shape, int(d.confusion.sum())
        (True, (3, 3), 60)
        >>> {"activation_control", "advice", "confused_with", "count", "borderline"} <= set(d.to_json()["classes"][0])
        True
    """

    layer: str
    classes: list[ClassDiagnosis]
    accuracy: float
    confusion: np.ndarray = field(repr=False)
    preprocessing: str | None
    route: str
    settings: DiagnosisSettings = field(repr=False)
    recipe: dict[str, Any] | None = None
    training_instances: int | None = None
    benchmark: dict[str, Any] | None = None

    @property
    def never_predicted(self) -> list[str]:
        return [c.name for c in self.classes if c.predicted_count == 0 and c.count > 0]

    def to_json(self) -> dict[str, Any]:
        """``{"layer", "preprocessing", "classes": [{"name", "recall", "precision", "predicted_count",
        "diagnosis", "expert", "probe", "suspect_steps", ...}], ...}`` (DESIGN §4)."""
        c, p, t = self.settings.criterion, self.settings.probe, self.settings.training
        recipe = dict(self.recipe or {})
        if self.preprocessing:
            recipe["description"] = self.preprocessing
        return {
            "layer": self.layer,
            "accuracy": self.accuracy,
            "preprocessing": recipe or None,
            "never_predicted": self.never_predicted,
            "route": self.route,
            "settings": {
                "rare_share": self.settings.rare_share,
                "low_recall_share": self.settings.low_recall_share,
                "low_recall_confidence": self.settings.low_recall_confidence,
                "precision_tolerance": c.precision_tolerance,
                "prevalence_lift": c.prevalence_lift,
                "min_recall_gain": c.min_recall_gain,
                "false_alarm": c.false_alarm,
                "random_masks": c.random_masks,
                "probe_confidence": p.confidence,
                "probe_folds": p.folds,
                "max_survival": self.settings.suspects.max_survival,
                "training_rare_share": t.rare_share,
                "training_level": t.level,
                "training_unlike_share": t.unlike_share,
                "training_confidence": t.confidence,
                "kind": self.settings.kind,
                "granularity": self.settings.granularity,
            },
            "classes": [k.to_json() for k in self.classes],
            "confusion": self.confusion.tolist(),
            "training_instances": self.training_instances,
            "benchmark": self.benchmark,
        }
