"""Triage (paper §3.3, Fig. 3): rank instances by how far their own influence departs from their class's.

Every instance x with label y has its own influence vector v = ∂q/∂z at z = h(x), with the paper's quantity
q = softmax_y (f restricted to the label, point distribution), and its class has a profile χ_y (the mean of
the same vectors over the class's instances). A correct instance follows the class-wide ordering of units;
a misclassified or mislabelled one looks random against it. The vectors and the profiles come from one pass
(:func:`~essence.core.analyses.profiles.class_profiles` with ``keep_instances=True``).

Deviation scores (higher = less like its class; each in [0, 2] or [0, 1]); T_y is the set of the ``top_k``
units of χ_y by absolute influence:

- ``spearman``: 1 − ρ_s(v[T_y], χ_y[T_y]), Spearman's rank correlation over the class's top units
  (the paper's Fig. 3 view: does the instance follow the class's ordering?).
- ``kendall``: 1 − τ_b(v[T_y], χ_y[T_y]), Kendall's τ-b over the same units (as ``scipy.stats.kendalltau``).
- ``cosine``: 1 − cos(v, χ_y) over all units.
- ``mass``: 1 − Σ_{j∈T_y} |v_j| / Σ_j |v_j|, the share of the instance's absolute influence that falls
  outside its class's top units.
- ``combined``: the mean of the fractional ranks (in [0, 1]) of ``cosine`` and of 1 − softmax_y — the
  instance's deviation and its ``self_confidence`` (the model's disbelief in the label), each worth half.

And the plain baselines from the outputs alone, for comparison on the same table:

- ``doubt``: 1 − max_k softmax_k, the model's doubt about its own prediction: one minus its *confidence*
  (max_k softmax_k, the probability of the predicted class, which every output reports as ``confidence``).
- ``self_confidence``: 1 − softmax_y (cleanlab's self-confidence, as a suspicion score).
- ``mistakenness``: (m · e^(−H(softmax)) + 1) / 2, m = +1 if predicted ≠ y else −1, H in nats (FiftyOne).

And the reasoning score (:mod:`essence.core.analyses.reasoning`), which the outputs cannot give:

- ``reasoning``: how far the instance's per-unit contributions to its label's logit (each unit's value times
  its influence, :mod:`essence.core.analyses.contributions`) depart from its class's, a leave-one-out, shrunk
  Mahalanobis distance to the class's reference instances, in units of the class's median. It finds
  instances predicted *right* for a reason unlike their class's (a shortcut mark), which every output score
  ranks as the least suspect.
- ``merged``: max(rank(``self_confidence``), rank(``reasoning`` among the instances predicted as labelled)),
  ranks scaled to [0, 1]: two queues interleaved — the doubtful, and the confidently right for unusual
  reasons — so that the top of each stays at the top and neither score hides the other's finds.

The default ranking is ``merged`` (``benchmarks/bench_triage.py``, table in ``docs/analyses.md``): on digits
``self_confidence`` finds flipped labels with ROC AUC ≈ 0.99–1.0 and no influence score beats it there, while a
planted shortcut is ranked least suspect by it (AUC ≈ 0.1) and found by ``reasoning`` (AUC ≈ 0.9 at mid-network
slices); the merged queue keeps both kinds near its top. ``score="self_confidence"`` gives the plain
cleanlab queue. The scores are computed by :mod:`essence.core.analyses.triage_scores`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from essence.core.analyses.contributions import UnitContributions, unit_contributions
from essence.core.analyses.profiles import ClassProfiles, class_profiles
from essence.core.analyses.reasoning import Reasoning, reasoning_scores
from essence.core.analyses.triage_scores import score_rows
from essence.core.base.errors import SpecError
from essence.core.base.model_state import CancelFlag
from essence.core.engine.activation_source import ActivationSource
from essence.core.engine.influence import Progress
from essence.core.engine.quantities import Kind
from essence.core.engine.slices import Granularity

ScoreName = Literal[
    "merged",
    "reasoning",
    "combined",
    "spearman",
    "kendall",
    "cosine",
    "mass",
    "doubt",
    "self_confidence",
    "mistakenness",
]
SCORES: tuple[str, ...] = (
    "merged",
    "reasoning",
    "combined",
    "spearman",
    "kendall",
    "cosine",
    "mass",
    "doubt",
    "self_confidence",
    "mistakenness",
)
DEFAULT_SCORE: ScoreName = "merged"
DEFAULT_TOP_K = 16


@dataclass(frozen=True)
class Triage:
    """Instances ranked for review, most deviant from their class first.

    Attributes:
        layer: the slice's module path.
        score: the name of the score that ranks (``deviation``).
        quantity: the quantity the instance vectors are of (``prob[label]`` by default).
        top_k: units per class the rank scores look at.
        class_names: ``C`` names.
        indices: int64 ``[N]`` each row's position in the dataset.
        labels: int64 ``[N]`` given labels.
        predicted: int64 ``[N]`` the model's argmax.
        confidence: float64 ``[N]`` softmax probability of the predicted class (max p; its complement, 1 − max p,
            is the ``doubt`` score).
        label_probability: float64 ``[N]`` softmax probability of the given label.
        probabilities: float64 ``[N, K]`` the model's softmax.
        scores: every score by name, float64 ``[N]`` each (higher = more suspect).
        deviation: float64 ``[N]`` the ranking score (``scores[score]``).
        ranking: int64 ``[N]`` row numbers ordered most deviant first (ties: lower dataset index first).
        reasoning: the reasoning score and the misclassified read through profiles
            (:class:`~essence.core.analyses.reasoning.Reasoning`, ``[N]`` arrays in the same row order).
        why_units: int64 ``[N, m]`` per row, the units whose contributions to the label's logit depart most
            from the class's (``reasoning.why_units``).
        why_z: float64 ``[N, m]`` their departures (c_j − μ_j) / σ_j against the class's reference spread.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from essence.core import Triage, deviation_scores
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
        >>> t = deviation_scores(model, (torch.randn(30, 4), torch.arange(30) % 3), "1", device="cpu")
        >>> isinstance(t, Triage), sorted(t.scores) == sorted(SCORES)
        (True, True)
        >>> row = t.rows(top=1)[0]  # the most suspect instance, as a record
        >>> row["index"] == int(t.indices[t.ranking[0]]), row["label_name"] in t.class_names
        (True, True)
    """

    layer: str
    score: str
    quantity: str
    top_k: int
    class_names: list[str]
    indices: np.ndarray
    labels: np.ndarray
    predicted: np.ndarray
    confidence: np.ndarray
    label_probability: np.ndarray
    probabilities: np.ndarray = field(repr=False)
    scores: dict[str, np.ndarray] = field(repr=False)
    deviation: np.ndarray = field(repr=False)
    ranking: np.ndarray = field(repr=False)
    reasoning: Reasoning = field(repr=False)
    why_units: np.ndarray = field(repr=False)
    why_z: np.ndarray = field(repr=False)

    def __len__(self) -> int:
        return len(self.indices)

    def rows(self, top: int | None = None) -> list[dict[str, Any]]:
        """The ranking as records, most suspect first (the ``scores`` of :meth:`to_json`).

        Each row holds ``confidence`` (max p, the predicted class's probability), ``label_probability`` (the
        given label's), ``deviation`` (the ranking score) and every score by name, ``doubt`` (1 − max p) among them.

        Args:
            top: keep the first ``top`` rows only (default: every ranked instance).
        """
        order = self.ranking if top is None else self.ranking[: max(0, top)]
        out = []
        for r in order:
            row: dict[str, Any] = {
                "index": int(self.indices[r]),
                "label": int(self.labels[r]),
                "label_name": self.class_names[int(self.labels[r])],
                "predicted": int(self.predicted[r]),
                "predicted_name": self.class_names[int(self.predicted[r])],
                "confidence": float(self.confidence[r]),
                "label_probability": float(self.label_probability[r]),
                "deviation": float(self.deviation[r]),
            }
            row.update({name: float(values[r]) for name, values in self.scores.items()})
            row["reasoning_predicted"] = float(self.reasoning.to_predicted[r])
            row["reading"] = self.reasoning.reading[r] or None
            row["why"] = [
                {"unit": int(u), "z": float(z)} for u, z in zip(self.why_units[r], self.why_z[r], strict=True)
            ]
            out.append(row)
        return out

    def to_json(self, top: int | None = None) -> dict[str, Any]:
        """The stable JSON layout of the triage (DESIGN §4; what ``essence triage --json`` writes): every ranked
        instance by default."""
        return {
            "layer": self.layer,
            "score": self.score,
            "quantity": self.quantity,
            "top_k": self.top_k,
            "scores": self.rows(top),
        }


def deviation_scores(
    model: nn.Module,
    data: object,
    layer: str,
    *,
    profiles: ClassProfiles | None = None,
    contributions: UnitContributions | None = None,
    kind: Kind = "prob",
    granularity: Granularity = "channel",
    top_k: int | None = None,
    score: ScoreName = DEFAULT_SCORE,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    progress: Progress | None = None,
    cancel: CancelFlag = None,
    activations: ActivationSource | None = None,
) -> Triage:
    """Score every instance by how far its own influence departs from its class profile.

    Args:
        model: the classifier.
        data: an :class:`~essence.core.inputs.data.ImageData` or ``(x, labels)`` tensors.
        layer: module path of the slice.
        profiles: class profiles computed with ``keep_instances=True`` (reused: no pass is run);
            by default they are computed here, in one pass, with the ``kind`` quantity.
        contributions: the per-unit contributions of the same data at the same slice (reused); by default
            computed here, in a second pass (:func:`~essence.core.analyses.contributions.unit_contributions`).
        kind: the label's score the instance vectors are of: ``"prob"`` (softmax, the paper's; default) or
            ``"logit"``. Where the layers above the slice are linear, a logit's gradient is the same for every
            instance and carries nothing; the softmax's is weighted by the instance's own output.
        granularity: ``"channel"`` or ``"neuron"``.
        top_k: units of each class's profile the rank scores look at (default ``min(16, U)``).
        score: the ranking score (see the module docstring); default ``"merged"`` (doubt and reasoning).
        batch_size, device, progress, cancel: as in :func:`~essence.core.engine.influence.influence`.
        activations: where z may be stored, for the profile pass (as in
            :func:`~essence.core.analyses.profiles.class_profiles`).

    Returns:
        A :class:`Triage`.

    Raises:
        SpecError: unknown score, ``top_k`` < 2, profiles without instance vectors, or contributions of
            other instances.
        EmptyClassError, LabelMismatchError, LayerNotFoundError: from the profile pass.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from essence.core import deviation_scores
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
        >>> x, y = torch.randn(60, 4), torch.arange(60) % 3
        >>> t = deviation_scores(model, (x, y), "1", device="cpu")
        >>> t.score, t.quantity, t.top_k, len(t), t.probabilities.shape
        ('merged', 'prob[label]', 16, 60, (60, 3))
        >>> bool((t.deviation[t.ranking][:-1] >= t.deviation[t.ranking][1:]).all())  # most suspect first
        True
    """
    _check_score(score)
    if profiles is None:
        profiles = class_profiles(
            model,
            data,
            layer,
            granularity=granularity,
            kind=kind,
            allow_empty=True,
            keep_instances=True,
            batch_size=batch_size,
            device=device,
            progress=progress,
            cancel=cancel,
            activations=activations,
        )
    vectors, labels, positions, outputs = _instance_rows(profiles)
    k = _top_k(top_k, profiles.num_units)
    if contributions is None:
        contributions = unit_contributions(
            model,
            data,
            profiles.layer,
            granularity=profiles.granularity,
            batch_size=batch_size,
            device=device,
            progress=progress,
            cancel=cancel,
        )
    y = labels.numpy().astype(np.int64)
    probs = torch.softmax(outputs.double(), dim=1).numpy()
    indices = positions.numpy().astype(np.int64)
    reasoning = reasoning_scores(_aligned(contributions, indices), len(profiles.class_names))
    every = score_rows(vectors.double().numpy(), y, probs, profiles.mean.double().numpy(), k, reasoning.score)
    scores = {name: every[name] for name in SCORES}
    return _ranked(profiles, score, k, indices, y, probs, scores, reasoning)


def _check_score(score: str) -> None:
    """Refuse an unknown ranking score, and say what the one renamed is called now."""
    if score == "confidence":  # named so once, though it ranked by 1 − max p
        raise SpecError("the triage score 'confidence' is now named 'doubt' (1 − max p): use doubt")
    if score not in SCORES:
        raise SpecError(f"unknown triage score {score!r}: use one of {', '.join(SCORES)}")


def _instance_rows(profiles: ClassProfiles) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(vectors [N, U], labels [N], dataset indices [N], outputs [N, K])`` kept by the profile pass."""
    inst = profiles.instances
    if (
        inst is None
        or inst.instance_vectors is None
        or inst.instance_labels is None
        or inst.instance_indices is None
        or inst.outputs is None
    ):
        raise SpecError(
            "these class profiles carry no instance vectors: compute them with keep_instances=True "
            "(or let deviation_scores compute them)"
        )
    return inst.instance_vectors, inst.instance_labels, inst.instance_indices, inst.outputs


