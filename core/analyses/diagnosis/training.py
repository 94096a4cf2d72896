"""Was the class taught as it is evaluated? What the training data says of each class, at the slice.

The probe (:mod:`essence.core.analyses.diagnosis.probe`) tells whether the slice separates a class; it cannot
tell *why* a head that never predicts the class ignores it. A class the head was trained on and under-weights
("not read out": rebalance the head) and a class the head never saw as it is evaluated ("not learned": fix the
training data) look the same on the evaluated images alone. The training data tells them apart:

**How often.** The training instances labelled c, and their share of the training data. The class is *rare in
training* when its count is below ``rare_share`` × the median count of the model's classes in the training data
(½, the half of the diagnosis's own ``rare_share``: a class taught at most half as often as a typical class), and
*absent* at zero. Rarity is judged within the training data, not against the evaluated data: a review set is
often enriched for the class under suspicion, and its make-up says nothing of how the class was taught.

**Do they look like it?** At the slice (the probe's features, each scaled by its standard deviation over the
evaluated and training instances together), μ_c is the mean of the evaluated instances of c. Each evaluated
instance of c gets its distance to the mean of the *other* evaluated instances of c; a training instance
labelled c gets its distance to μ_c and a conformal p-value: p = (1 + #{evaluated distances ≥ its distance}) /
(n_c + 1). If the training images labelled c were drawn like the evaluated images of c, p would be (about)
uniform, so at most a share ``level`` = 5 % of them would have p ≤ ``level``: they lie outside the region that
holds 95 % of the evaluated images of c. A training image whose p ≤ ``level`` is *unlike* the evaluated images
of c. The training images labelled c **do not resemble** the evaluated ones when more than ``unlike_share`` = ½
of them are unlike — ten times what resemblance allows, and most of what the head was taught as c — and a
one-sided binomial test rejects, at ``confidence`` = 0.99, that the unlike share is only ``level`` (so two or
three odd images of a small class decide nothing). The test needs n_c ≥ 1/``level`` − 1 = 19 evaluated images
of c (below that no p-value can reach ``level``): with fewer, resemblance is *not tested*.

A model fits its training images, so they sit, if anything, nearer their class mean than evaluated images do;
the test errs towards "resembles". Measured on planted cases (docs/analyses.md): training images of a class
replaced by noise are all unlike (share 1.00 in 12 of 12 cases, CNNs and ResNets); classes whose training
images are genuine have shares of 0.00–0.11.
What the slice cannot see it cannot compare: a feature the model never learned (four dots missing from the
training images of a class) leaves the training images resembling at the slice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from essence.core.base.errors import LabelMismatchError, SpecError
from essence.core.engine.activation_cache import cache_slice
from essence.core.inputs.data import labels_of

ABSENT, RARE, UNLIKE = "absent", "rare", "unlike"


@dataclass(frozen=True)
class TrainingSettings:
    """Settings of the training-data facts (each argued in the module docstring).

    Attributes:
        rare_share: rare in training: a count below ``rare_share`` × the median per-class training count.
        level: a training image is unlike the evaluated images of its class when its conformal p-value is at
            most ``level``.
        unlike_share: the training images of a class do not resemble its evaluated images when more than this
            share of them is unlike (and the binomial test at ``confidence`` agrees).
        confidence: of the one-sided binomial test against the share ``level`` that resemblance allows.
    """

    rare_share: float = 0.5
    level: float = 0.05
    unlike_share: float = 0.5
    confidence: float = 0.99

    def __post_init__(self) -> None:
        for name in ("rare_share", "level", "unlike_share", "confidence"):
            value = getattr(self, name)
            if not 0.0 < value < 1.0 and not (name == "rare_share" and value == 1.0):
                raise SpecError(f"training {name}={value} must lie in (0, 1)")

    @property
    def min_evaluated(self) -> int:
        """The fewest evaluated instances of a class whose p-values can reach ``level``."""
        return math.ceil(1.0 / self.level - 1.0 - 1e-9)


@dataclass(frozen=True)
class TrainingFacts:
    """What the training data says of one class.

    Attributes:
        count: training instances labelled with the class.
        total: training instances.
        share: ``count / total``.
        evaluated_share: the class's share of the evaluated data.
        rare: absent, or taught fewer than ``rare_share`` × ``typical_count`` times.
        unlike: training instances of the class unlike its evaluated instances at the slice (``None``: not
            tested).
        resembles: whether they resemble its evaluated instances (``None``: not tested — no training
            instance, or fewer evaluated ones than the test needs).
        others_unlike: the median unlike share of the other tested classes (``None`` when none was tested): high
            for every class, the training and evaluated images differ as a whole.
        typical_count: the median training count over the model's classes.
    """

    count: int
    total: int
    share: float
    evaluated_share: float
    rare: bool
    unlike: int | None
    resembles: bool | None
    others_unlike: float | None = None
    typical_count: float = 0.0

    @property
    def cause(self) -> str | None:
        """Why the class was not taught as it is evaluated: ``"absent"``, ``"unlike"``, ``"rare"`` or ``None``."""
        if self.count == 0:
            return ABSENT
        if self.resembles is False:
            return UNLIKE
        return RARE if self.rare else None

    def describe(self, name: str) -> str:
        """The facts in words, e.g. ``98 training images labelled 5 (10.9 % of 900; 9.4 % of the evaluated), 98
        of them unlike its evaluated images at the slice``."""
        said = (
            f"{self.count} training images labelled {name} ({self.share:.1%} of {self.total}; "
            f"{self.evaluated_share:.1%} of the evaluated)"
        )
        if self.count == 0 or self.unlike is None:
            return said + (
                "" if self.count == 0 else ", not compared with its evaluated images (too few of them)"
            )
        how = "like" if self.resembles else "unlike"
        count = self.count - self.unlike if self.resembles else self.unlike
        return f"{said}, {count} of them {how} its evaluated images at the slice"

    def to_json(self) -> dict[str, Any]:
        """``{"count", "total", "share", "evaluated_share", "typical_count", "rare", "unlike", "unlike_share",
        "resembles", "others_unlike_share", "cause"}``."""
        return {
            "count": self.count,
            "total": self.total,
            "share": self.share,
            "evaluated_share": self.evaluated_share,
            "typical_count": self.typical_count,
            "rare": self.rare,
            "unlike": self.unlike,
            "unlike_share": None if self.unlike is None or not self.count else self.unlike / self.count,
            "resembles": self.resembles,
            "others_unlike_share": self.others_unlike,
            "cause": self.cause,
        }


def training_of(
    model: nn.Module,
    train_data: object,
    layer: str,
    names: list[str],
    evaluated: tuple[np.ndarray, np.ndarray, bool],
    settings: TrainingSettings,
    *,
    max_features: int,
    batch_size: int,
    device: str | torch.device,
) -> list[TrainingFacts] | None:
    """Each class's :class:`TrainingFacts` (``None`` without training data): one pass up to the slice over it.

    Args:
        model, layer: the classifier and its slice.
        train_data: the training data, an :class:`~essence.core.inputs.data.ImageData` or ``(x, labels)``
            tensors, or ``None``.
        names: the model's classes, in output order.
        evaluated: the evaluated instances' probe features ``[N, D]``, their classes ``[N]``, and whether the
            evaluated data names its classes (then the training data, if it names its own, must name the same).
        settings: thresholds.
        max_features: of the probe's features (the training data's are read the same way).
        batch_size, device: of the pass.

    Raises:
        LabelMismatchError: the training data's classes are not the model's (checked before the pass).
    """
    from essence.core.analyses.diagnosis.probe import probe_features

    if train_data is None:
        return None
    features, labels, named = evaluated
    train_names = getattr(train_data, "class_names", None)
    check_training_labels(names, labels_of(train_data), list(train_names) if named and train_names else None)
    train = cache_slice(model, train_data, layer, batch_size=batch_size, device=device)
    train_features = probe_features(train.z, max_features)
    return training_facts(features, labels, train_features, train.labels.numpy(), len(names), settings)


def check_training_labels(names: list[str], train_labels: np.ndarray, train_names: list[str] | None) -> None:
    """Refuse training data whose classes are not the evaluated data's, in the same order.

    Raises:
        LabelMismatchError: other class names, or a label outside the model's classes.
    """
    if train_names is not None and list(train_names) != list(names):
        raise LabelMismatchError(
            f"the training data's classes ({', '.join(train_names[:6])}) are not the evaluated data's "
            f"({', '.join(names[:6])}) in the same order: give train_data= with the model's classes"
        )
    outside = train_labels[(train_labels < 0) | (train_labels >= len(names))]
    if len(outside):
        raise LabelMismatchError(
            f"the training data has a label {int(outside[0])} outside the model's {len(names)} classes: "
            "give train_data= with the model's classes"
        )


def training_facts(
    features: np.ndarray,
    labels: np.ndarray,
    train_features: np.ndarray,
    train_labels: np.ndarray,
    num_classes: int,
    settings: TrainingSettings | None = None,
) -> list[TrainingFacts]:
    """Each class's :class:`TrainingFacts` (module docstring).

    Args:
        features: the evaluated instances' probe features ``[N, D]``.
        labels: their classes ``[N]``.
        train_features: the training instances' features ``[M, D]``, read the same way.
        train_labels: their classes ``[M]``.
        num_classes: the model's classes.
        settings: thresholds (:class:`TrainingSettings`).

    Returns:
        One record per class.
    """
    s = settings or TrainingSettings()
    scale = np.concatenate([features, train_features]).std(0)
    scale = np.where(scale > 0, scale, 1.0)  # a unit constant over both sets adds nothing to any distance
    f, t = features / scale, train_features / scale
    unlike = [_unlike(f[labels == c], t[train_labels == c], s) for c in range(num_classes)]
    shares = {c: u / int((train_labels == c).sum()) for c, u in enumerate(unlike) if u is not None}
    counts = [int((train_labels == c).sum()) for c in range(num_classes)]
    typical = float(np.median(counts))
    facts = []
    for c in range(num_classes):
        others = [v for k, v in shares.items() if k != c]
        facts.append(
            _facts(
                counts[c], len(train_labels), float((labels == c).mean()), unlike[c], s,
                float(np.median(others)) if others else None, typical,
            )
        )  # fmt: skip
    return facts


def _unlike(evaluated: np.ndarray, trained: np.ndarray, s: TrainingSettings) -> int | None:
    """How many of ``trained`` lie outside the region of ``evaluated`` (conformal p ≤ level); ``None``: untested."""
    n = len(evaluated)
    if n < max(2, s.min_evaluated) or len(trained) == 0:
        return None
    mean = evaluated.mean(0)
    others = (n * mean - evaluated) / (n - 1)  # each evaluated instance against the mean of the others
    own = np.sort(np.linalg.norm(evaluated - others, axis=1))
    far = np.linalg.norm(trained - mean, axis=1)
    at_least = n - np.searchsorted(own, far, side="left")  # evaluated distances ≥ each training distance
    p = (1.0 + at_least) / (n + 1.0)
    return int((p <= s.level).sum())


def _facts(
    count: int,
    total: int,
    evaluated: float,
    unlike: int | None,
    s: TrainingSettings,
    others: float | None,
    typical: float,
) -> TrainingFacts:
    """One class's record from its counts and its unlike count."""
    from scipy.stats import binom

    share = count / total if total else 0.0
    resembles = None
    if unlike is not None:
        significant = binom.sf(unlike - 1, count, s.level) < 1.0 - s.confidence
        resembles = not (unlike > s.unlike_share * count and significant)
    return TrainingFacts(
        count=count,
        total=total,
        share=share,
        evaluated_share=evaluated,
        rare=count == 0 or count < s.rare_share * typical,
        unlike=unlike,
        resembles=resembles,
        others_unlike=others,
        typical_count=typical,
    )


def never_taught_remedy(facts: TrainingFacts, name: str, settings: TrainingSettings | None = None) -> str:
    """The remedy for a class not learned because of its training data (``facts.cause`` is not ``None``)."""
    s = settings or TrainingSettings()
    if facts.cause == ABSENT:
        return f"collect and label training images of {name}: the training data holds none"
    if facts.cause == RARE:
        return (
            f"collect and label more training images of {name}: the training data holds {facts.count} "
            f"({facts.share:.1%} of it), against a median of {facts.typical_count:g} per class"
        )
    remedy = (
        f"the training images labelled {name} do not show what the evaluation images of {name} show "
        f"({facts.unlike} of {facts.count} lie outside where {1 - s.level:.0%} of its evaluated images lie at the "
        "slice): "
        "check them — their labels, their files, where they came from"
    )
    if facts.others_unlike is not None and facts.others_unlike > s.unlike_share:
        remedy += (
            f"; the other classes' training images differ from their evaluated ones too (median share "
            f"{facts.others_unlike:.2f} unlike): check that the two sets come from the same source"
        )
    return remedy
