"""The masks of an expert sweep: units ranked for one class, masks built over the α×β grid, scored through g.

A mask M(α, β) keeps the α first units of a ranking (the most positive of the class's profile, or the most
active on its instances, or a random order) and its β last, and zeroes the rest of the slice. :class:`Ranking`
ranks the units on every instance or cross-fitted (ranked on one half, scored on the other, then swapped);
:func:`run_masks` pushes every instance's cached z through g under many masks at once and counts, per mask, the
instances it predicts as the class (softmax_i > ½) and the true positives among them. The sweep itself, its
grid and its result are :mod:`essence.core.analyses.experts.sweep`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from essence.core.analyses.profiles import ClassProfiles
from essence.core.base.devices import resolve_device
from essence.core.base.errors import SpecError
from essence.core.base.model_state import inference_state, on_device
from essence.core.engine.activation_cache import SliceCache, halves_of, rank_units
from essence.core.engine.quantities import Kind
from essence.core.engine.slices import Granularity

__all__ = ["MAX_ELEMENTS_PER_PASS", "RankBy", "Ranking", "grid_masks", "profile_order", "run_masks", "sides"]

RankBy = Literal["influence", "activation", "random"]
# Rows pushed through g at once (masks × instances), bounded by the slice's size so memory stays small.
MAX_ELEMENTS_PER_PASS = 1 << 24


def profile_order(profiles: ClassProfiles, cls: int, layer: str, width: int) -> torch.Tensor:
    """Units by class ``cls``'s profile, most positive first; the profiles must be of this slice."""
    if profiles.layer != layer or profiles.num_units != width:
        raise SpecError(
            f"the profiles are of slice {profiles.layer!r} with {profiles.num_units} units, not {layer!r} "
            f"with {width}: compute them at the same slice and granularity"
        )
    return torch.argsort(profiles.mean[cls].double(), descending=True, stable=True)


def sides(order: torch.Tensor, a: np.ndarray, b: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The units the α side adds (most positive first) and the β side (most negative first)."""
    pos = order[: int(a.max())]
    neg = order.flip(0)[: int(b.max()) if len(b) and b.max() > 0 else 0]
    return pos, neg


@dataclass(frozen=True)
class Ranking:
    """How one class's units are ranked and its masks scored, on all the instances or cross-fitted."""

    cache: SliceCache
    units: torch.Tensor
    cls: int
    rank_by: RankBy
    kind: Kind
    granularity: Granularity
    seed: int
    batch_size: int
    device: str | torch.device

    def counts(
        self, a: np.ndarray, b: np.ndarray, order: torch.Tensor, folds: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """True positives (float64) and predicted counts (int64), ``[A, B]`` each, of the grid's masks.

        Without ``folds`` the masks follow ``order`` and are scored on every instance; with them, the units
        are ranked on one half and the masks scored on the other, then the halves swap and the counts add.
        """
        if not folds:
            tp, predicted = self.scored(a, b, order, None)
        else:
            halves = halves_of(self.cache.labels, self.seed)
            tp, predicted = np.zeros(len(a) * len(b)), np.zeros(len(a) * len(b), dtype=np.int64)
            for rank_on, score_on in (halves, halves[::-1]):
                fold = rank_units(
                    self.cache, self.units, self.cls, rank_on, self.rank_by, self.kind, self.granularity,
                    self.seed, self.batch_size, self.device,
                )  # fmt: skip
                t, p = self.scored(a, b, fold, score_on)
                tp, predicted = tp + t, predicted + p
        return tp.reshape(len(a), len(b)), predicted.reshape(len(a), len(b))

    def scored(
        self, a: np.ndarray, b: np.ndarray, order: torch.Tensor, rows: torch.Tensor | None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Flat counts of the masks taken from ``order``, scored on ``rows`` (default: all)."""
        pos, neg = sides(order, a, b)
        masks = grid_masks(a, b, pos, neg, self.units.shape[1])
        return run_masks(self.cache, masks, self.cls, self.granularity, self.batch_size, self.device, rows)


def grid_masks(
    a: np.ndarray, b: np.ndarray, pos: torch.Tensor, neg: torch.Tensor, width: int
) -> torch.Tensor:
    """``[A·B, U]`` 0/1 masks of the grid, row ``ai·B + bi`` keeping ``pos[:a[ai]]`` and ``neg[:b[bi]]``."""
    masks = torch.zeros(len(a), len(b), width)
    for ai, alpha in enumerate(a):
        for bi, beta in enumerate(b):
            masks[ai, bi, pos[:alpha]] = 1.0
            if beta:
                masks[ai, bi, neg[:beta]] = 1.0
    return masks.reshape(-1, width)


def run_masks(
    cache: SliceCache,
    masks: torch.Tensor,
    cls: int,
    granularity: Granularity,
    batch_size: int,
    device: str | torch.device,
    rows: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """True positives and predicted counts of class ``cls`` per mask on ``rows`` (default all), batched."""
    dev = resolve_device(device)
    rows = torch.arange(len(cache.z)) if rows is None else rows
    z_all, labels = cache.z[rows], cache.labels[rows]
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
    if cache.sliced.needs_input:  # the hook route repeats the inputs per mask and re-runs the model on them
        per_instance += max(1, math.prod(cache.inputs(rows[:1]).shape[1:]))
    per_pass = max(1, MAX_ELEMENTS_PER_PASS // per_instance)
    b = max(1, min(len(z_all), batch_size, per_pass))
    chunk = max(1, per_pass // b)
    tp = torch.zeros(m, dtype=torch.int64)
    predicted = torch.zeros(m, dtype=torch.int64)
    model = cache.sliced.model
    with inference_state(model), on_device(model, dev), torch.no_grad():
        for s in range(0, len(z_all), b):
            z = z_all[s : s + b].to(dev)
            is_i = (labels[s : s + b] == cls).to(dev)
            x = cache.inputs(rows[s : s + len(z)]).to(dev) if cache.sliced.needs_input else None
            for c in range(0, m, chunk):
                mk = masks[c : c + chunk]
                zz = (z.unsqueeze(0) * mk.unsqueeze(1)).reshape(-1, *z_shape)
                xx = x.repeat(len(mk), *([1] * (x.ndim - 1))) if x is not None else None
                out = cache.sliced.g(zz, xx).float()
                says_i = (torch.softmax(out, dim=1)[:, cls] > 0.5).reshape(len(mk), len(z))
                tp[c : c + len(mk)] += (says_i & is_i).sum(1).cpu()
                predicted[c : c + len(mk)] += says_i.sum(1).cpu()
    return tp.numpy().astype(np.float64), predicted.numpy()
