"""Model comparison: an old and a retrained model on the same images (the recipe's step 6).

Three views, in order:

1. **Behaviour** — per-class recall, precision and confusion of each model, and the instances whose prediction
   changed: *fixed* (wrong in A, right in B), *broken* (right in A, wrong in B), and *changed* (wrong in both,
   differently).
2. **Unit matching** — two separately trained networks number their units arbitrarily: unit 7 of A has no
   reason to be unit 7 of B. Units are matched first, by the Pearson correlation of their activations on the same
   images (a conv channel's activation: its mean over positions), then an optimal one-to-one assignment
   (``scipy.optimize.linear_sum_assignment``) maximising the total correlation. The default maximises the
   *signed* correlation: a ReLU network is unchanged by permuting its units but not by flipping a unit's sign
   (the ReLU above cuts one side off), so an anti-correlated unit is a different feature, not the same one
   mirrored. ``match="abs"`` maximises |corr| instead, for slices where the sign is a symmetry (a purely linear
   block). Match quality: the mean matched correlation and the share of pairs above a threshold (0.5 by
   default: at r = 0.5 a unit explains a quarter of its partner's variance across images).
3. **Profile drift** — only after matching: per class, A's profile against B's, unit for matched unit:
   L2 distance, cosine similarity, Spearman rank correlation, and the overlap of the top-k units.

Slices of different widths are refused unless ``allow_partial``: a rectangular assignment then matches every
unit of the narrower slice to a distinct unit of the wider one, and the wider slice's unmatched units are
listed (their influence takes no part in the drift).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.stats import spearmanr
from torch import nn

from essence.core.data import ImageData, as_batches, labels_of
from essence.core.devices import resolve_device
from essence.core.errors import Cancelled, LabelMismatchError, LayerNotFoundError, SpecError
from essence.core.influence import CancelFlag, _cancelled, on_device
from essence.core.profiles import ClassProfiles, class_profiles
from essence.core.quantities import Kind
from essence.core.slices import Granularity, inference_state, resolve_layer

MatchMode = Literal["signed", "abs"]


@dataclass(frozen=True)
class Matching:
    """A one-to-one matching of A's units to B's at the compared slices.

    Attributes:
        pairs_a: int64 ``[M]`` unit indices of A; pairs_b: int64 ``[M]`` their partners in B.
        corr: float32 ``[M]`` Pearson correlation of each pair's activations over the images.
        correlation: float32 ``[Ua, Ub]`` every pair's correlation (0 where a unit never varies).
        mode: ``"signed"`` (maximise Σ corr) or ``"abs"`` (maximise Σ |corr|).
        threshold: the correlation a pair must reach to count as a good match.
        mean_corr: mean of ``corr``; share_above: share of pairs with ``corr`` (|corr| in abs mode) ≥ threshold.
        units_a, units_b: the slices' widths; unmatched_a, unmatched_b: units left out (partial matching).
        constant_a, constant_b: units whose activation never varied over the images (no correlation defined).
    """

    pairs_a: torch.Tensor
    pairs_b: torch.Tensor
    corr: torch.Tensor
    correlation: torch.Tensor = field(repr=False)
    mode: MatchMode = "signed"
    threshold: float = 0.5
    mean_corr: float = float("nan")
    share_above: float = float("nan")
    units_a: int = 0
    units_b: int = 0
    unmatched_a: list[int] = field(default_factory=list)
    unmatched_b: list[int] = field(default_factory=list)
    constant_a: list[int] = field(default_factory=list)
    constant_b: list[int] = field(default_factory=list)

    def partner_of(self, unit_a: int) -> int | None:
        """B's unit matched to A's ``unit_a`` (``None`` if unmatched)."""
        hit = (self.pairs_a == unit_a).nonzero()
        return int(self.pairs_b[hit[0, 0]]) if hit.numel() else None

    def to_json(self) -> dict[str, Any]:
        return {
            "method": f"linear_sum_assignment on -{'|corr|' if self.mode == 'abs' else 'corr'}",
            "mode": self.mode,
            "threshold": self.threshold,
            "mean_corr": self.mean_corr,
            "share_above": self.share_above,
            "units_a": self.units_a,
            "units_b": self.units_b,
            "pairs": [
                {"a": int(a), "b": int(b), "corr": float(c)}
                for a, b, c in zip(self.pairs_a, self.pairs_b, self.corr, strict=True)
            ],
            "unmatched_a": self.unmatched_a,
            "unmatched_b": self.unmatched_b,
            "constant_a": self.constant_a,
            "constant_b": self.constant_b,
        }


@dataclass(frozen=True)
class ClassDelta:
    """One class, model A against model B.

    ``recall`` is NaN for a class without instances, ``precision`` NaN for a class a model never predicts.
    ``drift`` compares the class's profiles over matched units: ``l2``, ``cosine``, ``spearman``,
    ``top_overlap`` (share of A's top-k units whose partner is among B's top-k), ``k``.
    ``diagnosis_a``/``diagnosis_b`` ("ok", "drowning experts", "not learned") and ``expert_a``/``expert_b``
    (whether an expert was found) come from each side's diagnosis, ``None`` when it was not run.
    """

    name: str
    support: int
    recall_a: float
    recall_b: float
    precision_a: float
    precision_b: float
    predicted_a: int
    predicted_b: int
    drift: dict[str, float] = field(default_factory=dict)
    diagnosis_a: str | None = None
    diagnosis_b: str | None = None
    expert_a: bool | None = None
    expert_b: bool | None = None

    def to_json(self) -> dict[str, Any]:
        def delta(b: float, a: float) -> float | None:
            return None if not (np.isfinite(a) and np.isfinite(b)) else b - a

        return {
            "name": self.name,
            "support": self.support,
            "recall_a": self.recall_a,
            "recall_b": self.recall_b,
            "recall_delta": delta(self.recall_b, self.recall_a),
            "precision_a": self.precision_a,
            "precision_b": self.precision_b,
            "precision_delta": delta(self.precision_b, self.precision_a),
            "predicted_a": self.predicted_a,
            "predicted_b": self.predicted_b,
            "drift": dict(self.drift),
            "diagnosis_a": self.diagnosis_a,
            "diagnosis_b": self.diagnosis_b,
            "expert_a": self.expert_a,
            "expert_b": self.expert_b,
        }


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
        matching: the unit :class:`Matching`.
        profiles_a, profiles_b: the class profiles compared.
        diagnosis_a, diagnosis_b: each side's drowning-expert diagnosis, when it could be computed.
        diagnosis_note: why a diagnosis is missing (empty when both are there).
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
    confusion_a: torch.Tensor = field(default=None, repr=False)  # type: ignore[assignment]
    confusion_b: torch.Tensor = field(default=None, repr=False)  # type: ignore[assignment]
    classes: list[ClassDelta] = field(default_factory=list)
    fixed: torch.Tensor = field(default=None, repr=False)  # type: ignore[assignment]
    broken: torch.Tensor = field(default=None, repr=False)  # type: ignore[assignment]
    changed: torch.Tensor = field(default=None, repr=False)  # type: ignore[assignment]
    matching: Matching | None = field(default=None, repr=False)
    profiles_a: ClassProfiles | None = field(default=None, repr=False)
    profiles_b: ClassProfiles | None = field(default=None, repr=False)
    diagnosis_a: Any = field(default=None, repr=False)
    diagnosis_b: Any = field(default=None, repr=False)
    diagnosis_note: str = ""

    def class_delta(self, cls: int | str) -> ClassDelta:
        from essence.core.data import class_index

        return self.classes[class_index(cls, self.class_names)]

    def to_json(self) -> dict[str, Any]:
        """The stable JSON layout of ``essence compare --json`` (DESIGN §4)."""
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
            "diagnosis_a": _diagnosis_json(self.diagnosis_a),
            "diagnosis_b": _diagnosis_json(self.diagnosis_b),
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
        match: ``signed`` or ``abs`` correlation to maximise (see the module docstring).
        threshold: correlation counting as a good match.
        allow_partial: match slices of different widths (rectangular assignment) instead of refusing.
        top_k: k of the top-unit overlap.
        diagnose: also run the drowning-expert diagnosis on each side (when available).
        batch_size, device, cancel: as elsewhere.

    Returns:
        A :class:`Comparison`.

    Raises:
        LabelMismatchError: ``data_b`` is not the same images and labels, or the models' outputs differ.
        SpecError: slices of different widths (without ``allow_partial``), bad settings.
        LayerNotFoundError: unknown layers.
    """
    layer_b = layer_a if layer_b is None else layer_b
    if match not in ("signed", "abs"):
        raise SpecError(f"match must be 'signed' or 'abs', got {match!r}")
    if not -1 <= threshold <= 1:
        raise SpecError(f"threshold is a correlation in [-1, 1], got {threshold}")
    resolve_layer(model_a, layer_a)
    resolve_layer(model_b, layer_b)
    data_b = data if data_b is None else data_b
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
    dev = resolve_device(device)
    preds_a, preds_b, moments = _joint_pass(
        model_a, model_b, data, data_b, layer_a, layer_b, granularity, batch_size, dev, cancel
    )
    k = _num_classes(moments, class_names, data)
    names_k = list(class_names or getattr(data, "class_names", None) or [str(i) for i in range(k)])
    matching = match_units(
        moments, mode=match, threshold=threshold, allow_partial=allow_partial, layers=(layer_a, layer_b)
    )
    common = dict(
        granularity=granularity,
        kind=kind,
        class_names=names_k,
        allow_empty=True,
        batch_size=batch_size,
        device=dev,
        cancel=cancel,
    )
    prof_a = class_profiles(model_a, data, layer_a, **common)  # type: ignore[arg-type]
    prof_b = class_profiles(model_b, data_b, layer_b, **common)  # type: ignore[arg-type]
    y = torch.as_tensor(np.array(labels))
    conf_a, conf_b = _confusion(y, preds_a, k), _confusion(y, preds_b, k)
    classes = [
        _class_delta(c, names_k[c], conf_a, conf_b, prof_a.mean[c], prof_b.mean[c], matching, top_k)
        for c in range(k)
    ]
    right_a, right_b = preds_a == y, preds_b == y
    diag_a = diag_b = None
    note = "not asked for"
    if diagnose:
        diag_a, diag_b, note = _diagnoses(
            model_a, model_b, data, data_b, layer_a, layer_b, (prof_a, prof_b), batch_size, dev
        )
        classes = [_with_diagnosis(d, c, diag_a, diag_b) for c, d in enumerate(classes)]
    return Comparison(
        a=names[0],
        b=names[1],
        layer_a=layer_a,
        layer_b=layer_b,
        class_names=names_k,
        labels=y,
        predictions_a=preds_a,
        predictions_b=preds_b,
        accuracy_a=float(right_a.double().mean()),
        accuracy_b=float(right_b.double().mean()),
        confusion_a=conf_a,
        confusion_b=conf_b,
        classes=classes,
        fixed=torch.nonzero(~right_a & right_b).view(-1),
        broken=torch.nonzero(right_a & ~right_b).view(-1),
        changed=torch.nonzero(~right_a & ~right_b & (preds_a != preds_b)).view(-1),
        matching=matching,
        profiles_a=prof_a,
        profiles_b=prof_b,
        diagnosis_a=diag_a,
        diagnosis_b=diag_b,
        diagnosis_note=note,
    )


