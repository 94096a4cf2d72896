"""Where z = h(x) comes from: a stored slice, so that a follow-up question runs the layers above it only.

The first question at a slice pays one forward through the whole model (and one backward above the slice).
Every later one — another quantity, a comparative "why A rather than B", triage vectors, a sweep, the
diagnosis — needs only z, which does not change with the question. An *activation source* keeps z once it has
been computed and hands it back. Both ways of giving z are explicit arguments:

- ``influence(model, data, layer, ..., slices=cache)`` takes z itself: a :class:`~essence.core.engine.
  activation_cache.SliceCache` (in memory, from :func:`~essence.core.engine.activation_cache.cache_slice`) or a
  :class:`StoredSlice` (memory-mapped from the store);
- ``influence(..., activations=source)`` (and every analysis that reads z: ``class_profiles``,
  ``deviation_scores``, ``expert_sweep``, ``diagnose``, ``compare_models``, ``cache_slice``) takes an
  :class:`ActivationSource`: it is asked for the z of the call's (model, data, layer), and the first full pass at
  a slice hands its z to the source's recorder, batch by batch, so that storing it costs no extra pass.
  ``essence.storage`` provides the store's source (``Store.slice_source(model, data)``).

A stored z is used only where the graph can be cut at the slice (``route == "fx"``: g runs alone) and only
for distributions that evaluate the model at the instances themselves. Paths (integrated gradients) and
noise move the input, so their z is not any stored one: they run h, whatever the source holds.
"""

from __future__ import annotations

from collections.abc import Iterator, Sized
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from essence.core.base.errors import SpecError
from essence.core.engine.activation_cache import SliceCache
from essence.core.engine.distributions import Distribution, GaussianNoise, LinearPath
from essence.core.engine.gradient import ON_STORED_Z, BatchGradient, quantity_gradient
from essence.core.engine.quantities import Quantity
from essence.core.engine.slices import Granularity, Layout, record_layout
from essence.core.engine.split import split_model

# Instances whose outputs g(z) must reproduce before a stored z is trusted for a model.
CHECK_ROWS = 4
# Elements of z in one pass through g (32 MiB of float32). A full pass's memory is set by the activations of
# every layer, mostly the wide ones below a mid-network slice; g keeps only those above it, so it can take
# larger batches within the same memory — and the narrow layers above a slice (2×2 positions in resnet18's
# layer4 at 64 px) run several times faster per instance on larger batches (measured: 3.2× from 64 to 512).
ELEMENTS_PER_PASS = 1 << 23


@dataclass(frozen=True)
class StoredSlice(SliceCache):
    """A :class:`~essence.core.engine.activation_cache.SliceCache` read back from storage (z usually memory-mapped).

    Attributes:
        layout: the layout of z recorded when it was stored (``"channels_first"``, ...), for the granularity
            check that a full pass makes on the layer itself.
        nbytes: bytes of z on disk.
    """

    layout: Layout = "unknown"
    nbytes: int = 0


class ActivationRecorder(Protocol):
    """Receives z, labels and outputs of a full pass over a dataset, batch by batch, in dataset order."""

    def write(self, z: torch.Tensor, labels: torch.Tensor, outputs: torch.Tensor, layout: Layout) -> None:
        """Append one batch: z ``[B, *z_shape]``, labels int64 ``[B]``, outputs ``[B, K]``."""


class ActivationSource(Protocol):
    """Finds a stored z for a (model, data, layer), and records one where none is stored."""

    def find(self, model: nn.Module, data: object, layer: str) -> StoredSlice | None:
        """The stored z of ``model`` on ``data`` at ``layer``, or ``None``."""

    def recorder(
        self, model: nn.Module, data: object, layer: str, n: int
    ) -> AbstractContextManager[ActivationRecorder] | None:
        """A context that stores what is written to it when it exits cleanly (``None``: do not record)."""


def moves_input(distribution: Distribution) -> bool:
    """Whether ``distribution`` evaluates the model away from the instances (paths, noise): z must be recomputed."""
    return isinstance(distribution, LinearPath | GaussianNoise)


def usable_slice(
    slices: SliceCache | None,
    activations: ActivationSource | None,
    model: nn.Module,
    data: object,
    layer: str,
    distribution: Distribution,
) -> SliceCache | None:
    """The z the engine may run g on: ``slices`` if given, else what ``activations`` holds; ``None`` to run h.

    Raises:
        SpecError: ``slices`` is of another slice or of another number of instances than ``data``.
    """
    if moves_input(distribution):
        return None  # the path or noise points are not the instances: their z is not stored anywhere
    if slices is None:
        slices = activations.find(model, data, layer) if activations is not None else None
        if slices is None:
            return None
    if slices.layer != layer:
        raise SpecError(
            f"the slice given is of layer {slices.layer!r}, not {layer!r}: pass the z of {layer!r}"
        )
    if slices.sliced.model is not model:
        raise SpecError("the slice given was cut from another model: pass the z of this model")
    n = _length(data)
    if n is not None and n != len(slices.z):
        raise SpecError(
            f"the slice given holds {len(slices.z)} instances but the data {n}: pass the z of this data"
        )
    return slices if slices.sliced.route == "fx" else None


