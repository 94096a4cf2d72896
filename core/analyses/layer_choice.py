"""Which slice to explain at: how concentrated class influence is at each layer (Ho, "Layered Explanations").

An explanation is easiest to read at a layer where few units carry most of a class's influence. For each
candidate layer and each class c with instances, take the class profile χ_c (q = c's score, P = c's instances)
and its absolute values a = |χ_c| over the layer's U units:

* **share80** = (smallest number of units whose |χ| sums to ``mass`` (default 80 %) of Σ a) / U;
  lower = more concentrated (a uniform profile gives ≈ 0.8, one dominant unit gives 1/U);
* **Gini** = Σᵢ (2i − U − 1) a₍ᵢ₎ / (U Σ a) with a₍ᵢ₎ sorted ascending, i = 1..U;
  0 = uniform, → 1 = all influence on one unit.

A layer's scores are the means over its classes.

**The rule** (every number a setting of :func:`suggest_layer`): candidates are ordered by when they run in the
forward pass, and candidate i of L gets depth i / (L − 1). A candidate is *eligible* when its depth lies in
[``min_depth``, ``max_depth``] (default [0.25, 0.75]: the middle half of the network — Ho's argument is that
early layers respond to generic edges and texture and the last ones are already class scores, so the middle is
where parts that explain a class live) and it has at least ``min_units`` units (default 8: below that one
unit moves share80 by more than 12 points, too coarse to compare layers). The suggestion is the eligible layer
with the lowest share80, ties broken by the higher Gini, then the deeper layer. If no candidate is eligible, the
depth window is dropped (the unit floor stays); if still none, every candidate is eligible.

All candidate layers are scored in one pass: one forward and one backward per batch give the gradient at every
candidate (each layer's output is kept as an intermediate of the graph; a clone is passed on so that an in-place
op above it cannot overwrite it).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from essence.core.base.devices import resolve_device
from essence.core.base.errors import Cancelled, EmptyClassError, LayerNotFoundError, SpecError
from essence.core.base.model_state import CancelFlag, cancelled, inference_state, on_device
from essence.core.engine.influence import Progress
from essence.core.engine.quantities import Kind, OwnLabel
from essence.core.engine.slices import Granularity, layer_names, reduce_units, resolve_layer
from essence.core.engine.sums import InfluenceSums
from essence.core.inputs.data import as_batches, labels_of


@dataclass(frozen=True)
class LayerScore:
    """How concentrated class influence is at one layer.

    Attributes:
        name: module path; output_shape: one instance's output shape; units: U at the granularity.
        share80: mean over classes of the share of units carrying ``mass`` of the absolute influence.
        gini: mean over classes of the Gini coefficient of |χ_c|.
        depth: position among the candidates in forward order, in [0, 1].
        eligible: whether the rule could pick it.
    """

    name: str
    output_shape: tuple[int, ...]
    units: int
    share80: float
    gini: float
    depth: float
    eligible: bool


@dataclass(frozen=True)
class LayerSuggestion:
    """Per-layer concentration scores and the suggested slice.

    Attributes:
        layers: the candidates' :class:`LayerScore`, in forward order.
        suggested: the suggested module path.
        reason: one sentence on why it was picked.
        settings: the rule's settings (``mass``, ``min_depth``, ``max_depth``, ``min_units``, ``kind``,
            ``granularity``, ``instances``).
        all_layers: every module path of the model (what a ``layer`` argument accepts).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from essence.core import LayerSuggestion, suggest_layer
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))
        >>> data = (torch.randn(60, 4), torch.arange(60) % 3)
        >>> s = suggest_layer(model.eval(), data, layers=["1", "3"], device="cpu")
        >>> isinstance(s, LayerSuggestion), [(score.name, score.units) for score in s.layers]
        (True, [('1', 16), ('3', 16)])
        >>> s.suggested in ("1", "3"), sorted(s.settings)[:3]
        (True, ['granularity', 'instances', 'kind'])
    """

    layers: list[LayerScore]
    suggested: str
    reason: str
    settings: dict[str, Any] = field(default_factory=dict)
    all_layers: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "suggested": self.suggested,
            "reason": self.reason,
            "settings": dict(self.settings),
            "layers": [
                {
                    "name": s.name,
                    "output_shape": list(s.output_shape),
                    "units": s.units,
                    "share80": s.share80,
                    "gini": s.gini,
                    "depth": s.depth,
                    "eligible": s.eligible,
                }
                for s in self.layers
            ],
            "all_layers": list(self.all_layers),
        }


def concentration(profile: torch.Tensor, mass: float = 0.8) -> tuple[float, float]:
    """``(share, gini)`` of one influence vector ``[U]`` (see the module docstring); NaN if it is all zero."""
    a = profile.detach().abs().double().flatten()
    total = float(a.sum())
    n = a.numel()
    if n == 0 or total <= 0 or not np.isfinite(total):
        return float("nan"), float("nan")
    desc = torch.sort(a, descending=True).values
    cum = torch.cumsum(desc, 0) / total
    needed = int(torch.searchsorted(cum, torch.tensor(mass, dtype=torch.float64) - 1e-12)) + 1
    asc = desc.flip(0)
    i = torch.arange(1, n + 1, dtype=torch.float64)
    gini = float(((2 * i - n - 1) * asc).sum() / (n * total))
    return min(needed, n) / n, gini


def default_candidates(model: nn.Module) -> list[str]:
    """The model's top-level children that hold a Conv or Linear layer, in definition order (for a model of
    graph modules, an unflattened ``.pt2`` program, those that hold a kernel of two or more dimensions).

    The output layer is among them; :func:`suggest_layer` leaves it out once the pass shows that its output is
    the class scores.

    When fewer than three children qualify (a model wrapping ``features``/``classifier`` containers), their
    children are used instead, one level down.
    """

    def typed(m: nn.Module) -> bool:
        return any(isinstance(s, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.Linear) for s in m.modules())

    def kernels(m: nn.Module) -> bool:  # modules of a graph (an exported program): a kernel of ≥ 2 dimensions
        return any(p.ndim >= 2 for p in m.parameters())

    weighted = typed if any(typed(c) for c in model.children()) else kernels
    top = [(n, c) for n, c in model.named_children() if weighted(c)]
    if len(top) < 3:
        expanded = []
        for n, c in top:
            inner = [(f"{n}.{n2}", c2) for n2, c2 in c.named_children() if weighted(c2)]
            expanded.extend(inner or [(n, c)])
        top = expanded
    return [n for n, _ in top]


def suggest_layer(
    model: nn.Module,
    data: object,
    *,
    layers: Sequence[str] | None = None,
    mass: float = 0.8,
    min_depth: float = 0.25,
    max_depth: float = 0.75,
    min_units: int = 8,
    kind: Kind = "logit",
    granularity: Granularity = "channel",
    max_instances: int | None = 512,
    seed: int = 0,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    progress: Progress | None = None,
    cancel: CancelFlag = None,
) -> LayerSuggestion:
    """Score every candidate layer's concentration of class influence and suggest one (rule: module docstring).

    Args:
        model: the classifier (eval mode, frozen; restored after).
        data: an :class:`ImageData` or ``(x, labels)`` tensors.
        layers: module paths to score (default: :func:`default_candidates`; the output layer is left out).
        mass: the share of absolute influence the "share" counts units for (0.8 = share80).
        min_depth, max_depth: the depth window of eligible layers, in [0, 1].
        min_units: the fewest units an eligible layer may have.
        kind: class score differentiated (``logit`` or ``prob``).
        granularity: ``channel`` or ``neuron``.
        max_instances: score on at most this many instances (a seeded random sample; ``None``: all).
        seed, batch_size, device, progress, cancel: as elsewhere.

    Returns:
        A :class:`LayerSuggestion`.

    Raises:
        LayerNotFoundError: an unknown layer name, a layer not reached, or no candidate layer.
        SpecError: settings out of range.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from essence.core import suggest_layer
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(
        ...     nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
        ...     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
        ... ).eval()
        >>> images, labels = torch.rand(30, 1, 8, 8), torch.arange(30) % 3
        >>> s = suggest_layer(model, (images, labels), min_units=4, device="cpu")
        >>> [score.name for score in s.layers]  # the conv layers; the output layer is left out
        ['0', '2']
        >>> s.suggested, s.reason.startswith(s.suggested + ":")
        ('2', True)
    """
    if not 0 < mass <= 1 or not 0 <= min_depth <= max_depth <= 1 or min_units < 1:
        raise SpecError(
            f"need 0 < mass ≤ 1, 0 ≤ min_depth ≤ max_depth ≤ 1 and min_units ≥ 1; got mass={mass}, "
            f"depth=[{min_depth}, {max_depth}], min_units={min_units}"
        )
    modules = _candidate_modules(model, layers)
    labels = labels_of(data)
    subset = None
    if max_instances is not None and len(labels) > max_instances:
        subset = np.sort(np.random.default_rng(seed).permutation(len(labels))[:max_instances])
    sums, shapes, order = _gradients_at(
        model, data, modules, kind, granularity, batch_size, device, subset, progress, cancel
    )
    if layers is None and order and shapes[order[-1]] == (sums[order[-1]].sum.shape[0],):
        # the last candidate's output is [K] class scores: the output itself, whose influence is one-hot
        # (trivially concentrated), so it is no slice to explain at
        order = order[:-1]
    if not order:
        raise LayerNotFoundError(
            "no candidate layer left once the output layer is excluded: pass layers explicitly"
        )
    depth = {n: (i / (len(order) - 1) if len(order) > 1 else 0.0) for i, n in enumerate(order)}
    scores = {n: _layer_scores(sums[n], mass) for n in order}
    eligible = _eligible(order, depth, scores, shapes, granularity, min_depth, max_depth, min_units)
    results = [
        LayerScore(
            name=n,
            output_shape=shapes[n],
            units=_units(shapes[n], granularity),
            share80=scores[n][0],
            gini=scores[n][1],
            depth=depth[n],
            eligible=n in eligible,
        )
        for n in order
    ]
    best = _most_concentrated(results)
    reason = (
        f"{best.name}: {best.share80:.0%} of its {best.units} units carry {mass:.0%} of the absolute class "
        f"influence (Gini {best.gini:.2f}), the most concentrated of the eligible layers"
    )
    settings = {
        "mass": mass,
        "min_depth": min_depth,
        "max_depth": max_depth,
        "min_units": min_units,
        "kind": kind,
        "granularity": granularity,
        "instances": int(len(labels) if subset is None else len(subset)),
    }
    return LayerSuggestion(results, best.name, reason, settings, layer_names(model))


def _candidate_modules(model: nn.Module, layers: Sequence[str] | None) -> dict[str, nn.Module]:
    """The modules to score by path: ``layers``, by default :func:`default_candidates`; never the input."""
    names = list(layers) if layers is not None else default_candidates(model)
    if not names:
        raise LayerNotFoundError("the model has no Conv or Linear layer to score: pass layers explicitly")
    found = {n: resolve_layer(model, n) for n in names}
    modules = {n: m for n, m in found.items() if m is not None}
    if len(modules) < len(found):
        raise LayerNotFoundError("the input is not a layer to score: leave '' out of layers")
    return modules


def _most_concentrated(results: list[LayerScore]) -> LayerScore:
    """The eligible layer with the lowest share80, ties broken by the higher Gini, then the deeper layer."""
    return min(
        (r for r in results if r.eligible),
        key=lambda r: (np.nan_to_num(r.share80, nan=2.0), -np.nan_to_num(r.gini, nan=-1.0), -r.depth),
    )


def _units(shape: tuple[int, ...], granularity: Granularity) -> int:
    if granularity == "channel" and len(shape) > 1:
        return int(shape[0])
    return int(np.prod(shape))


def _layer_scores(sums: InfluenceSums, mass: float) -> tuple[float, float]:
    means = sums.mean()
    per_class = [concentration(means[c], mass) for c in range(means.shape[0]) if int(sums.count[c]) > 0]
    per_class = [p for p in per_class if np.isfinite(p[0])]
    if not per_class:
        return float("nan"), float("nan")
    return float(np.mean([p[0] for p in per_class])), float(np.mean([p[1] for p in per_class]))


def _eligible(
    order: list[str],
    depth: dict[str, float],
    scores: dict[str, tuple[float, float]],
    shapes: dict[str, tuple[int, ...]],
    granularity: Granularity,
    min_depth: float,
    max_depth: float,
    min_units: int,
) -> set[str]:
    wide = [n for n in order if _units(shapes[n], granularity) >= min_units and np.isfinite(scores[n][0])]
    mid = [n for n in wide if min_depth - 1e-9 <= depth[n] <= max_depth + 1e-9]
    return set(mid or wide or order)


def _gradients_at(
    model: nn.Module,
    data: object,
    modules: dict[str, nn.Module],
    kind: Kind,
    granularity: Granularity,
    batch_size: int,
    device: str | torch.device,
    subset: np.ndarray | None,
    progress: Progress | None,
    cancel: CancelFlag,
) -> tuple[dict[str, InfluenceSums], dict[str, tuple[int, ...]], list[str]]:
    """Per-class sums of the gradient at every layer, from one forward and one backward per batch."""
    dev = resolve_device(device)
    batches, n = as_batches(data, batch_size, subset)
    if n == 0:
        raise EmptyClassError("the data holds no instances: nothing to score layers on")
    total = -(-n // batch_size)
    q = OwnLabel(kind)
    outputs: dict[str, torch.Tensor] = {}
    order: list[str] = []

    def hook_for(name: str) -> Callable[[nn.Module, tuple[object, ...], torch.Tensor], torch.Tensor]:
        def hook(_m: nn.Module, _i: tuple[object, ...], out: torch.Tensor) -> torch.Tensor:
            if not isinstance(out, torch.Tensor):
                raise LayerNotFoundError(
                    f"layer {name!r} returns {type(out).__name__}, not a tensor: leave it out"
                )
            if name in outputs:
                raise LayerNotFoundError(f"layer {name!r} runs more than once per forward pass: leave it out")
            outputs[name] = out
            if name not in order:
                order.append(name)
            return out.clone()

        return hook

    sums: dict[str, InfluenceSums] = {}
    shapes: dict[str, tuple[int, ...]] = {}
    with inference_state(model), on_device(model, dev):
        handles = [m.register_forward_hook(hook_for(name)) for name, m in modules.items()]
        try:
            for done, (x, y, _idx) in enumerate(batches, start=1):
                if cancelled(cancel):
                    raise Cancelled("cancelled by the user; nothing was kept")
                outputs.clear()
                x = x.to(dev).requires_grad_(True)
                y = y.to(dev)
                with torch.enable_grad():
                    logits = model(x)
                    missing = [name for name in modules if name not in outputs]
                    if missing:
                        raise LayerNotFoundError(
                            f"layers {missing} were not reached in the forward pass: leave them out"
                        )
                    names = list(outputs)
                    grads = torch.autograd.grad(
                        q(logits.float(), y).sum(), [outputs[k] for k in names], allow_unused=True
                    )
                for name, g in zip(names, grads, strict=True):
                    g = torch.zeros_like(outputs[name]) if g is None else g
                    vec = reduce_units(g.float(), granularity)
                    if name not in sums:
                        sums[name] = InfluenceSums.zeros(logits.shape[1], vec.shape[1], dev)
                        shapes[name] = tuple(outputs[name].shape[1:])
                    sums[name].add(vec, y.long())
                if progress is not None:
                    progress(done, total)
        finally:
            for h in handles:
                h.remove()
            outputs.clear()
    return {k: v.cpu() for k, v in sums.items()}, shapes, order
