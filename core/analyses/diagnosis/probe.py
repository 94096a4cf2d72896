"""Is class i's information in the slice? A cross-validated linear probe on z = h(x), and its chance level.

The expert test asks whether the model's *own* read-out can be made to predict class i. That cannot tell
"the information is absent" from "the information is there but the layers above never use it". A linear probe
fitted on z itself can: if a logistic regression separates i from its neighbour on held-out instances, the
slice carries what is needed, whatever the head does with it.

**The probe.** Features: the slice's values flattened (average-pooled over positions until at most
``max_features`` remain, so a wide conv slice stays cheap), standardised on the training folds. Model: L2
logistic regression (C = 1 on standardised features, classes weighted to balance, liblinear: ten times
faster than lbfgs here), ``folds``-fold stratified
cross-validation; every instance is scored by a probe that never saw it. Measure: ROC AUC of those held-out
scores (threshold-free, so the class's rarity does not move it).

**The threshold.** Chance is AUC = ½. Under "no information" the AUC of n₁ positives against n₀ negatives is
a Mann–Whitney statistic with standard deviation √((n₁ + n₀ + 1) / (12 n₁ n₀)); the probe separates the class
when its AUC exceeds ½ + z · sd, z = Φ⁻¹(``confidence``) (0.99: one false "it is in the slice" per hundred
classes without information). The threshold therefore rises for small classes, where a high AUC comes
cheaply. Cross-validated AUCs under the null lie slightly *below* ½ on small samples, so the test errs on the
side of "not in the slice".

**Borderline.** The AUC's own standard error is Hanley and McNeil's (1982, *Radiology* 143:29),
√((A(1 − A) + (n₁ − 1)(Q₁ − A²) + (n₀ − 1)(Q₂ − A²)) / (n₁ n₀)) with Q₁ = A/(2 − A), Q₂ = 2A²/(1 + A), from
the held-out scores of all folds pooled (the folds' spread is not used: with five folds of a small class it
is itself too noisy to be a yardstick). A probe whose AUC lies within one standard error of its threshold is
*borderline*: another draw of the same size could fall on the other side, and the verdict says so.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from essence.core.base.errors import SpecError


@dataclass(frozen=True)
class ProbeSettings:
    """Settings of the linear probe (each argued in the module docstring).

    Attributes:
        folds: cross-validation folds (fewer when a class has fewer instances; at least 2).
        confidence: one minus the chance of calling noise "separated" (sets z of the threshold).
        max_features: the most slice values the probe reads (conv slices are average-pooled down to it).
        regularisation: inverse L2 strength C of the logistic regression on standardised features.
        seed: seed of the folds.
    """

    folds: int = 5
    confidence: float = 0.99
    max_features: int = 4096
    regularisation: float = 1.0
    seed: int = 0


@dataclass(frozen=True)
class Probe:
    """A held-out probe of one class against another (or against the rest).

    Attributes:
        auc: ROC AUC of the held-out probe scores (NaN when there are too few instances to fit).
        threshold: the AUC chance can reach (½ + z · sd for these class sizes).
        positives: instances of the class.
        negatives: instances it was probed against.
        against: the name of the class probed against, or ``"rest"``.
    """

    auc: float
    threshold: float
    positives: int
    negatives: int
    against: str

    @property
    def stderr(self) -> float:
        """Hanley–McNeil standard error of the AUC (NaN when the AUC is)."""
        return auc_stderr(self.auc, self.positives, self.negatives)

    @property
    def margin(self) -> float:
        """(AUC − threshold) in standard errors (NaN when either is undefined; ±inf at a zero error)."""
        se, gap = self.stderr, self.auc - self.threshold
        if not (np.isfinite(se) and np.isfinite(gap)):
            return float("nan")
        return gap / se if se > 0 else math.copysign(math.inf, gap)

    @property
    def borderline(self) -> bool:
        """Whether the AUC lies within one standard error of its threshold."""
        return bool(abs(self.margin) <= 1.0)

    @property
    def separates(self) -> bool:
        """Whether the probe separates the class beyond chance."""
        return bool(np.isfinite(self.auc) and self.auc > self.threshold)

    def to_json(self) -> dict[str, Any]:
        """``{"auc", "threshold", "against", "positives", "negatives", "separates", "stderr", "margin_se",
        "borderline"}`` (NaN as ``null``)."""
        return {
            "auc": float(self.auc) if np.isfinite(self.auc) else None,
            "threshold": float(self.threshold) if np.isfinite(self.threshold) else None,
            "against": self.against,
            "positives": self.positives,
            "negatives": self.negatives,
            "separates": self.separates,
            "stderr": float(self.stderr) if np.isfinite(self.stderr) else None,
            "margin_se": float(self.margin) if np.isfinite(self.margin) else None,
            "borderline": self.borderline,
        }


def auc_stderr(auc: float, positives: int, negatives: int) -> float:
    """Hanley–McNeil standard error of an AUC of ``positives`` against ``negatives`` (module docstring).

    Examples:
        >>> round(auc_stderr(0.5, 50, 50), 3), round(auc_stderr(0.9, 50, 50), 3)
        (0.058, 0.032)
    """
    if not np.isfinite(auc) or positives < 1 or negatives < 1:
        return float("nan")
    q1, q2 = auc / (2.0 - auc), 2.0 * auc * auc / (1.0 + auc)
    var = auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)
    return math.sqrt(max(var, 0.0) / (positives * negatives))


def chance_auc(positives: int, negatives: int, confidence: float = 0.99) -> float:
    """The AUC a classifier without information exceeds with probability ``1 − confidence``.

    Args:
        positives, negatives: the two groups' sizes.
        confidence: in (½, 1).

    Returns:
        ½ + Φ⁻¹(confidence) · √((n₁ + n₀ + 1) / (12 n₁ n₀)); NaN if a group is empty.

    Raises:
        SpecError: confidence out of (½, 1).
    """
    if not 0.5 < confidence < 1.0:
        raise SpecError(f"probe confidence {confidence} must lie in (0.5, 1), e.g. 0.99")
    if positives < 1 or negatives < 1:
        return float("nan")
    sd = math.sqrt((positives + negatives + 1) / (12.0 * positives * negatives))
    return 0.5 + NormalDist().inv_cdf(confidence) * sd


def probe_features(z: torch.Tensor, max_features: int = 4096) -> np.ndarray:
    """The probe's features ``[N, D]`` from slice values ``[N, *z_shape]``, D ≤ ``max_features``.

    A conv slice ``[N, C, H, W]`` is average-pooled over positions (halving the grid) until C·H·W fits; a
    slice wider than ``max_features`` even at one position per channel keeps its channel means.
    """
    z = z.float()
    while z.ndim == 4 and z[0].numel() > max_features and min(z.shape[-2:]) > 1:
        h, w = z.shape[-2:]
        z = F.adaptive_avg_pool2d(z, (max(1, h // 2), max(1, w // 2)))
    return z.reshape(len(z), -1).double().numpy()


def probe_auc(features: np.ndarray, positive: np.ndarray, settings: ProbeSettings | None = None) -> float:
    """Held-out ROC AUC of a linear probe of ``positive`` against the rest of ``features``.

    Args:
        features: float ``[N, D]``.
        positive: bool ``[N]``.
        settings: folds, regularisation, seed.

    Returns:
        The AUC, or NaN when a group has fewer than two instances.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    s = settings or ProbeSettings()
    positive = np.asarray(positive, dtype=bool)
    smaller = int(min(positive.sum(), (~positive).sum()))
    if smaller < 2:
        return float("nan")
    folds = StratifiedKFold(min(s.folds, smaller), shuffle=True, random_state=s.seed)
    scores = np.zeros(len(positive))
    features = np.nan_to_num(np.asarray(features, dtype=np.float64))
    for train, test in folds.split(features, positive):
        probe = make_pipeline(
            StandardScaler(),
            LogisticRegression(
                C=s.regularisation, class_weight="balanced", solver="liblinear", max_iter=1000
            ),
        )
        probe.fit(features[train], positive[train])
        scores[test] = probe.decision_function(features[test])
    return float(roc_auc_score(positive, scores))


def probe_class(
    features: np.ndarray,
    labels: np.ndarray,
    cls: int,
    against: int | None,
    names: list[str],
    settings: ProbeSettings | None = None,
) -> Probe:
    """Probe class ``cls`` against class ``against`` (or against every other class when ``None``).

    Args:
        features: float ``[N, D]`` (:func:`probe_features` of the slice).
        labels: int ``[N]``.
        cls: the class probed.
        against: the other class, or ``None`` for the rest.
        names: class names.
        settings: the probe's settings.

    Returns:
        A :class:`Probe`.
    """
    s = settings or ProbeSettings()
    labels = np.asarray(labels)
    keep = np.ones(len(labels), dtype=bool) if against is None else np.isin(labels, (cls, against))
    positive = labels[keep] == cls
    n1, n0 = int(positive.sum()), int((~positive).sum())
    return Probe(
        auc=probe_auc(features[keep], positive, s),
        threshold=chance_auc(n1, n0, s.confidence),
        positives=n1,
        negatives=n0,
        against="rest" if against is None else names[against],
    )