@dataclass
class _Moments:
    """Streamed first and second moments of two slices' activations over the same images (float64)."""

    n: int = 0
    sa: torch.Tensor | None = None
    sb: torch.Tensor | None = None
    saa: torch.Tensor | None = None
    sbb: torch.Tensor | None = None
    sab: torch.Tensor | None = None
    outputs: int = 0

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        a, b = a.double(), b.double()
        if self.sa is None:
            self.sa, self.sb = (
                torch.zeros(a.shape[1], dtype=torch.float64),
                torch.zeros(b.shape[1], dtype=torch.float64),
            )
            self.saa, self.sbb = torch.zeros_like(self.sa), torch.zeros_like(self.sb)
            self.sab = torch.zeros(a.shape[1], b.shape[1], dtype=torch.float64)
        self.n += a.shape[0]
        self.sa += a.sum(0)
        self.sb += b.sum(0)
        self.saa += (a * a).sum(0)
        self.sbb += (b * b).sum(0)
        self.sab += a.T @ b

    def correlation(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(corr [Ua, Ub], constant_a [Ua] bool, constant_b [Ub] bool)``; 0 where a unit never varies."""
        n = max(self.n, 1)
        ma, mb = self.sa / n, self.sb / n
        va = (self.saa / n - ma * ma).clamp(min=0)
        vb = (self.sbb / n - mb * mb).clamp(min=0)
        cov = self.sab / n - ma[:, None] * mb[None, :]
        # a unit whose variance is at rounding level of its mean square never varies: no correlation is defined
        const_a = va <= 1e-10 * (self.saa / n).clamp(min=1e-30)
        const_b = vb <= 1e-10 * (self.sbb / n).clamp(min=1e-30)
        denom = torch.sqrt(va[:, None] * vb[None, :])
        corr = torch.where(denom > 0, cov / denom.clamp(min=1e-300), torch.zeros_like(cov)).clamp(-1, 1)
        corr[const_a] = 0
        corr[:, const_b] = 0
        return corr, const_a, const_b


def _reduce_activation(z: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    if z.ndim > 2 and granularity == "channel":
        return z.reshape(z.shape[0], z.shape[1], -1).mean(-1)
    return z.reshape(z.shape[0], -1)


def _joint_pass(
    model_a: nn.Module,
    model_b: nn.Module,
    data: object,
    data_b: object,
    layer_a: str,
    layer_b: str,
    granularity: Granularity,
    batch_size: int,
    dev: torch.device,
    cancel: CancelFlag,
) -> tuple[torch.Tensor, torch.Tensor, _Moments]:
    """One forward of each model per batch: predictions and the cross-moments of the two slices."""
    batches_a, _ = as_batches(data, batch_size)
    batches_b, _ = as_batches(data_b, batch_size)
    seen: dict[str, torch.Tensor] = {}
    moments = _Moments()
    preds_a, preds_b = [], []

    def keep(key: str):  # noqa: ANN202 - a forward hook
        def hook(_m: nn.Module, _i: tuple, out: torch.Tensor) -> None:
            seen[key] = _reduce_activation(out.detach().float(), granularity).cpu()

        return hook

    mod_a, mod_b = resolve_layer(model_a, layer_a), resolve_layer(model_b, layer_b)
    if mod_a is None or mod_b is None:
        raise LayerNotFoundError(
            "units of the input are pixels, the same in both models: compare at a layer above it"
        )
    with inference_state(model_a), inference_state(model_b), on_device(model_a, dev), on_device(model_b, dev):
        handles = [mod_a.register_forward_hook(keep("a")), mod_b.register_forward_hook(keep("b"))]
        try:
            with torch.no_grad():
                for (xa, _ya, ia), (xb, _yb, ib) in zip(batches_a, batches_b, strict=True):
                    if _cancelled(cancel):
                        raise Cancelled("cancelled by the user; nothing was kept")
                    if not torch.equal(ia, ib):
                        raise LabelMismatchError(
                            "the data for A and B yield their images in a different order"
                        )
                    seen.clear()
                    out_a, out_b = model_a(xa.to(dev)), model_b(xb.to(dev))
                    if out_a.shape != out_b.shape:
                        raise LabelMismatchError(
                            f"A has {out_a.shape[1]} outputs and B {out_b.shape[1]}: compare models of the same classes"
                        )
                    if "a" not in seen or "b" not in seen:
                        raise LayerNotFoundError(
                            f"slice {layer_a if 'a' not in seen else layer_b!r} was not reached in the forward pass"
                        )
                    moments.add(seen["a"], seen["b"])
                    moments.outputs = int(out_a.shape[1])
                    preds_a.append(out_a.argmax(1).cpu())
                    preds_b.append(out_b.argmax(1).cpu())
        finally:
            for h in handles:
                h.remove()
    return torch.cat(preds_a), torch.cat(preds_b), moments


def match_units(
    moments: _Moments,
    *,
    mode: MatchMode = "signed",
    threshold: float = 0.5,
    allow_partial: bool = False,
    layers: tuple[str, str] = ("A", "B"),
) -> Matching:
    """Optimal one-to-one matching of A's units to B's by activation correlation (see the module docstring).

    Raises:
        SpecError: the slices' widths differ and ``allow_partial`` is off.
    """
    corr, const_a, const_b = moments.correlation()
    ua, ub = corr.shape
    if ua != ub and not allow_partial:
        raise SpecError(
            f"the slices have different widths: A's {layers[0]!r} has {ua} units, B's {layers[1]!r} has {ub}; "
            "compare layers of the same width (--layer / --layer-b), or allow a partial matching (--partial)"
        )
    score = corr.abs() if mode == "abs" else corr
    rows, cols = linear_sum_assignment(-score.numpy())
    rows_t, cols_t = torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)
    matched = corr[rows_t, cols_t]
    quality = matched.abs() if mode == "abs" else matched
    return Matching(
        pairs_a=rows_t,
        pairs_b=cols_t,
        corr=matched.float(),
        correlation=corr.float(),
        mode=mode,
        threshold=threshold,
        mean_corr=float(matched.mean()) if matched.numel() else float("nan"),
        share_above=float((quality >= threshold).double().mean()) if matched.numel() else float("nan"),
        units_a=ua,
        units_b=ub,
        unmatched_a=sorted(set(range(ua)) - set(rows.tolist())),
        unmatched_b=sorted(set(range(ub)) - set(cols.tolist())),
        constant_a=torch.nonzero(const_a).view(-1).tolist(),
        constant_b=torch.nonzero(const_b).view(-1).tolist(),
    )


def profile_drift(pa: torch.Tensor, pb: torch.Tensor, matching: Matching, top_k: int = 5) -> dict[str, float]:
    """Drift of one class's profile from A ``[Ua]`` to B ``[Ub]`` over matched units (NaN if undefined)."""
    a = pa[matching.pairs_a].double()
    b = pb[matching.pairs_b].double()
    if a.numel() == 0 or not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return {
            "l2": float("nan"),
            "cosine": float("nan"),
            "spearman": float("nan"),
            "top_overlap": float("nan"),
            "k": 0,
        }
    na, nb = float(a.norm()), float(b.norm())
    cosine = min(1.0, max(-1.0, float(a @ b) / (na * nb))) if na > 0 and nb > 0 else float("nan")
    spearman = float(spearmanr(a.numpy(), b.numpy()).statistic) if a.numel() > 1 else float("nan")
    k = min(top_k, a.numel())
    top_a = set(torch.argsort(a, descending=True)[:k].tolist())
    top_b = set(torch.argsort(b, descending=True)[:k].tolist())
    return {
        "l2": float((a - b).norm()),
        "cosine": cosine,
        "spearman": spearman,
        "top_overlap": len(top_a & top_b) / k,
        "k": k,
    }


def _confusion(y: torch.Tensor, pred: torch.Tensor, k: int) -> torch.Tensor:
    return torch.bincount(y * k + pred, minlength=k * k).reshape(k, k)


def _num_classes(moments: _Moments, class_names: Sequence[str] | None, data: object) -> int:
    k = moments.outputs
    names = class_names or getattr(data, "class_names", None)
    if names is not None and len(names) != k:
        raise LabelMismatchError(
            f"the models have {k} outputs but there are {len(names)} class names: use data labelled with the "
            "models' classes"
        )
    return k


def _class_delta(
    c: int,
    name: str,
    conf_a: torch.Tensor,
    conf_b: torch.Tensor,
    pa: torch.Tensor,
    pb: torch.Tensor,
    matching: Matching,
    top_k: int,
) -> ClassDelta:
    def rates(conf: torch.Tensor) -> tuple[float, float, int]:
        tp, support, predicted = int(conf[c, c]), int(conf[c].sum()), int(conf[:, c].sum())
        recall = tp / support if support else float("nan")
        precision = tp / predicted if predicted else float("nan")
        return recall, precision, predicted

    ra, pra, na = rates(conf_a)
    rb, prb, nb = rates(conf_b)
    return ClassDelta(
        name=name,
        support=int(conf_a[c].sum()),
        recall_a=ra,
        recall_b=rb,
        precision_a=pra,
        precision_b=prb,
        predicted_a=na,
        predicted_b=nb,
        drift=profile_drift(pa, pb, matching, top_k),
    )


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
) -> tuple[Any, Any, str]:
    """Each side's drowning-expert diagnosis, or ``None`` and why not.

    The profiles already computed are handed over when they are the ones the diagnosis would compute (same
    quantity and granularity), so each side's profile pass is not repeated.
    """
    try:
        from essence.core.diagnosis import DiagnosisSettings, diagnose
    except ImportError:
        return None, None, "the drowning-expert diagnosis is not available in this installation"
    import inspect

    accepted = inspect.signature(diagnose).parameters
    settings = DiagnosisSettings()
    out = []
    for model, d, layer, prof in (
        (model_a, data, layer_a, profiles[0]),
        (model_b, data_b, layer_b, profiles[1]),
    ):
        reuse = prof.quantity == f"{settings.kind}[label]" and prof.granularity == settings.granularity
        extra = {"batch_size": batch_size, "device": dev, "profiles": prof if reuse else None}
        out.append(diagnose(model, d, layer, **{k: v for k, v in extra.items() if k in accepted}))
    return out[0], out[1], ""


def _with_diagnosis(delta: ClassDelta, c: int, diag_a: Any, diag_b: Any) -> ClassDelta:
    """Add each side's verdict for class ``c`` and whether it has an expert (experts appearing or vanishing)."""

    def verdict(d: Any) -> tuple[str | None, bool | None]:
        classes = getattr(d, "classes", None)
        if not classes or c >= len(classes):
            return None, None
        return getattr(classes[c], "diagnosis", None), getattr(classes[c], "expert", None) is not None

    (va, ea), (vb, eb) = verdict(diag_a), verdict(diag_b)
    return replace(delta, diagnosis_a=va, diagnosis_b=vb, expert_a=ea, expert_b=eb)


def _diagnosis_json(d: Any) -> Any:
    if d is None:
        return None
    if hasattr(d, "to_json"):
        return d.to_json()
    return str(d)
