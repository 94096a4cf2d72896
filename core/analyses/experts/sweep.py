"""Experts (paper §3.3.1, §3.4, Fig. 5): a few units of a class's profile, alone, as a binary classifier.

For class i, the mask M(α, β) keeps the α most positive and β most negative units of i's profile (whole
channels on a conv slice) and zeroes the rest of the slice; the masked model g(z ⊙ M) is read as a binary
classifier: it predicts i iff softmax_i > Σ_{j≠i} softmax_j, i.e. softmax_i > ½. Its recall and precision on
i, over an α×β grid, are set against the unmasked model's. Activation-ranked masks (the units most and least
active on i's instances) are the control that should fail.

Cost: z = h(x) is computed once and cached in CPU memory; every mask of the grid then runs through g alone
(:func:`~essence.core.engine.split.split_model`), many masks per batch (:mod:`essence.core.analyses.experts.masks`
ranks the units and scores the masks). Where the model cannot be cut, g re-runs the
model with z substituted at the layer (correct, slower).

The unmasked model is read two ways (both reported): its *use* (predicts i iff argmax = i) — the reading the
expert criterion compares against, since "the model never predicts i" is a statement about its use — and the
same binary reading as the masks (softmax_i > ½), which is what the paper's Fig. 5 sets beside the experts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NotRequired, TypedDict

import numpy as np
import torch
from torch import nn

from essence.core.analyses.experts.criterion import ExpertCriterion
from essence.core.analyses.experts.masks import RankBy, Ranking, profile_order, sides
from essence.core.analyses.profiles import ClassProfiles, class_profiles
from essence.core.base.errors import EmptyClassError, LabelMismatchError, SpecError
from essence.core.engine.activation_cache import SliceCache, cache_slice, rank_units, unit_values
from essence.core.engine.activation_source import ActivationSource
from essence.core.engine.quantities import Kind
from essence.core.engine.slices import Granularity
from essence.core.inputs.labels import class_index

__all__ = [
    "Baseline",
    "Expert",
    "ExpertCriterion",
    "ExpertSweep",
    "Reading",
    "SliceCache",
    "cache_slice",
    "default_grid",
    "expert_sweep",
]


class Reading(TypedDict):
    """The unmasked model read as a classifier of class i: recall, precision (NaN if it never says i), count."""

    recall: float
    precision: float
    predicted: int


class Baseline(Reading):
    """The unmasked model's use (argmax = i), and under ``"binary"`` the masks' reading (softmax_i > ½)."""

    binary: Reading


class Expert(TypedDict):
    """One expert cell of the grid: how many units it keeps, its recall and precision, and which units.

    ``reference_recall``, the best recall of the control and random masks at its cell, is added by the honest
    test (:func:`~essence.core.analyses.experts.evidence.expert_evidence`).
    """

    alpha: int
    beta: int
    recall: float
    precision: float
    positive_units: list[int]
    negative_units: list[int]
    reference_recall: NotRequired[float]


@dataclass(frozen=True)
class ExpertSweep:
    """Precision and recall of every expert mask of an α×β grid for one class.

    Attributes:
        cls: the class index i.
        class_name: its name.
        layer: the slice.
        rank_by: ``"influence"`` (the class's profile) or ``"activation"`` (the control).
        alphas: int ``[A]`` positive units kept.
        betas: int ``[B]`` negative units kept.
        recall: float64 ``[A, B]`` recall on i of each mask (binary reading).
        precision: float64 ``[A, B]`` precision (NaN where the mask never predicts i).
        predicted: int64 ``[A, B]`` instances each mask predicts as i.
        baseline: the unmasked model: ``{"recall", "precision", "predicted"}`` of its use (argmax = i), and
            the same under ``"binary"`` (softmax_i > ½).
        count: instances of class i.
        prevalence: πᵢ = count / N.
        num_units: the slice's width in units.
        positive_units: int ``[max α]`` units in the order they are added to the α side.
        negative_units: int ``[max β]`` same for the β side.
        route: ``"fx"`` (g alone) or ``"hook"``.
        crossfit: whether the units were ranked on one half and scored on the other (and swapped).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from essence.core import ExpertSweep, expert_sweep
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
        >>> x, y = torch.randn(60, 4), torch.arange(60) % 3
        >>> s = expert_sweep(model, (x, y), "1", 0, rank_by="activation", crossfit=True, device="cpu")
        >>> isinstance(s, ExpertSweep), s.rank_by, s.crossfit, s.num_units
        (True, 'activation', True, 16)
        >>> s.alphas.tolist(), s.betas.tolist()  # the default grid for 16 units
        ([1, 2, 3, 4, 5, 6, 7, 8], [0, 1, 2, 3, 4, 5, 6, 7, 8])
        >>> s.recall.shape == s.precision.shape == s.experts().shape == (8, 9)
        True
    """

    cls: int
    class_name: str
    layer: str
    rank_by: str
    alphas: np.ndarray
    betas: np.ndarray
    recall: np.ndarray
    precision: np.ndarray
    predicted: np.ndarray
    baseline: Baseline
    count: int
    prevalence: float
    num_units: int
    positive_units: np.ndarray = field(repr=False)
    negative_units: np.ndarray = field(repr=False)
    route: str = "fx"
    crossfit: bool = False

    def experts(self, criterion: ExpertCriterion | None = None) -> np.ndarray:
        """Boolean ``[A, B]``: which cells are experts under ``criterion`` (default settings)."""
        c = criterion or ExpertCriterion()
        return c.experts(
            self.recall,
            self.precision,
            self.baseline["recall"],
            self.baseline["precision"],
            self.prevalence,
            self.count,
        )

    def best(
        self, criterion: ExpertCriterion | None = None, experts: np.ndarray | None = None
    ) -> Expert | None:
        """The expert with the highest recall (then precision, then fewest units), or ``None``.

        Args:
            criterion: the criterion against the model alone (default settings).
            experts: bool ``[A, B]`` which cells are experts, when decided elsewhere (overrides ``criterion``).
        """
        ok = self.experts(criterion) if experts is None else experts
        if not ok.any():
            return None
        cells = [
            (self.recall[a, b], np.nan_to_num(self.precision[a, b]), -(self.alphas[a] + self.betas[b]), a, b)
            for a, b in zip(*np.nonzero(ok), strict=True)
        ]
        *_, a, b = max(cells)
        return {
            "alpha": int(self.alphas[a]),
            "beta": int(self.betas[b]),
            "recall": float(self.recall[a, b]),
            "precision": float(self.precision[a, b]),
            "positive_units": [int(u) for u in self.positive_units[: self.alphas[a]]],
            "negative_units": [int(u) for u in self.negative_units[: self.betas[b]]],
        }

    def to_json(self) -> dict[str, Any]:
        """``{"class", "alphas", "betas", "recall", "precision", "baseline", ...}`` (DESIGN §4)."""
        return {
            "class": self.class_name,
            "class_index": self.cls,
            "layer": self.layer,
            "rank_by": self.rank_by,
            "alphas": [int(a) for a in self.alphas],
            "betas": [int(b) for b in self.betas],
            "recall": self.recall.tolist(),
            "precision": self.precision.tolist(),
            "predicted": self.predicted.tolist(),
            "baseline": self.baseline,
            "count": self.count,
            "prevalence": self.prevalence,
            "route": self.route,
            "crossfit": self.crossfit,
            "best": self.best(),
        }


def default_grid(units: int) -> tuple[np.ndarray, np.ndarray]:
    """The Fig. 5 grid scaled to the layer's width: 8 α and 10 β values on a log grid up to ~half the width.

    α runs from 1 unit to ⌈U/2⌉; β is 0 (positive units alone) and then 1 to ⌈U/2⌉. A narrow layer, with
    fewer distinct counts than that, gets every count from 1 to ⌈U/2⌉.
    """
    top = max(1, math.ceil(units / 2))
    return log_grid(1, top, 8), np.concatenate([[0], log_grid(1, top, 9)]).astype(np.int64)


def log_grid(lo: int, hi: int, count: int) -> np.ndarray:
    """``count`` distinct integers from ``lo`` to ``hi``, spaced geometrically (fewer if the range is short)."""
    if hi - lo + 1 <= count:
        return np.arange(lo, hi + 1, dtype=np.int64)
    values: list[int] = []
    for k, t in enumerate(np.geomspace(lo, hi, count)):
        left = count - k - 1  # values still to place above this one
        v = max(round(float(t)), values[-1] + 1 if values else lo)
        values.append(min(v, hi - left))
    return np.asarray(values, dtype=np.int64)


def expert_sweep(
    model: nn.Module,
    data: object,
    layer: str,
    cls: int | str,
    *,
    profiles: ClassProfiles | None = None,
    alphas: Sequence[int] | None = None,
    betas: Sequence[int] | None = None,
    rank_by: RankBy = "influence",
    kind: Kind = "logit",
    granularity: Granularity = "channel",
    cache: SliceCache | None = None,
    crossfit: bool = False,
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    activations: ActivationSource | None = None,
) -> ExpertSweep:
    """Sweep expert masks for class ``cls`` over an α×β grid.

    Args:
        model: the classifier.
        data: an :class:`~essence.core.inputs.data.ImageData` or ``(x, labels)`` tensors.
        layer: module path of the slice.
        cls: the class, by index or name.
        profiles: class profiles at ``layer`` (computed with ``kind`` and ``granularity`` if not given; only
            needed for ``rank_by="influence"``).
        alphas: positive units to keep (default: :func:`default_grid`).
        betas: negative units to keep (0 allowed).
        rank_by: ``"influence"`` (the class's profile), ``"activation"`` (mean activation of the class's
            instances: the control) or ``"random"`` (a random order of the units, drawn from ``seed``: the
            α first and β last units are a random mask of α+β units).
        kind: quantity of the profiles computed here (``"logit"``, the class profiles of the recipe).
        granularity: ``"channel"`` (conv slices: whole channels are kept or zeroed) or ``"neuron"``.
        cache: z cached by :func:`cache_slice` (reused across classes and rankings).
        crossfit: rank the units on one half of the data and score the masks on the other, then swap the
            halves and add the counts (halves stratified by class, drawn from ``seed``): every instance is
            scored by masks ranked without it. The influence ranking of each half is computed from the
            cached z through g (:func:`~essence.core.engine.activation_cache.instance_gradients`), not from ``profiles``.
            ``positive_units``/``negative_units`` are then the ranking on all the data, for display.
        seed: seed of the halves and of the random order.
        batch_size, device: as elsewhere.
        activations: where z may be stored (read instead of running h, for the cache and the profiles
            computed here; :class:`~essence.core.engine.activation_source.ActivationSource`).

    Returns:
        An :class:`ExpertSweep`.

    Raises:
        ClassNotFoundError: unknown class. EmptyClassError: the class has no instances.
        SpecError: α or β out of 0..U (α ≥ 1), unknown ``rank_by``, profiles of another slice.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from essence.core import expert_sweep
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
        >>> x, y = torch.randn(60, 4), torch.arange(60) % 3
        >>> s = expert_sweep(model, (x, y), "1", 2, alphas=[1, 2, 4], betas=[0, 2], device="cpu")
        >>> s.class_name, s.count, s.recall.shape, s.precision.shape
        ('class 2', 20, (3, 2), (3, 2))
        >>> sorted(s.baseline)  # the unmasked model: its use (argmax) and the binary reading
        ['binary', 'precision', 'predicted', 'recall']
    """
    if rank_by not in ("influence", "activation", "random"):
        raise SpecError(f"rank_by {rank_by!r} is not known: use 'influence', 'activation' or 'random'")
    cache = cache or cache_slice(
        model, data, layer, batch_size=batch_size, device=device, activations=activations
    )
    names = _class_names(data, cache.num_classes, profiles)
    i = class_index(cls, names)
    labels = cache.labels
    count = int((labels == i).sum())
    if count == 0:
        raise EmptyClassError(
            f"class {names[i]!r} has no instances in the data: an expert for it cannot be measured; add its images"
        )
    units = unit_values(cache.z, granularity)
    width = units.shape[1]
    default_a, default_b = default_grid(width)
    a = _check_counts(alphas, default_a, width, "alpha", minimum=1)
    b = _check_counts(betas, default_b, width, "beta", minimum=0)
    # A random order has nothing learned from the instances to keep apart from them: it is never cross-fitted.
    folds = crossfit and rank_by != "random"
    if rank_by == "influence" and not folds:
        profiles = profiles or class_profiles(
            model, data, layer, granularity=granularity, kind=kind, allow_empty=True, batch_size=batch_size,
            device=device, activations=activations,
        )  # fmt: skip
        order = profile_order(profiles, i, layer, width)
    else:
        every = torch.arange(len(labels))
        order = rank_units(cache, units, i, every, rank_by, kind, granularity, seed, batch_size, device)
    ranking = Ranking(cache, units, i, rank_by, kind, granularity, seed, batch_size, device)
    tp, predicted = ranking.counts(a, b, order, folds)
    pos, neg = sides(order, a, b)
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(predicted > 0, tp / np.maximum(predicted, 1), np.nan)
    return ExpertSweep(
        cls=i,
        class_name=names[i],
        layer=layer,
        rank_by=rank_by,
        alphas=a,
        betas=b,
        recall=tp / count,
        precision=precision,
        predicted=predicted,
        baseline=_baseline(cache.outputs, labels, i),
        count=count,
        prevalence=count / len(labels),
        num_units=width,
        positive_units=pos.numpy().astype(np.int64),
        negative_units=neg.numpy().astype(np.int64),
        route=cache.sliced.route,
        crossfit=bool(folds),
    )


def _class_names(data: object, num_classes: int, profiles: ClassProfiles | None) -> list[str]:
    names = list(getattr(data, "class_names", None) or (profiles.class_names if profiles else []) or [])
    if names and len(names) != num_classes:
        raise LabelMismatchError(
            f"the data has {len(names)} classes but the model has {num_classes} outputs: "
            "use data labelled with the model's classes"
        )
    return names or [f"class {k}" for k in range(num_classes)]


def _check_counts(
    values: Sequence[int] | None, default: np.ndarray, width: int, what: str, minimum: int
) -> np.ndarray:
    if values is None:
        return default
    arr = np.asarray(list(values), dtype=np.int64)
    if arr.size == 0:
        raise SpecError(f"no {what} values given: pass at least one")
    bad = [int(v) for v in arr if not minimum <= v <= width]
    if bad:
        raise SpecError(
            f"{what} {bad} out of range: the layer has {width} units, so {what} must lie in {minimum}..{width}"
        )
    return np.unique(arr)


def _baseline(outputs: torch.Tensor, labels: torch.Tensor, cls: int) -> Baseline:
    is_i = labels == cls
    n_i = int(is_i.sum())

    def reading(says: torch.Tensor) -> Reading:
        tp = int((says & is_i).sum())
        pred = int(says.sum())
        return {"recall": tp / n_i, "precision": tp / pred if pred else float("nan"), "predicted": pred}

    use = reading(outputs.argmax(1) == cls)
    return {**use, "binary": reading(torch.softmax(outputs.float(), dim=1)[:, cls] > 0.5)}