def _top_k(top_k: int | None, units: int) -> int:
    """The units per class the rank scores look at: ``top_k``, by default ``min(16, U)``; checked."""
    k = min(DEFAULT_TOP_K, units) if top_k is None else int(top_k)
    if not 2 <= k <= units:
        raise SpecError(f"top_k={top_k} must lie in 2..{units} (the layer's units)")
    return k


def _ranked(
    profiles: ClassProfiles,
    score: str,
    k: int,
    indices: np.ndarray,
    y: np.ndarray,
    probs: np.ndarray,
    scores: dict[str, np.ndarray],
    reasoning: Reasoning,
) -> Triage:
    """The instances ranked by ``scores[score]``, with what the review shows beside each."""
    deviation = scores[score]
    # Most deviant first; equal scores keep dataset order so the queue is stable across runs.
    ranking = np.lexsort((indices, -deviation))
    return Triage(
        layer=profiles.layer,
        score=score,
        quantity=profiles.quantity,
        top_k=k,
        class_names=list(profiles.class_names),
        indices=indices,
        labels=y,
        predicted=probs.argmax(1).astype(np.int64),
        confidence=probs.max(1),
        label_probability=probs[np.arange(len(y)), y],
        probabilities=probs,
        scores=scores,
        deviation=deviation,
        ranking=ranking.astype(np.int64),
        reasoning=reasoning,
        why_units=reasoning.why_units,
        why_z=reasoning.why_z,
    )


def _aligned(contributions: UnitContributions, indices: np.ndarray) -> UnitContributions:
    """The contributions in the profile pass's row order (the same dataset, the same instances)."""
    if np.array_equal(contributions.indices, indices):
        return contributions
    order = np.argsort(contributions.indices, kind="stable")
    at = np.searchsorted(contributions.indices[order], indices)
    at = np.clip(at, 0, len(order) - 1)
    if len(contributions) != len(indices) or not np.array_equal(contributions.indices[order][at], indices):
        raise SpecError(
            "these contributions are of other instances than the profiles: compute both on the same data"
        )
    rows = torch.from_numpy(order[at])
    return UnitContributions(
        layer=contributions.layer,
        granularity=contributions.granularity,
        indices=contributions.indices[order[at]],
        labels=contributions.labels[order[at]],
        predicted=contributions.predicted[order[at]],
        outputs=contributions.outputs[rows],
        to_label=contributions.to_label[rows],
        to_predicted=contributions.to_predicted[rows],
    )
