"""The influence engine: χ_j = E_{x~P}[∂q/∂z_j at z = h(x)], batched and streamed.

One forward pass through the whole model and one backward pass through the layers above the slice give
every instance of a batch its own gradient at once: in eval mode the instances are independent, so
∂(Σᵢ qᵢ)/∂zᵢ = ∂qᵢ/∂zᵢ. Per-group running sums, sums of squares and counts (float64,
:class:`~essence.core.engine.sums.InfluenceSums`) make the result streamed (memory O(batch)), mergeable across shards,
and give each profile its standard error.

:func:`influence` reads as its steps: plan the pass (which instances, which batches, a stored z or not), run it
batch by batch through one of two routes (the whole model, or g alone on a stored z; both differentiate with
:func:`~essence.core.engine.gradient.quantity_gradient`), and turn the running sums into an :class:`Influence`.
The pass itself — its plan, its batches and its two routes — is :mod:`essence.core.engine.influence_pass`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from essence.core.base.devices import resolve_device
from essence.core.base.errors import SpecError
from essence.core.base.model_state import CancelFlag
from essence.core.engine.activation_cache import SliceCache
from essence.core.engine.activation_source import ActivationRecorder, ActivationSource, moves_input
from essence.core.engine.distributions import ClassConditional, Distribution
from essence.core.engine.gradient import BatchGradient
from essence.core.engine.influence_pass import (
    Autocast,
    Collected,
    Plan,
    Progress,
    Question,
    RunOptions,
    batch_gradient,
    float_dtype,
    plan_pass,
    run_pass,
)
from essence.core.engine.quantities import Quantity, as_quantity, quantity_name
from essence.core.engine.slices import Granularity, is_input_layer, unit_shape
from essence.core.engine.sums import InfluenceSums

__all__ = [
    "Autocast",
    "BatchGradient",
    "CancelFlag",
    "Influence",
    "Progress",
    "batch_gradient",
    "influence",
]


@dataclass(frozen=True)
class Influence:
    """Distributional influence at a slice.

    Attributes:
        mean: ``[G, U]`` the influence of each unit for each group (class, instance or dataset): float32, or
            float64 when the model computes in float64.
        stderr: ``[G, U]`` standard error of each mean over the group's instances (NaN if n < 2), same dtype.
        counts: int64 ``[G]`` instances per group.
        groups: int64 ``[G]`` the group ids: class indices, instance indices, or ``[0]`` for the dataset.
        unit_shape: shape of one instance's units (``(C,)`` at channel granularity of a conv layer).
        layer, granularity, quantity, distribution: what was asked.
        sums: the raw running sums (float64), for merging and storing.
        instance_vectors: float32 ``[N, U]`` each instance's own vector, if kept (``None`` otherwise).
        instance_indices: int64 ``[N]`` dataset positions of those rows.
        instance_labels: int64 ``[N]``.
        outputs: float32 ``[N, K]`` the model's outputs at each instance (if instance vectors were kept).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from essence.core.engine.distributions import WholeDataset
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
        >>> data = (torch.randn(8, 4), torch.arange(8) % 2)
        >>> result = influence(model, data, "1", "logit", WholeDataset(), device="cpu")
        >>> result.groups.tolist(), result.unit_shape, result.counts.tolist()  # one group: the whole dataset
        ([0], (3,), [8])
        >>> result.mean.shape == result.stderr.shape == (1, 3)
        True
    """

    mean: torch.Tensor
    stderr: torch.Tensor
    counts: torch.Tensor
    groups: torch.Tensor
    unit_shape: tuple[int, ...]
    layer: str
    granularity: Granularity
    quantity: str
    distribution: str
    sums: InfluenceSums = field(repr=False)
    instance_vectors: torch.Tensor | None = field(default=None, repr=False)
    instance_indices: torch.Tensor | None = field(default=None, repr=False)
    instance_labels: torch.Tensor | None = field(default=None, repr=False)
    outputs: torch.Tensor | None = field(default=None, repr=False)


def influence(
    model: nn.Module,
    data: object,
    layer: str,
    quantity: Quantity | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | str = "logit",
    distribution: Distribution | None = None,
    granularity: Granularity = "channel",
    *,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    autocast: Autocast = None,
    keep_instances: bool = False,
    num_groups: int | None = None,
    progress: Progress | None = None,
    cancel: CancelFlag = None,
    indices: Sequence[int] | np.ndarray | None = None,
    channels_last: bool = False,
    slices: SliceCache | None = None,
    activations: ActivationSource | None = None,
) -> Influence:
    """Distributional influence χ of every unit at ``layer`` for ``quantity`` over ``distribution``.

    Args:
        model: any ``nn.Module`` mapping ``[B, ...]`` inputs to ``[B, K]`` outputs. It is run in eval mode
            with frozen parameters; its mode, ``requires_grad`` flags, device and hooks are restored.
        data: an :class:`~essence.core.inputs.data.ImageData`, ``(x [N, ...], labels [N])`` tensors, a bare
            tensor, or a ``Dataset`` of ``(x, label)``.
        layer: module path as ``model.named_modules()`` prints it; ``""`` for the input.
        quantity: a quantity object, a callable ``(logits, labels) -> [B]``, or ``"logit"``/``"prob"``
            (each instance's own label).
        distribution: :class:`ClassConditional` (default), :class:`Instance`, :class:`WholeDataset`,
            :class:`LinearPath` or :class:`GaussianNoise`.
        granularity: ``"channel"`` (conv layers: gradient summed over positions) or ``"neuron"``.
        batch_size: instances per forward/backward pass.
        device: ``auto`` (CUDA when present), ``cpu`` or ``cuda``.
        autocast: run the forward in ``bf16``/``fp16`` autocast (sums stay float64).
        keep_instances: also return each instance's vector ``[N, U]`` and outputs ``[N, K]``.
        num_groups: number of classes for class grouping (default: the model's output size).
        progress: called with ``(batches_done, batches_total)``.
        cancel: an Event or callable; when set, raises :class:`Cancelled` before the next batch.
        indices: only these dataset positions (a shard of the data; see :mod:`essence.core.scale.distributed`).
        channels_last: run 4-d inputs and the model in the channels-last memory format (faster convolutions
            on GPUs with tensor cores; see ``docs/scale.md`` for where it helps). Numbers are unchanged.
        slices: z = h(x) of ``data`` at ``layer`` already computed (a
            :class:`~essence.core.engine.activation_cache.SliceCache` or a stored
            :class:`~essence.core.engine.activation_source.StoredSlice`): only the layers above the slice run.
            Paths and noise move the input: they run h whatever is given (see
            :mod:`essence.core.engine.activation_source`). On a stored z, g runs on batches of at least
            ``batch_size`` (:func:`~essence.core.engine.activation_source.above_batch_size`).
        activations: where z may be stored (an :class:`~essence.core.engine.activation_source.ActivationSource`,
            such as the store's ``Store.slice_source(model, data)``), asked when ``slices`` is not given; a full
            pass over the whole data hands its z to the source's recorder, batch by batch.

    Returns:
        An :class:`Influence`: ``mean [G, U]`` with G classes, instances, or 1.

    Raises:
        LayerNotFoundError, ClassNotFoundError, EmptyClassError, NonFiniteOutputError, Cancelled.
        LayoutError: ``granularity`` does not fit the slice's layout (e.g. ``channel`` on ``[B, T, D]`` tokens).
        BatchCouplingError: the model's output for an instance depends on the rest of its batch.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
        >>> data = (torch.randn(8, 4), torch.arange(8) % 2)  # x [N, 4], labels [N]
        >>> chi = influence(model, data, "1", device="cpu")  # each class's own logit over its instances
        >>> chi.mean.shape  # [classes, units of the slice]
        torch.Size([2, 3])
        >>> chi.groups.tolist(), chi.counts.tolist()
        ([0, 1], [4, 4])
    """
    ask = Question(layer, as_quantity(quantity), distribution or ClassConditional(), granularity)
    dev = resolve_device(device)
    plan = plan_pass(model, data, ask, batch_size, indices, slices, activations)
    if model.training:
        warnings.warn(
            "the model was in train mode; influence is computed in eval mode (batch norm running statistics, "
            "no dropout) so that instances are independent. The model's mode is restored afterwards.",
            stacklevel=2,
        )
    run = RunOptions(dev, _amp_dtype(autocast), keep_instances, num_groups, progress, cancel, channels_last)
    recording = _recorder(model, data, ask, plan, run, activations)
    got = run_pass(model, ask, plan, run, recording)
    model_dtype = float_dtype(model)
    result_dtype = torch.float64 if model_dtype == torch.float64 and run.amp_dtype is None else torch.float32
    return _result(got, ask, plan, result_dtype)


def _amp_dtype(autocast: Autocast) -> torch.dtype | None:
    """The autocast dtype of the forward (``None``: full precision).

    Raises:
        SpecError: not ``"bf16"``, ``"fp16"`` or ``None``.
    """
    if autocast is not None and autocast not in ("bf16", "fp16"):
        raise SpecError(f"autocast must be 'bf16', 'fp16' or None, got {autocast!r}")
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(autocast or "")


def _recorder(
    model: nn.Module,
    data: object,
    ask: Question,
    plan: Plan,
    run: RunOptions,
    activations: ActivationSource | None,
) -> AbstractContextManager[ActivationRecorder] | None:
    """The source's recorder when this pass computes z of the whole data at the slice, in full precision."""
    whole_pass = (
        plan.stored is None
        and plan.subset is None
        and not moves_input(ask.distribution)
        and run.amp_dtype is None
        and not is_input_layer(ask.layer)
    )
    if activations is None or not whole_pass:
        return None
    return activations.recorder(model, data, ask.layer, plan.n)


def _result(got: Collected, ask: Question, plan: Plan, dtype: torch.dtype) -> Influence:
    """The means and standard errors of the running sums, with the groups they are of."""
    assert got.sums is not None
    sums = got.sums.cpu()
    if ask.distribution.group_by == "instance":
        filled = torch.nonzero(sums.count > 0).view(-1)
        groups = plan.positions[filled]
        sums = sums.select(filled)
    else:
        groups = torch.arange(sums.sum.shape[0])
    vectors, kept_idx, kept_y, outputs = (torch.cat(t) if t else None for t in got.kept)
    return Influence(
        mean=sums.mean().to(dtype),
        stderr=sums.stderr().to(dtype),
        counts=sums.count.clone(),
        groups=groups,
        unit_shape=unit_shape(got.z_shape, ask.granularity),
        layer=ask.layer,
        granularity=ask.granularity,
        quantity=quantity_name(ask.q),
        distribution=ask.distribution.name,
        sums=sums,
        instance_vectors=vectors,
        instance_indices=kept_idx,
        instance_labels=kept_y,
        outputs=outputs,
    )
