"""The drowning-expert diagnosis (paper §3.4): why is a class rarely or never predicted?

For every class: recall, precision and how often the model predicts it. A class predicted for fewer than
``rare_share`` × its true count is *rarely predicted*; the expert sweep of its profile then splits it in two:

- **drowning experts** — a mask of the class's own units recovers it (an expert, see
  :class:`~essence.core.experts.ExpertCriterion`), so the model did learn it, but in the full model other
  classes' units outweigh it. The classes that drown it are the ones its instances are predicted as whose
  profiles share positive units with its expert. Remedy: rebalance the training data or reweight the loss.
- **not learned** — no mask of the grid recovers it: the features are not at this slice. Look at the data and
  the preprocessing (the paper's case: a Gaussian blur erased the microaneurysms that define class 2); the
  recipe is shown with the diagnosis.

Everything else is "ok".
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from essence.core.experts import ExpertCriterion, ExpertSweep, cache_slice, expert_sweep
from essence.core.influence import CancelFlag, Progress
from essence.core.profiles import ClassProfiles, class_profiles
from essence.core.quantities import Kind
from essence.core.slices import Granularity

OK, DROWNING, NOT_LEARNED = "ok", "drowning experts", "not learned"


@dataclass(frozen=True)
class DiagnosisSettings:
    """Settings of the diagnosis (each a documented choice, the same for every dataset).

    Attributes:
        rare_share: a class is *rarely predicted* when the model predicts it for fewer than
            ``rare_share`` × its true count of instances. ½: a class the model names at most half as often
            as it occurs has lost at least half its recall even if every prediction of it is right — a loss
            no calibrated classifier shows; a balanced model predicts each class about as often as it occurs.
        criterion: when a mask counts as an expert (:class:`ExpertCriterion`).
        alphas, betas: the sweep's grid (default: :func:`~essence.core.experts.default_grid`).
        kind: the quantity of the class profiles the masks are taken from (``"logit"``).
        granularity: ``"channel"`` or ``"neuron"``.
        top_units: how many top positive and negative units of each class are listed.
    """

    rare_share: float = 0.5
    criterion: ExpertCriterion = field(default_factory=ExpertCriterion)
    alphas: Sequence[int] | None = None
    betas: Sequence[int] | None = None
    kind: Kind = "logit"
    granularity: Granularity = "channel"
    top_units: int = 5


@dataclass(frozen=True)
class ClassDiagnosis:
    """One class's diagnosis.

    Attributes:
        cls, name: the class.
        count: its instances in the data.
        recall: of the model's use (argmax); NaN without instances.
        precision: NaN when the model never predicts it.
        predicted_count: how many instances the model predicts as it.
        diagnosis: ``"ok"``, ``"drowning experts"`` or ``"not learned"``.
        expert: the best expert ``{"alpha", "beta", "recall", "precision", ...}`` or ``None``.
        confused_with: ``[(class name, count)]`` what its instances are predicted as instead, most first.
        drowned_by: names of the classes that drown its expert (drowning experts only).
        top_positive, top_negative: its profile's top units.
        advice: one line for people.
        sweep, control: the influence-ranked sweep and the activation-ranked control (rare classes only).
    """

    cls: int
    name: str
    count: int
    recall: float
    precision: float
    predicted_count: int
    diagnosis: str
    expert: dict | None
    confused_with: list[tuple[str, int]]
    drowned_by: list[str]
    top_positive: list[int]
    top_negative: list[int]
    advice: str
    sweep: ExpertSweep | None = field(default=None, repr=False)
    control: ExpertSweep | None = field(default=None, repr=False)

    def to_json(self) -> dict:
        expert = None
        if self.expert is not None:
            expert = {k: self.expert[k] for k in ("alpha", "beta", "recall", "precision")}
            expert["units"] = self.expert["positive_units"] + self.expert["negative_units"]
        control = None
        if self.control is not None:
            control = {
                "best_recall": float(np.max(self.control.recall)),
                "expert": self.control.best() is not None,
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
            "confused_with": [{"class": c, "count": n} for c, n in self.confused_with],
            "drowned_by": self.drowned_by,
            "top_positive_units": self.top_positive,
            "top_negative_units": self.top_negative,
            "activation_control": control,
            "advice": self.advice,
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
    """

    layer: str
    classes: list[ClassDiagnosis]
    accuracy: float
    confusion: np.ndarray = field(repr=False)
    preprocessing: str | None
    route: str
    settings: DiagnosisSettings = field(repr=False)

    @property
    def never_predicted(self) -> list[str]:
        return [c.name for c in self.classes if c.predicted_count == 0 and c.count > 0]

    def to_json(self) -> dict:
        """``{"layer", "classes": [{"name", "recall", "precision", "predicted_count", "diagnosis", "expert"}]}``."""
        return {
            "layer": self.layer,
            "accuracy": self.accuracy,
            "preprocessing": self.preprocessing,
            "never_predicted": self.never_predicted,
            "route": self.route,
            "settings": {
                "rare_share": self.settings.rare_share,
                "precision_tolerance": self.settings.criterion.precision_tolerance,
                "prevalence_lift": self.settings.criterion.prevalence_lift,
                "min_recall_gain": self.settings.criterion.min_recall_gain,
                "kind": self.settings.kind,
                "granularity": self.settings.granularity,
            },
            "classes": [c.to_json() for c in self.classes],
            "confusion": self.confusion.tolist(),
        }