def slice_batches(
    cache: SliceCache, batch_size: int, subset: np.ndarray | None
) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``(z [B, *z_shape], labels [B], dataset positions [B])`` of the stored z, in order (or ``subset``'s)."""
    order = torch.arange(len(cache.z)) if subset is None else torch.as_tensor(np.asarray(subset)).long()
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        rows = idx if subset is not None else slice(int(idx[0]), int(idx[-1]) + 1)
        yield torch.as_tensor(cache.z[rows]), cache.labels[idx], idx


def above_batch_size(cache: SliceCache, batch_size: int) -> int:
    """Instances per pass through g: ``batch_size``, or more while z stays within :data:`ELEMENTS_PER_PASS`."""
    per_instance = max(1, int(np.prod(cache.z.shape[1:])))
    return max(batch_size, min(len(cache.z), ELEMENTS_PER_PASS // per_instance))


def stored_gradient(
    cache: SliceCache, z: torch.Tensor, y: torch.Tensor, q: Quantity, granularity: Granularity
) -> BatchGradient:
    """One forward and one backward through g alone: every instance's ∂q/∂z at the stored z.

    Args:
        cache: the stored slice (fx route: g runs without the layers below).
        z: ``[B, *z_shape]`` stored z, on the model's device and in its dtype.
        y: int64 ``[B]`` labels.
        q: the quantity ``(logits [B, K], labels [B]) -> [B]``.
        granularity: ``"channel"`` or ``"neuron"`` (and the other granularities of the engine).

    Returns:
        A :class:`~essence.core.engine.gradient.BatchGradient` as the engine's full pass gives it.

    Raises:
        SpecError: g does not return ``[B, K]``. NonFiniteOutputError: NaN or infinity in outputs or gradient.
    """
    leaf = z.detach().requires_grad_(True)
    return quantity_gradient(
        lambda: (cache.sliced.g(leaf), leaf), y, q, granularity, layer=cache.layer, outputs_on=ON_STORED_Z
    )


def slice_layout(cache: SliceCache, model: nn.Module) -> Layout:
    """The layout of z: recorded with a stored slice, else read from one instance's forward through the model."""
    recorded: Layout = cache.layout if isinstance(cache, StoredSlice) else "unknown"
    if recorded != "unknown":
        return recorded
    first = torch.zeros(1, dtype=torch.long)
    x = cache.inputs(first).to(next((p.device for p in model.parameters()), torch.device("cpu")))
    with record_layout(model, cache.layer) as record, torch.no_grad():
        model(x)
    return record.layout(tuple(cache.z.shape[1:]))


def open_stored_slice(
    model: nn.Module,
    data: object,
    layer: str,
    z: torch.Tensor,
    labels: torch.Tensor,
    outputs: torch.Tensor,
    *,
    layout: Layout = "unknown",
    nbytes: int = 0,
) -> StoredSlice | None:
    """A :class:`StoredSlice` of ``model`` over stored arrays, if g reproduces the stored outputs.

    The graph is cut at ``layer`` and g is run on the first :data:`CHECK_ROWS` stored z: its outputs must equal
    the stored outputs (float tolerance), else the stored z is not this model's (or the cut is wrong) and
    ``None`` says to recompute. Where the model cannot be cut (hook route) a stored z saves nothing: ``None``.

    Args:
        model: the classifier (its mode is restored).
        data: the data z was computed from.
        layer: module path of the slice.
        z: ``[N, *z_shape]`` (a memory-mapped tensor is read lazily).
        labels: int64 ``[N]``. outputs: ``[N, K]`` the model's outputs when z was stored.
        layout: the recorded layout of z. nbytes: its size on disk.
    """
    sliced = split_model(model, layer)
    if sliced.route != "fx" or len(z) == 0:
        return None
    k = min(CHECK_ROWS, len(z))
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            got = sliced.g(torch.as_tensor(z[:k]).to(device, dtype)).double().cpu()
    except Exception:  # the stored z does not even fit this model's layers above the slice
        return None
    finally:
        model.train(was_training)
    want = outputs[:k].double()
    if got.shape != want.shape or not torch.allclose(
        got, want, rtol=1e-4, atol=1e-4 * max(1.0, float(want.abs().max()))
    ):
        return None
    return StoredSlice(layer, sliced, z, labels, outputs, data, layout=layout, nbytes=nbytes)


def _length(data: object) -> int | None:
    """The number of instances in ``data`` (``(x, labels)`` tensors or a sized dataset), ``None`` if unsized."""
    first = data[0] if isinstance(data, tuple | list) else data
    try:
        return len(first) if isinstance(first, Sized) else None
    except TypeError:  # a zero-dimensional tensor has __len__ but no length
        return None
