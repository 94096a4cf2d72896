"""One class, model A against model B: how its recall, precision, profile and diagnosis changed.

:func:`~essence.core.analyses.comparison.compare_models` makes a :class:`ClassDelta` per class from the two
confusion matrices and the class's two profiles over the matched units (:func:`delta_of_class`), and adds each
side's verdict when the diagnosis was run (:func:`with_diagnosis`), so that experts appearing or vanishing
between the models are seen.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from essence.core.analyses.diagnosis.verdict import Diagnosis
from essence.core.analyses.matching import Matching, ProfileDrift, profile_drift

__all__ = ["ClassDelta", "delta_of_class", "with_diagnosis"]


@dataclass(frozen=True)
class ClassDelta:
    """One class, model A against model B.

    ``recall`` is NaN for a class without instances, ``precision`` NaN for a class a model never predicts.
    ``drift`` compares the class's profiles over matched units (a :class:`~essence.core.analyses.matching.ProfileDrift`).
    ``diagnosis_a``/``diagnosis_b`` (``"ok"``, ``"drowning experts"``, ...) and ``expert_a``/``expert_b``
    (whether an expert was found) come from each side's diagnosis, ``None`` when it was not run.
    """

    name: str
    support: int
    recall_a: float
    recall_b: float
    precision_a: float
    precision_b: float
    predicted_a: int
    predicted_b: int
    drift: ProfileDrift = field(default_factory=ProfileDrift)
    diagnosis_a: str | None = None
    diagnosis_b: str | None = None
    expert_a: bool | None = None
    expert_b: bool | None = None

    def to_json(self) -> dict[str, Any]:
        def delta(b: float, a: float) -> float | None:
            return None if not (np.isfinite(a) and np.isfinite(b)) else b - a

        return {
            "name": self.name,
            "support": self.support,
            "recall_a": self.recall_a,
            "recall_b": self.recall_b,
            "recall_delta": delta(self.recall_b, self.recall_a),
            "precision_a": self.precision_a,
            "precision_b": self.precision_b,
            "precision_delta": delta(self.precision_b, self.precision_a),
            "predicted_a": self.predicted_a,
            "predicted_b": self.predicted_b,
            "drift": self.drift.to_json(),
            "diagnosis_a": self.diagnosis_a,
            "diagnosis_b": self.diagnosis_b,
            "expert_a": self.expert_a,
            "expert_b": self.expert_b,
        }


def delta_of_class(
    c: int,
    name: str,
    conf_a: torch.Tensor,
    conf_b: torch.Tensor,
    pa: torch.Tensor,
    pb: torch.Tensor,
    matching: Matching,
    top_k: int,
) -> ClassDelta:
    """Class ``c``'s delta from the confusions ``[K, K]`` of A and B and its profiles ``pa``, ``pb`` ``[U]``."""

    def rates(conf: torch.Tensor) -> tuple[float, float, int]:
        tp, support, predicted = int(conf[c, c]), int(conf[c].sum()), int(conf[:, c].sum())
        recall = tp / support if support else float("nan")
        precision = tp / predicted if predicted else float("nan")
        return recall, precision, predicted

    ra, pra, na = rates(conf_a)
    rb, prb, nb = rates(conf_b)
    return ClassDelta(
        name=name,
        support=int(conf_a[c].sum()),
        recall_a=ra,
        recall_b=rb,
        precision_a=pra,
        precision_b=prb,
        predicted_a=na,
        predicted_b=nb,
        drift=profile_drift(pa, pb, matching, top_k),
    )


def with_diagnosis(delta: ClassDelta, c: int, diag_a: Diagnosis, diag_b: Diagnosis) -> ClassDelta:
    """Add each side's verdict for class ``c`` and whether it has an expert (experts appearing or vanishing)."""

    def verdict(d: Diagnosis) -> tuple[str | None, bool | None]:
        if c >= len(d.classes):
            return None, None
        return d.classes[c].diagnosis, d.classes[c].expert is not None

    (va, ea), (vb, eb) = verdict(diag_a), verdict(diag_b)
    return replace(delta, diagnosis_a=va, diagnosis_b=vb, expert_a=ea, expert_b=eb)