def diagnose(
    model: nn.Module,
    data: object,
    layer: str,
    *,
    settings: DiagnosisSettings | None = None,
    profiles: ClassProfiles | None = None,
    preprocessing: str | None = None,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    progress: Progress | None = None,
    cancel: CancelFlag = None,
) -> Diagnosis:
    """Diagnose every class at ``layer``: ok, drowning experts, or not learned.

    Args:
        model: the classifier.
        data: an :class:`~essence.core.data.ImageData` or ``(x, labels)`` tensors.
        layer: module path of the slice.
        settings: thresholds and grid (:class:`DiagnosisSettings`).
        profiles: class profiles at ``layer`` (computed if not given).
        preprocessing: a description of the inputs' recipe (default: the data's, if it has one).
        batch_size, device, progress, cancel: as elsewhere (progress and cancel cover the profile pass).

    Returns:
        A :class:`Diagnosis`.

    Raises:
        LayerNotFoundError, LabelMismatchError, SpecError: bad slice, classes or grid.
    """
    s = settings or DiagnosisSettings()
    if profiles is None:
        profiles = class_profiles(
            model,
            data,
            layer,
            granularity=s.granularity,
            kind=s.kind,
            allow_empty=True,
            batch_size=batch_size,
            device=device,
            progress=progress,
            cancel=cancel,
        )
    cache = cache_slice(model, data, layer, batch_size=batch_size, device=device)
    labels = cache.labels.numpy()
    predicted = cache.outputs.argmax(1).numpy()
    num = cache.num_classes
    names = list(getattr(data, "class_names", None) or profiles.class_names)
    confusion = np.zeros((num, num), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    recipe = preprocessing
    if recipe is None and getattr(data, "preprocessing", None) is not None:
        recipe = data.preprocessing.describe()
    classes = []
    for i in range(num):
        classes.append(_diagnose_class(model, data, layer, i, names, confusion, profiles, cache, s, recipe))
    return Diagnosis(
        layer=layer,
        classes=classes,
        accuracy=float((labels == predicted).mean()),
        confusion=confusion,
        preprocessing=recipe,
        route=cache.sliced.route,
        settings=s,
    )


def _diagnose_class(
    model: nn.Module,
    data: object,
    layer: str,
    i: int,
    names: list[str],
    confusion: np.ndarray,
    profiles: ClassProfiles,
    cache: object,
    s: DiagnosisSettings,
    recipe: str | None,
) -> ClassDiagnosis:
    count = int(confusion[i].sum())
    pred = int(confusion[:, i].sum())
    tp = int(confusion[i, i])
    recall = tp / count if count else float("nan")
    precision = tp / pred if pred else float("nan")
    order = profiles.order(i)
    top_pos = [int(u) for u in order[: s.top_units]]
    top_neg = [int(u) for u in order.flip(0)[: s.top_units]]
    confused = [
        (names[j], int(confusion[i, j]))
        for j in np.argsort(-confusion[i], kind="stable")
        if j != i and confusion[i, j] > 0
    ]
    base = dict(
        cls=i,
        name=names[i],
        count=count,
        recall=recall,
        precision=precision,
        predicted_count=pred,
        confused_with=confused,
        top_positive=top_pos,
        top_negative=top_neg,
    )
    if count == 0:
        return ClassDiagnosis(
            **base,
            diagnosis=OK,
            expert=None,
            drowned_by=[],
            advice="no instances in the data: cannot be judged here",
        )
    if pred >= s.rare_share * count:
        return ClassDiagnosis(**base, diagnosis=OK, expert=None, drowned_by=[], advice="")
    sweep_args = dict(
        profiles=profiles, alphas=s.alphas, betas=s.betas, granularity=s.granularity, cache=cache
    )
    sweep = expert_sweep(model, data, layer, i, rank_by="influence", **sweep_args)
    control = expert_sweep(model, data, layer, i, rank_by="activation", **sweep_args)
    expert = sweep.best(s.criterion)
    how = "never predicted" if pred == 0 else f"rarely predicted ({pred} predictions for {count} instances)"
    if expert is None:
        where = f" (recipe: {recipe})" if recipe else ""
        return ClassDiagnosis(
            **base,
            diagnosis=NOT_LEARNED,
            expert=None,
            drowned_by=[],
            sweep=sweep,
            control=control,
            advice=f"{how}; no expert found: not learned — look at the data and preprocessing{where}",
        )
    drowned = _drowned_by(i, expert, confused, names, profiles)
    culprits = ", ".join(drowned or [c for c, _ in confused]) or "other classes"
    return ClassDiagnosis(
        **base,
        diagnosis=DROWNING,
        expert=expert,
        drowned_by=drowned,
        sweep=sweep,
        control=control,
        advice=(
            f"{how}; an expert exists (α={expert['alpha']}, β={expert['beta']}: recall {expert['recall']:.2f} "
            f"at precision {expert['precision']:.2f}, the model's recall {recall:.2f}) but is drowned by the "
            f"units of {culprits}: rebalance the training data or reweight the loss for {names[i]}"
        ),
    )


def _drowned_by(
    i: int, expert: dict, confused: list[tuple[str, int]], names: list[str], profiles: ClassProfiles
) -> list[str]:
    """Classes its instances are predicted as whose top positive units overlap the expert's positive units."""
    mine = set(expert["positive_units"])
    alpha = max(1, expert["alpha"])
    out = []
    for name, _ in confused:
        j = names.index(name)
        theirs = {int(u) for u in profiles.order(j)[:alpha]}
        if mine & theirs:
            out.append(name)
    return out
