"""z = h(x) of a whole dataset at one slice, computed once and kept, for every question asked above the slice.

Expert sweeps, their cross-fitted unit rankings and the linear probe all look at the same z. Running h once and
keeping z (with the model's outputs) in CPU memory means every later question costs passes through g only
(:func:`~essence.core.engine.split.split_model`); where the model cannot be cut, g re-runs the model with z
substituted at the layer, and :meth:`SliceCache.inputs` gives it the inputs back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn

from essence.core.base.devices import resolve_device
from essence.core.base.errors import EmptyClassError, SpecError
from essence.core.base.model_state import inference_state, on_device
from essence.core.engine.gradient import ON_CACHED_Z, Forward, quantity_gradient
from essence.core.engine.quantities import ClassScore, Kind
from essence.core.engine.slices import Granularity
from essence.core.engine.split import SlicedModel, split_model
from essence.core.inputs.data import as_batches

if TYPE_CHECKING:  # the source's module builds on this one
    from essence.core.engine.activation_source import ActivationSource


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
        """The preprocessed inputs ``[len(idx), ...]`` of the given instances (only the hook route needs them)."""
        batches, _ = as_batches(self.data, len(idx), idx.numpy())
        return next(iter(batches))[0]


def cache_slice(
    model: nn.Module,
    data: object,
    layer: str,
    *,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    activations: ActivationSource | None = None,
) -> SliceCache:
    """Run h once over the data and keep z (and the model's outputs) in CPU memory.

    Args:
        model: the classifier (eval mode inside; left as it was).
        data: an :class:`~essence.core.inputs.data.ImageData` or ``(x, labels)`` tensors.
        layer: module path of the slice.
        batch_size, device: as elsewhere.
        activations: where z may already be stored (:class:`~essence.core.engine.activation_source.
            ActivationSource`); when it holds this slice, its z is returned and h does not run at all.

    Returns:
        A :class:`SliceCache` (the source's :class:`~essence.core.engine.activation_source.StoredSlice`,
        memory-mapped, when it holds this slice).

    Raises:
        LayerNotFoundError: unknown layer. EmptyClassError: the data holds no instances.
    """
    found = activations.find(model, data, layer) if activations is not None else None
    if found is not None:
        return found
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


def unit_values(z: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """Per-instance unit values ``[N, U]`` of z ``[N, *z_shape]`` (channel granularity: mean over positions).

    Raises:
        SpecError: unknown granularity.
    """
    if granularity not in ("channel", "neuron"):
        raise SpecError(f"unknown granularity {granularity!r}: use 'channel' or 'neuron'")
    if z.ndim <= 2 or granularity == "neuron":
        return z.reshape(len(z), -1)
    return z.reshape(z.shape[0], z.shape[1], -1).mean(-1)


def instance_gradients(
    cache: SliceCache,
    cls: int,
    rows: torch.Tensor,
    *,
    kind: Kind = "logit",
    granularity: Granularity = "channel",
    batch_size: int = 256,
    device: str | torch.device = "auto",
) -> torch.Tensor:
    """Each instance's own influence vector ∂q/∂z for q = the score of ``cls``, computed above the slice only.

    The same vectors the engine sums into a class profile (channel granularity: the gradient summed over
    positions), but from the cached z, so a profile of any subset of the instances — one half of a cross-fit —
    costs a backward through g alone.

    Args:
        cache: the slice's cached z.
        cls: the class whose score is differentiated.
        rows: int64 ``[R]`` the instances (indices into the cache).
        kind: ``"logit"`` or ``"prob"`` (softmax).
        granularity: ``"channel"`` or ``"neuron"``.
        batch_size, device: as elsewhere.

    Returns:
        float32 ``[R, U]``.

    Raises:
        SpecError: unknown kind or granularity.
    """
    if kind not in ("logit", "prob"):
        raise SpecError(f"unknown quantity kind {kind!r}: use 'logit' or 'prob'")
    if granularity not in ("channel", "neuron"):
        raise SpecError(f"unknown granularity {granularity!r}: use 'channel' or 'neuron'")
    dev = resolve_device(device)
    model = cache.sliced.model
    score = ClassScore(cls, kind)
    out: list[torch.Tensor] = []
    with inference_state(model), on_device(model, dev):
        for s in range(0, len(rows), batch_size):
            idx = rows[s : s + batch_size]
            grad = quantity_gradient(
                _above(cache, idx, dev), cache.labels[idx].to(dev), score, granularity, outputs_on=ON_CACHED_Z
            )
            out.append(grad.vectors.float().cpu())
    return torch.cat(out) if out else torch.zeros(0, 0)


def _above(cache: SliceCache, idx: torch.Tensor, dev: torch.device) -> Forward:
    """The forward through g at the cached z of rows ``idx`` (a leaf), with their inputs where g needs them."""
    leaf = cache.z[idx].to(dev).requires_grad_(True)
    x = cache.inputs(idx).to(dev) if cache.sliced.needs_input else None
    return lambda: (cache.sliced.g(leaf, x), leaf)


def halves_of(labels: torch.Tensor, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two halves of the instances, stratified by class (each class split as evenly as it can be).

    Args:
        labels: int64 ``[N]``.
        seed: seed of the shuffle within each class.

    Returns:
        ``(first, second)`` sorted int64 index tensors that together hold every instance once.
    """
    g = torch.Generator().manual_seed(seed)
    first: list[torch.Tensor] = []
    second: list[torch.Tensor] = []
    for c in torch.unique(labels):
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        first.append(idx[0::2])
        second.append(idx[1::2])
    return torch.sort(torch.cat(first)).values, torch.sort(torch.cat(second)).values


def rank_units(
    cache: SliceCache,
    units: torch.Tensor,
    cls: int,
    rows: torch.Tensor,
    rank_by: str,
    kind: Kind,
    granularity: Granularity,
    seed: int,
    batch_size: int,
    device: str | torch.device = "auto",
) -> torch.Tensor:
    """Units, most positive first, ranked on the instances of class ``cls`` among ``rows``.

    Args:
        cache: the slice's cached z.
        units: float ``[N, U]`` the unit values of every cached instance (:func:`unit_values`).
        cls: the class.
        rows: int64 ``[R]`` the instances the ranking may look at.
        rank_by: ``"influence"`` (mean of the instances' own influence vectors: the class profile of those
            instances), ``"activation"`` (their mean unit values) or ``"random"`` (a permutation from ``seed``).
        kind, granularity: the profile's quantity and unit granularity.
        seed: seed of the random order.
        batch_size, device: as elsewhere.

    Returns:
        int64 ``[U]`` unit indices.
    """
    if rank_by == "random":
        return torch.randperm(units.shape[1], generator=torch.Generator().manual_seed(seed))
    own = rows[cache.labels[rows] == cls]
    if rank_by == "activation":
        score = units[own].double().mean(0)
    else:
        grads = instance_gradients(
            cache, cls, own, kind=kind, granularity=granularity, batch_size=batch_size, device=device
        )
        score = grads.double().mean(0)
    return torch.argsort(score, descending=True, stable=True)
