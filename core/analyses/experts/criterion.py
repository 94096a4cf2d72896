"""When a mask counts as an expert for a class: one rule for every dataset, every threshold argued."""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np


@dataclass(frozen=True)
class ExpertCriterion:
    """When a mask counts as an expert for class i (one rule for every dataset).

    A cell of the α×β grid is an expert iff all hold:

    - **recall gain over every reference**: recall_mask − max(recall_model, recall of the references at the
      same cell) ≥ max(``min_recall_gain``, z_m / (2√nᵢ)), z_m = Φ⁻¹(1 − ``false_alarm`` / m), m the number of
      cells the best one is chosen from. ½/√nᵢ is the largest standard error of a recall measured on nᵢ
      instances (√(r(1−r)/nᵢ) ≤ ½/√nᵢ), so a gain below z_m of them is within sampling noise; dividing the
      false-alarm rate by m (Bonferroni) pays for picking the best of m cells, the selection that would
      otherwise find a "gain" in noise alone. With one cell and ``false_alarm`` = 0.025 this is 0.98/√nᵢ,
      about the 1/√nᵢ of the paper-era rule; the 8×10 grid (m = 80) asks for 1.71/√nᵢ. The references are
      the activation-ranked control and random masks of the same size (:mod:`essence.core.analyses.experts.evidence`):
      an expert must owe its recall to the influence ranking, not to keeping α+β units of any kind.
    - **precision**: precision_mask ≥ max(precision_model − ``precision_tolerance``, floor), floor =
      min(``prevalence_lift`` · πᵢ, (1 + πᵢ)/2), πᵢ the prevalence of class i. A classifier that guesses i at
      random has precision πᵢ whatever its rate of guessing, so an expert must be ``prevalence_lift`` times
      as precise as chance (capped halfway between chance and perfect, for a class so common that the lift
      exceeds 1). When the model never predicts i its precision is undefined and the floor alone applies.
      When i's neighbour j (the class it is confused with) is known, the floor is at least the pair share
      nᵢ / (nᵢ + nⱼ): a mask that fires on "i or j" without telling them apart has exactly that precision, so
      an expert for i must beat it — otherwise it is an expert for the pair, not for i.

    Attributes:
        precision_tolerance: precision an expert may lose against the model's (the paper relaxes "about the
            same precision" for the class under suspicion; 0.1 = ten points).
        prevalence_lift: how many times chance precision an expert needs.
        min_recall_gain: the smallest recall gain worth calling an expert on very large classes (it binds
            above about 1,200 instances on the 8×10 grid, where a statistically real gain below 5 points is
            not worth a diagnosis).
        false_alarm: the one-sided chance, per class, of calling a cell an expert when its gain is noise
            (0.025: the one-sided half of the usual 5 %).
        random_masks: random masks of each cell's size drawn as references. A mask no better than random
            beats the best of R of them with probability 1/(R + 1); with 9, that is 10 % before the recall
            margin above is even asked for. Each costs one more sweep through g.
    """

    precision_tolerance: float = 0.1
    prevalence_lift: float = 2.0
    min_recall_gain: float = 0.05
    false_alarm: float = 0.025
    random_masks: int = 9

    def precision_floor(self, model_precision: float, prevalence: float, pair_share: float = 0.0) -> float:
        """The precision an expert needs (see the class docstring); ``pair_share`` = nᵢ / (nᵢ + nⱼ)."""
        chance = max(min(self.prevalence_lift * prevalence, (1.0 + prevalence) / 2.0), pair_share)
        if math.isnan(model_precision):
            return chance
        return max(model_precision - self.precision_tolerance, chance)

    def recall_gain(self, count: int, cells: int = 1) -> float:
        """The recall an expert must add over every reference, for a class of ``count`` instances chosen
        as the best of ``cells`` cells."""
        z = NormalDist().inv_cdf(1.0 - self.false_alarm / max(cells, 1))
        return max(self.min_recall_gain, z / (2.0 * math.sqrt(max(count, 1))))

    def experts(
        self,
        recall: np.ndarray,
        precision: np.ndarray,
        model_recall: float,
        model_precision: float,
        prevalence: float,
        count: int,
        references: np.ndarray | None = None,
        cells: int | None = None,
        pair_share: float = 0.0,
    ) -> np.ndarray:
        """Boolean mask of the grid cells that are experts.

        Args:
            recall, precision: float ``[A, B]`` of the influence-ranked masks.
            model_recall, model_precision: the unmasked model's (precision NaN if it never predicts i).
            prevalence: πᵢ.
            count: nᵢ.
            references: float ``[A, B]`` the best recall of the reference masks (control, random) at each
                cell, or ``None`` to compare against the model alone.
            cells: how many cells the best is chosen from (default: all of ``recall``).
            pair_share: nᵢ / (nᵢ + nⱼ) for i's neighbour j (0: no neighbour known).

        Returns:
            bool ``[A, B]``.
        """
        floor = self.precision_floor(model_precision, prevalence, pair_share)
        ok_precision = np.nan_to_num(precision, nan=-1.0) >= floor
        reference = np.full(np.shape(recall), float(model_recall))
        if references is not None:
            reference = np.maximum(reference, references)
        gain = self.recall_gain(count, int(np.size(recall)) if cells is None else cells)
        experts: np.ndarray = (recall - reference >= gain - 1e-12) & ok_precision
        return experts
