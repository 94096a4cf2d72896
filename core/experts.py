"""Experts (paper §3.3.1, §3.4, Fig. 5): a few units of a class's profile, alone, as a binary classifier.

For class i, the mask M(α, β) keeps the α most positive and β most negative units of i's profile (whole
channels on a conv slice) and zeroes the rest of the slice; the masked model g(z ⊙ M) is read as a binary
classifier: it predicts i iff softmax_i > Σ_{j≠i} softmax_j, i.e. softmax_i > ½. Its recall and precision on
i, over an α×β grid, are set against the unmasked model's. Activation-ranked masks (the units most and least
active on i's instances) are the control that should fail.

Cost: z = h(x) is computed once and cached in CPU memory; every mask of the grid then runs through g alone
(:func:`~essence.core.split.split_model`), many masks per batch. Where the model cannot be cut, g re-runs the
model with z substituted at the layer (correct, slower).

The unmasked model is read two ways (both reported): its *use* (predicts i iff argmax = i) — the reading the
expert criterion compares against, since "the model never predicts i" is a statement about its use — and the
same binary reading as the masks (softmax_i > ½), which is what the paper's Fig. 5 sets beside the experts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from essence.core.data import as_batches, class_index
from essence.core.devices import resolve_device
from essence.core.errors import EmptyClassError, LabelMismatchError, SpecError
from essence.core.influence import on_device
from essence.core.profiles import ClassProfiles, class_profiles
from essence.core.quantities import Kind
from essence.core.slices import Granularity, inference_state
from essence.core.split import SlicedModel, split_model

RankBy = Literal["influence", "activation"]
# Rows pushed through g at once (masks × instances), bounded by the slice's size so memory stays small.
MAX_ELEMENTS_PER_PASS = 1 << 24


@dataclass(frozen=True)
class SliceCache:
    """z = h(x) of every instance at a slice, computed once and kept in CPU memory.

    Attributes:
        layer: module path of the slice.
        sliced: the model cut at the slice (``route`` says whether g runs alone).
        z: float32 ``[N, *z_shape]`` the slice's values.
        labels: int64 ``[N]``.
        outputs: float32 ``[N, K]`` the unmasked model's outputs.
        data: the data z came from (the hook route re-reads its inputs).
    """

    layer: str
    sliced: SlicedModel = field(repr=False)
    z: torch.Tensor = field(repr=False)
    labels: torch.Tensor = field(repr=False)
    outputs: torch.Tensor = field(repr=False)
    data: object = field(repr=False)

    @property
    def num_classes(self) -> int:
        return int(self.outputs.shape[1])

    def inputs(self, idx: torch.Tensor) -> torch.Tensor:
        """The preprocessed inputs of the given instances (only the hook route needs them)."""
        batches, _ = as_batches(self.data, len(idx), idx.numpy())
        return next(iter(batches))[0]


def cache_slice(
    model: nn.Module,
    data: object,
    layer: str,
    *,
    batch_size: int = 256,
    device: str | torch.device = "auto",
) -> SliceCache:
    """Run h once over the data and keep z (and the model's outputs) in CPU memory.

    Raises:
        LayerNotFoundError: unknown layer.
    """
    dev = resolve_device(device)
    zs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    outs: list[torch.Tensor] = []
    batches, n = as_batches(data, batch_size)
    if n == 0:
        raise EmptyClassError("the data holds no instances")
    sliced: SlicedModel | None = None
    with inference_state(model), on_device(model, dev), torch.no_grad():
        for x, y, _ in batches:
            x = x.to(dev)
            if sliced is None:
                sliced = split_model(model, layer, example=x[:4])
            z = sliced.h(x)
            outs.append(sliced.g(z, x).float().cpu())
            zs.append(z.float().cpu())
            ys.append(y.long().cpu())
    assert sliced is not None
    return SliceCache(layer, sliced, torch.cat(zs), torch.cat(ys), torch.cat(outs), data)


@dataclass(frozen=True)
class ExpertCriterion:
    """When a mask counts as an expert for class i (one rule for every dataset).

    A mask is an expert iff both hold:

    - **recall gain**: recall_mask − recall_model ≥ max(``min_recall_gain``, 1/√nᵢ). 1/√nᵢ is twice the
      largest standard error of a recall measured on nᵢ instances (√(r(1−r)/nᵢ) ≤ ½/√nᵢ): a smaller gain is
      within sampling noise. It also means the expert finds at least √nᵢ instances of i.
    - **precision**: precision_mask ≥ max(precision_model − ``precision_tolerance``, floor), floor =
      min(``prevalence_lift`` · πᵢ, (1 + πᵢ)/2), πᵢ the prevalence of class i. A classifier that guesses i at
      random has precision πᵢ whatever its rate of guessing, so an expert must be ``prevalence_lift`` times
      as precise as chance (capped halfway between chance and perfect, for a class so common that the lift
      exceeds 1). When the model never predicts i its precision is undefined and the floor alone applies:
      this is what still separates "an expert exists" from "nothing was learned" for a never-predicted class.

    Attributes:
        precision_tolerance: precision an expert may lose against the model's (the paper relaxes "about the
            same precision" for the class under suspicion; 0.1 = ten points).
        prevalence_lift: how many times chance precision an expert needs.
        min_recall_gain: the smallest recall gain worth calling an expert on very large classes.
    """

    precision_tolerance: float = 0.1
    prevalence_lift: float = 2.0
    min_recall_gain: float = 0.05

    def precision_floor(self, model_precision: float, prevalence: float) -> float:
        chance = min(self.prevalence_lift * prevalence, (1.0 + prevalence) / 2.0)
        if math.isnan(model_precision):
            return chance
        return max(model_precision - self.precision_tolerance, chance)

    def recall_gain(self, count: int) -> float:
        return max(self.min_recall_gain, 1.0 / math.sqrt(max(count, 1)))

    def experts(
        self,
        recall: np.ndarray,
        precision: np.ndarray,
        model_recall: float,
        model_precision: float,
        prevalence: float,
        count: int,
    ) -> np.ndarray:
        """Boolean mask of the grid cells that are experts (same shape as ``recall``)."""
        floor = self.precision_floor(model_precision, prevalence)
        ok_precision = np.nan_to_num(precision, nan=-1.0) >= floor
        return (recall - model_recall >= self.recall_gain(count) - 1e-12) & ok_precision


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
    baseline: dict
    count: int
    prevalence: float
    num_units: int
    positive_units: np.ndarray = field(repr=False)
    negative_units: np.ndarray = field(repr=False)
    route: str = "fx"

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

    def best(self, criterion: ExpertCriterion | None = None) -> dict | None:
        """The expert with the highest recall (then precision, then fewest units), or ``None``."""
        ok = self.experts(criterion)
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

    def to_json(self) -> dict:
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
    batch_size: int = 256,
    device: str | torch.device = "auto",
) -> ExpertSweep:
    """Sweep expert masks for class ``cls`` over an α×β grid.

    Args:
        model: the classifier.
        data: an :class:`~essence.core.data.ImageData` or ``(x, labels)`` tensors.
        layer: module path of the slice.
        cls: the class, by index or name.
        profiles: class profiles at ``layer`` (computed with ``kind`` and ``granularity`` if not given; only
            needed for ``rank_by="influence"``).
        alphas: positive units to keep (default: :func:`default_grid`).
        betas: negative units to keep (0 allowed).
        rank_by: ``"influence"`` (the class's profile) or ``"activation"`` (mean activation of the class's
            instances: the control).
        kind: quantity of the profiles computed here (``"logit"``, the class profiles of the recipe).
        granularity: ``"channel"`` (conv slices: whole channels are kept or zeroed) or ``"neuron"``.
        cache: z cached by :func:`cache_slice` (reused across classes and rankings).
        batch_size, device: as elsewhere.

    Returns:
        An :class:`ExpertSweep`.

    Raises:
        ClassNotFoundError: unknown class. EmptyClassError: the class has no instances.
        SpecError: α or β out of 0..U (α ≥ 1), unknown ``rank_by``, profiles of another slice.
    """
    if rank_by not in ("influence", "activation"):
        raise SpecError(f"rank_by {rank_by!r} is not known: use 'influence' or 'activation'")
    cache = cache or cache_slice(model, data, layer, batch_size=batch_size, device=device)
    names = _class_names(data, cache.num_classes, profiles)
    i = class_index(cls, names)
    labels = cache.labels
    count = int((labels == i).sum())
    if count == 0:
        raise EmptyClassError(
            f"class {names[i]!r} has no instances in the data: an expert for it cannot be measured; add its images"
        )
    units = _unit_values(cache.z, granularity)
    width = units.shape[1]
    if rank_by == "influence":
        if profiles is None:
            profiles = class_profiles(
                model,
                data,
                layer,
                granularity=granularity,
                kind=kind,
                allow_empty=True,
                batch_size=batch_size,
                device=device,
            )
        if profiles.layer != layer or profiles.num_units != width:
            raise SpecError(
                f"the profiles are of slice {profiles.layer!r} with {profiles.num_units} units, not {layer!r} "
                f"with {width}: compute them at the same slice and granularity"
            )
        order = torch.argsort(profiles.mean[i].double(), descending=True, stable=True)
    else:
        order = torch.argsort(units[labels == i].double().mean(0), descending=True, stable=True)
    default_a, default_b = default_grid(width)
    a = _check_counts(alphas, default_a, width, "alpha", minimum=1)
    b = _check_counts(betas, default_b, width, "beta", minimum=0)
    pos = order[: int(a.max())]
    neg = order.flip(0)[: int(b.max()) if len(b) and b.max() > 0 else 0]
    masks = _masks(a, b, pos, neg, width)  # [A*B, U]
    tp, predicted = _run_masks(cache, masks, i, granularity, batch_size, device)
    tp = tp.reshape(len(a), len(b))
    predicted = predicted.reshape(len(a), len(b))
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
    )


def _class_names(data: object, num_classes: int, profiles: ClassProfiles | None) -> list[str]:
    names = list(getattr(data, "class_names", None) or (profiles.class_names if profiles else []) or [])
    if names and len(names) != num_classes:
        raise LabelMismatchError(
            f"the data has {len(names)} classes but the model has {num_classes} outputs: "
            "use data labelled with the model's classes"
        )
    return names or [f"class {k}" for k in range(num_classes)]


def _unit_values(z: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """Per-instance unit values ``[N, U]`` (channel granularity: mean over positions)."""
    if z.ndim <= 2 or granularity == "neuron":
        return z.reshape(len(z), -1)
    if granularity != "channel":
        raise SpecError(f"unknown granularity {granularity!r}: use 'channel' or 'neuron'")
    return z.reshape(z.shape[0], z.shape[1], -1).mean(-1)


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


def _masks(a: np.ndarray, b: np.ndarray, pos: torch.Tensor, neg: torch.Tensor, width: int) -> torch.Tensor:
    masks = torch.zeros(len(a), len(b), width)
    for ai, alpha in enumerate(a):
        for bi, beta in enumerate(b):
            masks[ai, bi, pos[:alpha]] = 1.0
            if beta:
                masks[ai, bi, neg[:beta]] = 1.0
    return masks.reshape(-1, width)


def _run_masks(
    cache: SliceCache,
    masks: torch.Tensor,
    cls: int,
    granularity: Granularity,
    batch_size: int,
    device: object,
) -> tuple[np.ndarray, np.ndarray]:
    """True positives and predicted counts of class ``cls`` per mask, all masks batched through g."""
    dev = resolve_device(device)
    z_all, labels = cache.z, cache.labels
    z_shape = tuple(z_all.shape[1:])
    per_instance = max(1, math.prod(z_shape))
    # Broadcast a unit mask onto z: whole channels on a conv slice at channel granularity.
    view = (
        (len(masks), *z_shape)
        if (granularity == "neuron" or len(z_shape) == 1)
        else (len(masks), z_shape[0], *([1] * (len(z_shape) - 1)))
    )
    masks = masks.reshape(view).to(dev)
    m = len(masks)
    rows = max(1, MAX_ELEMENTS_PER_PASS // per_instance)
    b = max(1, min(len(z_all), batch_size, rows))
    chunk = max(1, rows // b)
    tp = torch.zeros(m, dtype=torch.int64)
    predicted = torch.zeros(m, dtype=torch.int64)
    model = cache.sliced.model
    with inference_state(model), on_device(model, dev), torch.no_grad():
        for s in range(0, len(z_all), b):
            z = z_all[s : s + b].to(dev)
            is_i = (labels[s : s + b] == cls).to(dev)
            x = cache.inputs(torch.arange(s, s + len(z))).to(dev) if cache.sliced.needs_input else None
            for c in range(0, m, chunk):
                mk = masks[c : c + chunk]
                zz = (z.unsqueeze(0) * mk.unsqueeze(1)).reshape(-1, *z_shape)
                xx = x.repeat(len(mk), *([1] * (x.ndim - 1))) if x is not None else None
                out = cache.sliced.g(zz, xx).float()
                says_i = (torch.softmax(out, dim=1)[:, cls] > 0.5).reshape(len(mk), len(z))
                tp[c : c + len(mk)] += (says_i & is_i).sum(1).cpu()
                predicted[c : c + len(mk)] += says_i.sum(1).cpu()
    return tp.numpy().astype(np.float64), predicted.numpy()


def _baseline(outputs: torch.Tensor, labels: torch.Tensor, cls: int) -> dict:
    is_i = labels == cls
    n_i = int(is_i.sum())

    def reading(says: torch.Tensor) -> dict:
        tp = int((says & is_i).sum())
        pred = int(says.sum())
        return {"recall": tp / n_i, "precision": tp / pred if pred else float("nan"), "predicted": pred}

    use = reading(outputs.argmax(1) == cls)
    use["binary"] = reading(torch.softmax(outputs.float(), dim=1)[:, cls] > 0.5)
    return use
