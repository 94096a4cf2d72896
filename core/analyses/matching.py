"""Unit matching and profile drift between two models at their slices.

Two separately trained networks number their units arbitrarily: unit 7 of A has no reason to be unit 7 of B.
Units are matched first, by the Pearson correlation of their activations on the same images (a conv channel's
activation: its mean over positions), then an optimal one-to-one assignment
(``scipy.optimize.linear_sum_assignment``) maximising the total correlation. The default maximises the *signed*
correlation: a ReLU network is unchanged by permuting its units but not by flipping a unit's sign (the ReLU
above cuts one side off), so an anti-correlated unit is a different feature, not the same one mirrored.
``mode="abs"`` maximises |corr| instead, for slices where the sign is a symmetry (a purely linear block). Match
quality: the mean matched correlation and the share of pairs above a threshold (0.5 by default: at r = 0.5 a
unit explains a quarter of its partner's variance across images).

Slices of different widths are refused unless ``allow_partial``: a rectangular assignment then matches every
unit of the narrower slice to a distinct unit of the wider one, and the wider slice's unmatched units are
listed (their influence takes no part in the drift).

Only after matching can profiles be compared: :func:`profile_drift` puts a class's profile in A against its
profile in B, unit for matched unit.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from scipy.optimize import linear_sum_assignment
from scipy.stats import spearmanr
from torch import nn

from essence.core.base.errors import (
    Cancelled,
    EmptyClassError,
    LabelMismatchError,
    LayerNotFoundError,
    SpecError,
)
from essence.core.base.model_state import CancelFlag, cancelled, inference_state, on_device
from essence.core.engine.slices import Granularity, resolve_layer
from essence.core.inputs.data import as_batches

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
class ProfileDrift:
    """How far one class's profile moved from A to B, over matched units (NaN where undefined).

    Attributes:
        l2: Euclidean distance of the two profiles (A's units against their partners in B).
        cosine: cosine similarity of the two profiles, in [-1, 1].
        spearman: Spearman rank correlation of the two profiles.
        top_overlap: share of A's top-k units whose partner is among B's top-k.
        k: the k of ``top_overlap`` (0 when nothing could be compared).
    """

    l2: float = float("nan")
    cosine: float = float("nan")
    spearman: float = float("nan")
    top_overlap: float = float("nan")
    k: int = 0

    def to_json(self) -> dict[str, float | int]:
        return {
            "l2": self.l2,
            "cosine": self.cosine,
            "spearman": self.spearman,
            "top_overlap": self.top_overlap,
            "k": self.k,
        }


@dataclass
class ActivationMoments:
    """Streamed first and second moments of two slices' activations over the same images (float64).

    Attributes:
        n: images seen; outputs: the models' number of outputs (set by :func:`joint_pass`).
        sa, sb: ``[Ua]``, ``[Ub]`` sums of each unit's activation; saa, sbb: sums of their squares;
        sab: ``[Ua, Ub]`` sums of the cross products.
    """

    n: int = 0
    sa: torch.Tensor | None = None
    sb: torch.Tensor | None = None
    saa: torch.Tensor | None = None
    sbb: torch.Tensor | None = None
    sab: torch.Tensor | None = None
    outputs: int = 0

    def add(self, a: torch.Tensor, b: torch.Tensor) -> None:
        """Add a batch: A's activations ``[B, Ua]`` and B's ``[B, Ub]`` on the same B images."""
        a, b = a.double(), b.double()
        if self.sa is None:
            self.sa, self.sb = (
                torch.zeros(a.shape[1], dtype=torch.float64),
                torch.zeros(b.shape[1], dtype=torch.float64),
            )
            self.saa, self.sbb = torch.zeros_like(self.sa), torch.zeros_like(self.sb)
            self.sab = torch.zeros(a.shape[1], b.shape[1], dtype=torch.float64)
        sa, sb, saa, sbb, sab = self._sums()
        self.n += a.shape[0]
        # in place: the sums held by the moments grow
        sa += a.sum(0)
        sb += b.sum(0)
        saa += (a * a).sum(0)
        sbb += (b * b).sum(0)
        sab += a.T @ b

    def _sums(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(sa, sb, saa, sbb, sab)``, there once a batch has been added."""
        if self.sa is None or self.sb is None or self.saa is None or self.sbb is None or self.sab is None:
            raise EmptyClassError("no images were seen: the units' correlation needs at least one image")
        return self.sa, self.sb, self.saa, self.sbb, self.sab

    def correlation(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(corr [Ua, Ub], constant_a [Ua] bool, constant_b [Ub] bool)``; 0 where a unit never varies."""
        sa, sb, saa, sbb, sab = self._sums()
        n = max(self.n, 1)
        ma, mb = sa / n, sb / n
        va = (saa / n - ma * ma).clamp(min=0)
        vb = (sbb / n - mb * mb).clamp(min=0)
        cov = sab / n - ma[:, None] * mb[None, :]
        # a unit whose variance is at rounding level of its mean square never varies: no correlation is defined
        const_a = va <= 1e-10 * (saa / n).clamp(min=1e-30)
        const_b = vb <= 1e-10 * (sbb / n).clamp(min=1e-30)
        denom = torch.sqrt(va[:, None] * vb[None, :])
        corr = torch.where(denom > 0, cov / denom.clamp(min=1e-300), torch.zeros_like(cov)).clamp(-1, 1)
        corr[const_a] = 0
        corr[:, const_b] = 0
        return corr, const_a, const_b


def _reduce_activation(z: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    if z.ndim > 2 and granularity == "channel":
        return z.reshape(z.shape[0], z.shape[1], -1).mean(-1)
    return z.reshape(z.shape[0], -1)


def joint_pass(
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
) -> tuple[torch.Tensor, torch.Tensor, ActivationMoments]:
    """One forward of each model per batch: predictions and the cross-moments of the two slices.

    Args:
        model_a, model_b: the two classifiers (run in eval mode, frozen; restored after).
        data, data_b: the same images as A and as B take them (same order and labels).
        layer_a, layer_b: the slices whose activations are correlated.
        granularity: ``channel`` (conv activations averaged over positions) or ``neuron``.
        batch_size, dev, cancel: as elsewhere.

    Returns:
        ``(predictions_a [N], predictions_b [N], moments)``: int64 argmax of each model, and the
        :class:`ActivationMoments` of the two slices.

    Raises:
        LayerNotFoundError: a slice is the input, or is not reached in the forward pass.
        LabelMismatchError: the two data yield their images in another order, or the models' outputs differ.
        Cancelled: ``cancel`` was set.
    """
    batches_a, _ = as_batches(data, batch_size)
    batches_b, _ = as_batches(data_b, batch_size)
    seen: dict[str, torch.Tensor] = {}
    moments = ActivationMoments()
    preds_a, preds_b = [], []

    def keep(key: str) -> Callable[[nn.Module, tuple[object, ...], torch.Tensor], None]:
        def hook(_m: nn.Module, _i: tuple[object, ...], out: torch.Tensor) -> None:
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
                    if cancelled(cancel):
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
    moments: ActivationMoments,
    *,
    mode: MatchMode = "signed",
    threshold: float = 0.5,
    allow_partial: bool = False,
    layers: tuple[str, str] = ("A", "B"),
) -> Matching:
    """Optimal one-to-one matching of A's units to B's by activation correlation (see the module docstring).

    Args:
        moments: the two slices' activation moments over the same images.
        mode: ``signed`` or ``abs`` correlation to maximise.
        threshold: correlation counting as a good match.
        allow_partial: match slices of different widths (rectangular assignment) instead of refusing.
        layers: the slices' names, for the error message.

    Returns:
        The :class:`Matching`.

    Raises:
        SpecError: the slices' widths differ and ``allow_partial`` is off.
    """
    corr, const_a, const_b = moments.correlation()
    ua, ub = corr.shape
    if ua != ub and not allow_partial:
        raise SpecError(
            f"the slices have different widths: A's {layers[0]!r} has {ua} units, B's {layers[1]!r} has {ub}; "
            "compare layers of the same width (layer_a= / layer_b=), or allow a partial matching (allow_partial=True)"
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


def profile_drift(pa: torch.Tensor, pb: torch.Tensor, matching: Matching, top_k: int = 5) -> ProfileDrift:
    """Drift of one class's profile from A to B over matched units.

    Args:
        pa: the class's profile in A, ``[Ua]``; pb: in B, ``[Ub]``.
        matching: the unit matching of A and B.
        top_k: k of the top-unit overlap.

    Returns:
        The :class:`ProfileDrift` (every measure NaN and ``k`` 0 without matched units or with a
        non-finite profile).
    """
    a = pa[matching.pairs_a].double()
    b = pb[matching.pairs_b].double()
    if a.numel() == 0 or not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return ProfileDrift()
    na, nb = float(a.norm()), float(b.norm())
    cosine = min(1.0, max(-1.0, float(a @ b) / (na * nb))) if na > 0 and nb > 0 else float("nan")
    spearman = float(spearmanr(a.numpy(), b.numpy()).statistic) if a.numel() > 1 else float("nan")
    k = min(top_k, a.numel())
    top_a = set(torch.argsort(a, descending=True)[:k].tolist())
    top_b = set(torch.argsort(b, descending=True)[:k].tolist())
    return ProfileDrift(
        l2=float((a - b).norm()),
        cosine=cosine,
        spearman=spearman,
        top_overlap=len(top_a & top_b) / k,
        k=k,
    )
