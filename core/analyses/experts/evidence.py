"""Honest experts: cross-fitted, corrected for the grid, and measured against the masks that should fail.

An expert sweep that ranks units on the same instances it scores them on, and then reports the best of 80
cells, finds "experts" in noise. :func:`expert_evidence` asks the question the diagnosis needs answered
honestly:

1. the influence-ranked sweep is **cross-fitted** (units ranked on one half of the data, masks scored on the
   other, and swapped), so no instance judges a mask chosen with its help;
2. the same grid is swept with the **activation-ranked control** (cross-fitted the same way) and with
   ``random_masks`` **random masks** of every cell's size;
3. a cell is an expert only if its recall beats the model's *and* the best reference at that cell by the
   recall margin of :class:`~essence.core.analyses.experts.criterion.ExpertCriterion`, which is corrected for choosing
   the best of the grid's cells (Bonferroni).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from essence.core.analyses.experts.criterion import ExpertCriterion
from essence.core.analyses.experts.masks import RankBy
from essence.core.analyses.experts.sweep import Expert, ExpertSweep, expert_sweep
from essence.core.engine.activation_cache import SliceCache
from essence.core.engine.quantities import Kind
from essence.core.engine.slices import Granularity


@dataclass(frozen=True)
class ExpertEvidence:
    """The honest expert test of one class.

    Attributes:
        sweep: the cross-fitted influence-ranked sweep (``[A, B]`` grids).
        control: the cross-fitted activation-ranked sweep on the same grid.
        random: the random-mask sweeps on the same grid (one per draw).
        reference: float64 ``[A, B]`` the best recall of the control and the random masks at each cell.
        experts: bool ``[A, B]`` the cells that pass the criterion against the model and the references.
        best: the expert with the highest recall (``{"alpha", "beta", "recall", "precision", ...}``), or
            ``None``; it also carries ``"reference_recall"``, the best reference at its cell.
        gain: the recall margin every expert had to clear (grid-corrected).
        criterion: the criterion used.
    """

    sweep: ExpertSweep = field(repr=False)
    control: ExpertSweep = field(repr=False)
    random: list[ExpertSweep] = field(repr=False)
    reference: np.ndarray = field(repr=False)
    experts: np.ndarray = field(repr=False)
    best: Expert | None
    gain: float
    criterion: ExpertCriterion = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        """``{"best", "gain", "cells", "control_best_recall", "random_best_recall", "crossfit"}``."""
        return {
            "best": None
            if self.best is None
            else {k: v for k, v in self.best.items() if not k.endswith("units")},
            "gain": self.gain,
            "cells": int(self.experts.size),
            "control_best_recall": float(np.max(self.control.recall)),
            "random_best_recall": float(max((np.max(r.recall) for r in self.random), default=float("nan"))),
            "crossfit": self.sweep.crossfit,
        }


def expert_evidence(
    model: nn.Module,
    data: object,
    layer: str,
    cls: int,
    *,
    cache: SliceCache,
    neighbour: int | None = None,
    criterion: ExpertCriterion | None = None,
    alphas: Sequence[int] | None = None,
    betas: Sequence[int] | None = None,
    kind: Kind = "logit",
    granularity: Granularity = "channel",
    seed: int = 0,
    batch_size: int = 256,
    device: str | torch.device = "auto",
) -> ExpertEvidence:
    """Sweep class ``cls`` honestly: cross-fitted influence masks against the control and random masks.

    Args:
        model: the classifier.
        data: the data ``cache`` was computed from.
        layer: module path of the slice.
        cls: the class index.
        cache: z cached by :func:`~essence.core.engine.activation_cache.cache_slice`.
        neighbour: the class ``cls`` is confused with; an expert must then be more precise than the pair's
            share nᵢ / (nᵢ + nⱼ) (see :class:`~essence.core.analyses.experts.criterion.ExpertCriterion`).
        criterion: when a cell is an expert (default settings); its ``random_masks`` sets the draws.
        alphas, betas: the grid (default: :func:`~essence.core.analyses.experts.sweep.default_grid`).
        kind, granularity: the profile's quantity and unit granularity.
        seed: seed of the halves and of the random masks (draw k uses ``seed + 1 + k``).
        batch_size, device: as elsewhere.

    Returns:
        An :class:`ExpertEvidence`.

    Raises:
        EmptyClassError: the class has no instances. SpecError: a bad grid.
    """
    c = criterion or ExpertCriterion()

    def swept(rank_by: RankBy, crossfit: bool, seed: int) -> ExpertSweep:
        return expert_sweep(
            model, data, layer, cls, alphas=alphas, betas=betas, rank_by=rank_by, kind=kind,
            granularity=granularity, cache=cache, crossfit=crossfit, seed=seed, batch_size=batch_size,
            device=device,
        )  # fmt: skip

    sweep = swept("influence", True, seed)
    control = swept("activation", True, seed)
    random = [swept("random", False, seed + 1 + k) for k in range(c.random_masks)]
    reference = np.maximum.reduce([control.recall, *(r.recall for r in random)])
    experts = c.experts(
        sweep.recall,
        sweep.precision,
        sweep.baseline["recall"],
        sweep.baseline["precision"],
        sweep.prevalence,
        sweep.count,
        references=reference,
        pair_share=_pair_share(cache, cls, neighbour),
    )
    best = _best(sweep, experts, reference)
    return ExpertEvidence(
        sweep=sweep,
        control=control,
        random=random,
        reference=reference,
        experts=experts,
        best=best,
        gain=c.recall_gain(sweep.count, int(experts.size)),
        criterion=c,
    )


def _pair_share(cache: SliceCache, cls: int, neighbour: int | None) -> float:
    """nᵢ / (nᵢ + nⱼ), or 0 without a neighbour."""
    if neighbour is None:
        return 0.0
    n_i, n_j = int((cache.labels == cls).sum()), int((cache.labels == neighbour).sum())
    return n_i / (n_i + n_j)


def _best(sweep: ExpertSweep, experts: np.ndarray, reference: np.ndarray) -> Expert | None:
    """The best expert cell (:meth:`ExpertSweep.best`) with the best reference recall at its cell."""
    best = sweep.best(experts=experts)
    if best is not None:
        a = int(np.flatnonzero(sweep.alphas == best["alpha"])[0])
        b = int(np.flatnonzero(sweep.betas == best["beta"])[0])
        best["reference_recall"] = float(reference[a, b])
    return best
