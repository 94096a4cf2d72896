"""Model comparison: an old and a retrained model on the same images (the recipe's step 6).

Three views, in order:

1. **Behaviour** — per-class recall, precision and confusion of each model, and the instances whose prediction
   changed: *fixed* (wrong in A, right in B), *broken* (right in A, wrong in B), and *changed* (wrong in both,
   differently).
2. **Unit matching** — A's units matched one-to-one to B's by the correlation of their activations on the same
   images (:func:`~essence.core.analyses.matching.match_units`).
3. **Profile drift** — only after matching: per class, A's profile against B's, unit for matched unit
   (:func:`~essence.core.analyses.matching.profile_drift`).

Each side's drowning-expert diagnosis (:func:`~essence.core.analyses.diagnosis.verdict.diagnose`) is added on request, so that
experts appearing or vanishing between the models are seen. What changed for one class is a
:class:`~essence.core.analyses.class_deltas.ClassDelta` (:mod:`essence.core.analyses.class_deltas`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from essence.core.analyses.class_deltas import ClassDelta, delta_of_class, with_diagnosis
from essence.core.analyses.diagnosis.verdict import Diagnosis, DiagnosisSettings
from essence.core.analyses.diagnosis.verdict import (
    diagnose as diagnose_model,  # compare_models's flag is named diagnose
)
from essence.core.analyses.matching import (
    ActivationMoments,
    Matching,
    MatchMode,
    joint_pass,
    match_units,
)
from essence.core.analyses.profiles import ClassProfiles, class_profiles
from essence.core.base.devices import resolve_device
from essence.core.base.errors import LabelMismatchError, SpecError
from essence.core.base.model_state import CancelFlag
from essence.core.engine.activation_source import ActivationSource
from essence.core.engine.quantities import Kind
from essence.core.engine.slices import Granularity, resolve_layer
from essence.core.inputs.cards import output_names
from essence.core.inputs.data import ImageData, labels_of
from essence.core.inputs.labels import class_index


def _no_counts(*shape: int) -> torch.Tensor:
    """An empty int64 tensor: what a comparison built by hand holds until its counts are given."""
    return torch.zeros(shape, dtype=torch.int64)


@dataclass(frozen=True)
class Comparison:
    """Model A (old) against model B (retrained) on the same N images with K classes.

    Attributes:
        a, b: the models' names; layer_a, layer_b: the compared slices.
        class_names: K names.
        labels: int64 ``[N]``; predictions_a, predictions_b: int64 ``[N]``.
        accuracy_a, accuracy_b: overall accuracy.
        confusion_a, confusion_b: int64 ``[K, K]`` (row: true class, column: predicted).
        classes: a :class:`ClassDelta` per class.
        fixed: int64 dataset indices wrong in A and right in B; broken: right in A, wrong in B;
        changed: wrong in both, with a different prediction.
        matching: the unit :class:`~essence.core.analyses.matching.Matching`.
        profiles_a, profiles_b: the class profiles compared.
        diagnosis_a, diagnosis_b: each side's drowning-expert diagnosis, when it was asked for.
        diagnosis_note: why a diagnosis is missing (empty when both are there).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from essence.core import Comparison, compare_models
        >>> _ = torch.manual_seed(0)
        >>> a, b = (nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval() for _ in "ab")
        >>> x, y = torch.randn(60, 4), torch.arange(60) % 3
        >>> c = compare_models(a, b, (x, y), "1", diagnose=False, device="cpu")
        >>> isinstance(c, Comparison), c.confusion_a.shape, c.class_names
        (True, torch.Size([3, 3]), ['0', '1', '2'])
        >>> delta = c.class_delta("0")  # one class, A against B
        >>> delta.support, delta.drift.k
        (20, 5)
    """

    a: str
    b: str
    layer_a: str
    layer_b: str
    class_names: list[str]
    labels: torch.Tensor = field(repr=False)
    predictions_a: torch.Tensor = field(repr=False)
    predictions_b: torch.Tensor = field(repr=False)
    accuracy_a: float = float("nan")
    accuracy_b: float = float("nan")
    confusion_a: torch.Tensor = field(default_factory=lambda: _no_counts(0, 0), repr=False)
    confusion_b: torch.Tensor = field(default_factory=lambda: _no_counts(0, 0), repr=False)
    classes: list[ClassDelta] = field(default_factory=list)
    fixed: torch.Tensor = field(default_factory=lambda: _no_counts(0), repr=False)
    broken: torch.Tensor = field(default_factory=lambda: _no_counts(0), repr=False)
    changed: torch.Tensor = field(default_factory=lambda: _no_counts(0), repr=False)
    matching: Matching | None = field(default=None, repr=False)
    profiles_a: ClassProfiles | None = field(default=None, repr=False)
    profiles_b: ClassProfiles | None = field(default=None, repr=False)
    diagnosis_a: Diagnosis | None = field(default=None, repr=False)
    diagnosis_b: Diagnosis | None = field(default=None, repr=False)
    diagnosis_note: str = ""

    def class_delta(self, cls: int | str) -> ClassDelta:
        """The :class:`ClassDelta` of a class given by index or name."""
        return self.classes[class_index(cls, self.class_names)]

    def to_json(self) -> dict[str, Any]:
        """The stable JSON layout of the comparison (DESIGN §4; what ``essence compare --json`` writes)."""
        return {
            "a": self.a,
            "b": self.b,
            "layer_a": self.layer_a,
            "layer_b": self.layer_b,
            "accuracy_a": self.accuracy_a,
            "accuracy_b": self.accuracy_b,
            "classes": [c.to_json() for c in self.classes],
            "confusion_a": self.confusion_a.tolist(),
            "confusion_b": self.confusion_b.tolist(),
            "changed": {
                "fixed": self.fixed.tolist(),
                "broken": self.broken.tolist(),
                "changed_wrong": self.changed.tolist(),
            },
            "matching": self.matching.to_json() if self.matching is not None else None,
            "diagnosis_a": None if self.diagnosis_a is None else self.diagnosis_a.to_json(),
            "diagnosis_b": None if self.diagnosis_b is None else self.diagnosis_b.to_json(),
            "diagnosis_note": self.diagnosis_note,
        }


def compare_models(
    model_a: nn.Module,
    model_b: nn.Module,
    data: ImageData | tuple[torch.Tensor, torch.Tensor],
    layer_a: str,
    layer_b: str | None = None,
    *,
    data_b: ImageData | tuple[torch.Tensor, torch.Tensor] | None = None,
    names: tuple[str, str] = ("A", "B"),
    class_names: Sequence[str] | None = None,
    granularity: Granularity = "channel",
    kind: Kind = "logit",
    match: MatchMode = "signed",
    threshold: float = 0.5,
    allow_partial: bool = False,
    top_k: int = 5,
    diagnose: bool = True,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    cancel: CancelFlag = None,
    activations: ActivationSource | None = None,
    diagnoses: tuple[Diagnosis | None, Diagnosis | None] = (None, None),
) -> Comparison:
    """Compare model A (old) with model B (retrained) on the same images.

    Args:
        model_a, model_b: the two classifiers (each run in eval mode, frozen; restored after).
        data: the images as A takes them (an :class:`ImageData` or ``(x, labels)`` tensors).
        layer_a: A's slice; layer_b: B's slice (default: the same module path).
        data_b: the same images as B takes them, when B's preprocessing differs (same order and labels).
        names: display names of A and B.
        class_names: the K class names (default: the data's).
        granularity: ``channel`` (conv: activations averaged, gradients summed over positions) or ``neuron``.
        kind: class score of the profiles (``logit`` or ``prob``).
        match: ``signed`` or ``abs`` correlation to maximise (see :mod:`essence.core.analyses.matching`).
        threshold: correlation counting as a good match.
        allow_partial: match slices of different widths (rectangular assignment) instead of refusing.
        top_k: k of the top-unit overlap.
        diagnose: also run the drowning-expert diagnosis on each side.
        batch_size, device, cancel: as elsewhere.
        activations: where z may be stored (:class:`~essence.core.engine.activation_source.ActivationSource`),
            asked for each side; a source serves only the model and data it is of (the store's: one side).
        diagnoses: each side's diagnosis where the caller holds it already (:func:`diagnose` of that model on
            these images at its slice, default settings); ``None`` for a side computes it (with ``diagnose``).

    Returns:
        A :class:`Comparison`.

    Raises:
        LabelMismatchError: ``data_b`` is not the same images and labels, or the models' outputs differ.
        SpecError: slices of different widths (without ``allow_partial``), bad settings, a diagnosis given of
            another slice or of another number of classes or images.
        LayerNotFoundError: unknown layers.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from essence.core import compare_models
        >>> _ = torch.manual_seed(0)
        >>> old = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
        >>> new = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
        >>> x, y = torch.randn(60, 4), torch.arange(60) % 3
        >>> c = compare_models(old, new, (x, y), "1", names=("old", "new"), diagnose=False, device="cpu")
        >>> c.a, c.b, c.matching.units_a, len(c.matching.pairs_a)
        ('old', 'new', 8, 8)
        >>> sorted(c.to_json()["changed"])  # dataset indices fixed, broken and changed by the retraining
        ['broken', 'changed_wrong', 'fixed']
    """
    layer_b = layer_a if layer_b is None else layer_b
    data_b = data if data_b is None else data_b
    labels = _same_question(model_a, model_b, data, data_b, layer_a, layer_b, match, threshold)
    dev = resolve_device(device)
    preds_a, preds_b, moments = joint_pass(
        model_a, model_b, data, data_b, layer_a, layer_b, granularity, batch_size, dev, cancel
    )
    k = _num_classes(moments, class_names, data)
    names_k = output_names(class_names, data) or [str(i) for i in range(k)]
    matching = match_units(
        moments, mode=match, threshold=threshold, allow_partial=allow_partial, layers=(layer_a, layer_b)
    )
    prof_a = _profiles(
        model_a, data, layer_a, names_k, granularity, kind, batch_size, dev, cancel, activations
    )
    prof_b = _profiles(
        model_b, data_b, layer_b, names_k, granularity, kind, batch_size, dev, cancel, activations
    )
    out = _behaviour(names, (layer_a, layer_b), names_k, torch.as_tensor(np.array(labels)), preds_a, preds_b)
    classes = [
        delta_of_class(
            c, names_k[c], out.confusion_a, out.confusion_b, prof_a.mean[c], prof_b.mean[c], matching, top_k
        )
        for c in range(k)
    ]
    out = replace(out, classes=classes, matching=matching, profiles_a=prof_a, profiles_b=prof_b)
    if not diagnose:
        return out
    diag_a, diag_b = _diagnoses(
        model_a,
        model_b,
        data,
        data_b,
        layer_a,
        layer_b,
        (prof_a, prof_b),
        batch_size,
        dev,
        activations,
        _held(diagnoses, (layer_a, layer_b), names_k, len(labels)),
    )
    return replace(
        out,
        classes=[with_diagnosis(d, c, diag_a, diag_b) for c, d in enumerate(classes)],
        diagnosis_a=diag_a,
        diagnosis_b=diag_b,
        diagnosis_note="",
    )


def _same_question(
    model_a: nn.Module,
    model_b: nn.Module,
    data: object,
    data_b: object,
    layer_a: str,
    layer_b: str,
    match: MatchMode,
    threshold: float,
) -> np.ndarray:
    """Check the settings, the two slices and that both sides see the same images; returns the labels ``[N]``."""
    if match not in ("signed", "abs"):
        raise SpecError(f"match must be 'signed' or 'abs', got {match!r}")
    if not -1 <= threshold <= 1:
        raise SpecError(f"threshold is a correlation in [-1, 1], got {threshold}")
    resolve_layer(model_a, layer_a)
    resolve_layer(model_b, layer_b)
    labels = labels_of(data)
    if not np.array_equal(labels, labels_of(data_b)):
        raise LabelMismatchError(
            "the data for B has other labels than the data for A: compare on the same images"
        )
    fa, fb = getattr(data, "fingerprint", None), getattr(data_b, "fingerprint", None)
    if fa is not None and fb is not None and fa != fb:
        raise LabelMismatchError(
            f"the data for A ({getattr(data, 'spec', '?')}) and B ({getattr(data_b, 'spec', '?')}) are different "
            "images: compare on the same images"
        )
    return labels


def _profiles(
    model: nn.Module,
    data: object,
    layer: str,
    class_names: list[str],
    granularity: Granularity,
    kind: Kind,
    batch_size: int,
    dev: torch.device,
    cancel: CancelFlag,
    activations: ActivationSource | None,
) -> ClassProfiles:
    """One side's class profiles; a class empty in the data keeps its (NaN) row, so both sides have K rows."""
    return class_profiles(
        model,
        data,
        layer,
        granularity=granularity,
        kind=kind,
        class_names=class_names,
        allow_empty=True,
        batch_size=batch_size,
        device=dev,
        cancel=cancel,
        activations=activations,
    )


def _behaviour(
    names: tuple[str, str],
    layers: tuple[str, str],
    class_names: list[str],
    y: torch.Tensor,
    preds_a: torch.Tensor,
    preds_b: torch.Tensor,
) -> Comparison:
    """The comparison's first view: accuracy, confusion and the instances whose prediction changed."""
    k = len(class_names)
    right_a, right_b = preds_a == y, preds_b == y
    return Comparison(
        a=names[0],
        b=names[1],
        layer_a=layers[0],
        layer_b=layers[1],
        class_names=class_names,
        labels=y,
        predictions_a=preds_a,
        predictions_b=preds_b,
        accuracy_a=float(right_a.double().mean()),
        accuracy_b=float(right_b.double().mean()),
        confusion_a=_confusion(y, preds_a, k),
        confusion_b=_confusion(y, preds_b, k),
        fixed=torch.nonzero(~right_a & right_b).view(-1),
        broken=torch.nonzero(right_a & ~right_b).view(-1),
        changed=torch.nonzero(~right_a & ~right_b & (preds_a != preds_b)).view(-1),
        diagnosis_note="not asked for",
    )


def _confusion(y: torch.Tensor, pred: torch.Tensor, k: int) -> torch.Tensor:
    return torch.bincount(y * k + pred, minlength=k * k).reshape(k, k)


def _num_classes(moments: ActivationMoments, class_names: Sequence[str] | None, data: object) -> int:
    k = moments.outputs
    names = class_names or getattr(data, "class_names", None)
    if names is not None and len(names) != k:
        raise LabelMismatchError(
            f"the models have {k} outputs but there are {len(names)} class names: use data labelled with the "
            "models' classes"
        )
    return k


def _diagnoses(
    model_a: nn.Module,
    model_b: nn.Module,
    data: object,
    data_b: object,
    layer_a: str,
    layer_b: str,
    profiles: tuple[ClassProfiles, ClassProfiles],
    batch_size: int,
    dev: torch.device,
    activations: ActivationSource | None,
    held: tuple[Diagnosis | None, Diagnosis | None],
) -> tuple[Diagnosis, Diagnosis]:
    """Each side's drowning-expert diagnosis: the one held, else computed.

    The profiles already computed are handed over when they are the ones the diagnosis would compute (same
    quantity and granularity), so each side's profile pass is not repeated.
    """
    settings = DiagnosisSettings()
    out = []
    for model, d, layer, prof, given in (
        (model_a, data, layer_a, profiles[0], held[0]),
        (model_b, data_b, layer_b, profiles[1], held[1]),
    ):
        if given is not None:
            out.append(given)
            continue
        reuse = prof.quantity == f"{settings.kind}[label]" and prof.granularity == settings.granularity
        out.append(
            diagnose_model(
                model,
                d,
                layer,
                settings=settings,
                profiles=prof if reuse else None,
                batch_size=batch_size,
                device=dev,
                activations=activations,
            )
        )
    return out[0], out[1]


def _held(
    diagnoses: tuple[Diagnosis | None, Diagnosis | None], layers: tuple[str, str], names: list[str], n: int
) -> tuple[Diagnosis | None, Diagnosis | None]:
    """The diagnoses a caller handed over, each checked to be of its side's slice, the K classes (named as the
    comparison names them) and the N images."""
    if len(diagnoses) != 2:
        raise SpecError(f"diagnoses: one per model (A, B), got {len(diagnoses)}")
    for side, d, layer in zip("AB", diagnoses, layers, strict=True):
        if d is None:
            continue
        if d.layer != layer or [c.name for c in d.classes] != names or int(d.confusion.sum()) != n:
            raise SpecError(
                f"diagnoses: {side}'s is of the slice {d.layer!r}, the classes {[c.name for c in d.classes]} and "
                f"{int(d.confusion.sum())} images, not of {layer!r}, {names} and {n} images: hand over the "
                "diagnosis of the same model, images and slice, or none (it is then computed)"
            )
    return diagnoses[0], diagnoses[1]
