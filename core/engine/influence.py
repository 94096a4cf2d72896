"""The influence engine: χ_j = E_{x~P}[∂q/∂z_j at z = h(x)], batched and streamed.

One forward pass through the whole model and one backward pass through the layers above the slice give
every instance of a batch its own gradient at once: in eval mode the instances are independent, so
∂(Σᵢ qᵢ)/∂zᵢ = ∂qᵢ/∂zᵢ. Per-group running sums, sums of squares and counts (float64,
:class:`~essence.core.engine.sums.InfluenceSums`) make the result streamed (memory O(batch)), mergeable across shards,
and give each profile its standard error.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from essence.core.base.devices import resolve_device
from essence.core.base.errors import (
    Cancelled,
    EmptyClassError,
    NonFiniteOutputError,
    SpecError,
)
from essence.core.base.independence import check_batch_independent
from essence.core.base.model_state import CancelFlag, cancelled, memory_format, on_device
from essence.core.engine.activation_cache import SliceCache
from essence.core.engine.activation_source import (
    above_batch_size,
    gradient_above,
    slice_batches,
    slice_layout,
    slice_recorder,
    usable_slice,
)
from essence.core.engine.distributions import (
    ClassConditional,
    Distribution,
    GaussianNoise,
    LinearPath,
)
from essence.core.engine.grouping import (
    group_ids,
    instance_slots,
    neighbourhood_points,
    new_sums,
    restrict,
    within,
)
from essence.core.engine.prefetch import prefetch
from essence.core.engine.quantities import Quantity, as_quantity, quantity_name
from essence.core.engine.slices import (
    Capture,
    Granularity,
    Layout,
    capture,
    check_granularity,
    inference_state,
    input_layout,
    is_input_layer,
    record_layout,
    reduce_units,
    unit_shape,
)
from essence.core.engine.sums import InfluenceSums
from essence.core.inputs.data import as_batches, labels_of

Progress = Callable[[int, int], None]
Autocast = Literal["bf16", "fp16"] | None


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


@dataclass(frozen=True)
class BatchGradient:
    """What one forward and one backward give for a batch of B instances.

    Attributes:
        vectors: ``[B, U]`` each instance's ∂q/∂z, reduced to the granularity's units (float32; float64 for
            a float64 model).
        z_shape: the shape of one instance's z ``[*z_shape]`` (before the reduction).
        outputs: ``[B, K]`` the model's outputs (detached; in the autocast dtype if one was used).
        z: ``[B, *z_shape]`` the slice's values the gradient was taken at (detached; kept for a stored slice).
    """

    vectors: torch.Tensor
    z_shape: tuple[int, ...]
    outputs: torch.Tensor
    z: torch.Tensor | None = field(default=None, repr=False)


def influence(
    model: nn.Module,
    data: object,
    layer: str,
    quantity: Quantity | Callable | str = "logit",
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
        slices: z = h(x) of ``data`` at ``layer`` already computed (a :class:`~essence.core.engine.activation_cache.SliceCache`
            or a stored :class:`~essence.core.engine.activation_source.StoredSlice`): only the layers above the slice run.
            Without it, the active slice source (:func:`~essence.core.engine.activation_source.use_slices`) is asked, and a
            full pass over the whole data hands its z to the source's recorder. Paths and noise move the input:
            they run h whatever is given (see :mod:`essence.core.engine.activation_source`). On a stored z, g runs on
            batches of at least ``batch_size`` (:func:`~essence.core.engine.activation_source.above_batch_size`).

    Returns:
        An :class:`Influence`: ``mean [G, U]`` with G classes, instances, or 1.

    Raises:
        LayerNotFoundError, ClassNotFoundError, EmptyClassError, NonFiniteOutputError, Cancelled.
        LayoutError: ``granularity`` does not fit the slice's layout (e.g. ``channel`` on ``[B, T, D]`` tokens).
        BatchCouplingError: the model's output for an instance depends on the rest of its batch.
    """
    distribution = distribution or ClassConditional()
    q = as_quantity(quantity)
    dev = resolve_device(device)
    labels = labels_of(data)
    names = getattr(data, "class_names", None)
    subset = restrict(distribution, labels, names)
    if indices is not None:
        subset = within(subset, indices, len(labels))
    points = neighbourhood_points(distribution)
    neighbourhood = isinstance(distribution, LinearPath | GaussianNoise)
    batches, n = as_batches(data, batch_size, subset)
    stored = None if is_input_layer(layer) else usable_slice(slices, model, data, layer, distribution)
    if stored is not None:  # the layers below the slice never run: g forward and backward on the stored z
        batch_size = above_batch_size(stored, batch_size)  # g alone takes larger batches in the same memory
        batches = slice_batches(stored, batch_size, subset)
    asked, slot, positions = instance_slots(subset, len(labels))
    total = -(-n // batch_size) * len(points)
    if n == 0:
        raise EmptyClassError("the data holds no instances: nothing to compute influence over")
    if model.training:
        warnings.warn(
            "the model was in train mode; influence is computed in eval mode (batch norm running statistics, "
            "no dropout) so that instances are independent. The model's mode is restored afterwards.",
            stacklevel=2,
        )
    if autocast is not None and autocast not in ("bf16", "fp16"):
        raise SpecError(f"autocast must be 'bf16', 'fp16' or None, got {autocast!r}")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(autocast or "")
    whole_pass = stored is None and subset is None and not neighbourhood and amp_dtype is None
    recording = slice_recorder(model, data, layer, n) if whole_pass and not is_input_layer(layer) else None
    layout: Layout = "unknown"

    model_dtype = _float_dtype(model)
    sums: InfluenceSums | None = None
    kept: tuple[list[torch.Tensor], ...] = ([], [], [], [])  # vectors, indices, labels, outputs
    z_shape: tuple[int, ...] = ()
    done = 0
    group_by = distribution.group_by
    with inference_state(model), on_device(model, dev), memory_format(model, channels_last):
        below = is_input_layer(layer) or stored is not None
        hook: AbstractContextManager = nullcontext() if below else capture(model, layer)
        with hook as cap, recording or nullcontext() as recorder:
            for x, y, idx in prefetch(batches, pin=dev.type == "cuda"):
                if cancelled(cancel):
                    raise Cancelled("cancelled by the user; nothing was kept")
                x = x.to(dev, non_blocking=True)
                y = y.to(dev, non_blocking=True)
                if x.is_floating_point() and model_dtype is not None and x.dtype != model_dtype:
                    x = x.to(model_dtype)  # a float64 model computes in float64 on the same data
                if channels_last and x.ndim == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                acc: torch.Tensor | None = None
                out0: torch.Tensor | None = None
                for step, (alpha, weight) in enumerate(points):
                    xs = distribution.transform(x, alpha, step, idx) if neighbourhood else x
                    if stored is not None:
                        if sums is None:  # a full pass checks the layer itself; here, the stored layout
                            layout = slice_layout(stored, model)
                            check_granularity(layout, granularity, layer, tuple(xs.shape[1:]))
                        grad = BatchGradient(*gradient_above(stored, xs, y, q, granularity))
                    elif sums is None and step == 0:  # the first batch: check what every later one assumes
                        grad, layout = _first_gradient(model, xs, y, layer, q, cap, amp_dtype, granularity)
                    else:
                        grad = batch_gradient(model, xs, y, layer, q, cap, amp_dtype, granularity)
                    z_shape = grad.z_shape
                    vec = grad.vectors * weight
                    acc = vec if acc is None else acc + vec
                    out0 = grad.outputs if out0 is None else out0
                    done += 1
                    if progress is not None:
                        progress(done, total)
                assert acc is not None and out0 is not None
                if recorder is not None and grad.z is not None:
                    recorder.write(grad.z, y, out0, layout)
                if sums is None:
                    sums = new_sums(group_by, out0.shape[1], acc.shape[1], asked, num_groups, dev)
                sums.add(acc, group_ids(group_by, y, slot(idx), dev, sums.sum.shape[0]))
                if keep_instances:
                    if neighbourhood:  # the outputs at the instance itself, not at a path point
                        with torch.no_grad():
                            out0 = model(x).float()
                    vec_kept = acc if acc.dtype == torch.float64 else acc.float()
                    for kept_list, t in zip(kept, (vec_kept, idx, y, out0.detach().float()), strict=True):
                        kept_list.append(t.cpu())
    assert sums is not None
    sums = sums.cpu()
    if group_by == "instance":
        filled = torch.nonzero(sums.count > 0).view(-1)
        groups = positions[filled]
        sums = sums.select(filled)
    else:
        groups = torch.arange(sums.sum.shape[0])
    vectors, kept_idx, kept_y, outputs = (torch.cat(t) if keep_instances else None for t in kept)
    result_dtype = torch.float64 if model_dtype == torch.float64 and amp_dtype is None else torch.float32
    return Influence(
        mean=sums.mean().to(result_dtype),
        stderr=sums.stderr().to(result_dtype),
        counts=sums.count.clone(),
        groups=groups,
        unit_shape=unit_shape(z_shape, granularity),
        layer=layer,
        granularity=granularity,
        quantity=quantity_name(q),
        distribution=distribution.name,
        sums=sums,
        instance_vectors=vectors,
        instance_indices=kept_idx,
        instance_labels=kept_y,
        outputs=outputs,
    )


def batch_gradient(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    layer: str,
    q: Quantity,
    cap: Capture | None,
    amp_dtype: torch.dtype | None,
    granularity: Granularity,
) -> BatchGradient:
    """One forward of the whole model and one backward above the slice: every instance's ∂q/∂z.

    Args:
        model: the model, already in eval mode with frozen parameters and on ``x``'s device.
        x: ``[B, ...]`` the inputs.
        y: int64 ``[B]`` their labels (for quantities of each instance's own class).
        layer: the slice; ``""`` differentiates with respect to ``x``.
        q: the quantity, ``(logits [B, K], labels [B]) -> [B]``.
        cap: the open :func:`~essence.core.engine.slices.capture` of ``layer`` (``None`` for the input slice).
        amp_dtype: run the forward under autocast in this dtype (``None``: full precision).
        granularity: ``"channel"`` or ``"neuron"``.

    Returns:
        A :class:`BatchGradient` with vectors ``[B, U]`` and outputs ``[B, K]``.

    Raises:
        SpecError: the model does not return ``[B, K]``, or never reaches ``layer``.
        NonFiniteOutputError: the outputs or the gradient hold NaN or infinity.
    """
    amp = torch.autocast(x.device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    with torch.enable_grad():
        if cap is None:
            leaf = x.detach().requires_grad_(True)
            with amp:
                out = model(leaf)
        else:
            with amp:
                out = model(x)
            leaf = cap.leaf
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            raise SpecError(
                f"the model must return a [batch, classes] tensor; got {getattr(out, 'shape', type(out).__name__)}"
            )
        if not torch.isfinite(out).all():
            raise NonFiniteOutputError(
                "the model produced NaN or infinite outputs on this data: check the weights and the "
                "preprocessing (normalisation) of the inputs"
            )
        if leaf is None:
            raise SpecError(
                f"layer {layer!r} was not reached in the forward pass: pick a layer the model uses"
            )
        values = q(out if out.dtype == torch.float64 else out.float(), y)
        (grad,) = torch.autograd.grad(values.sum(), leaf, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(leaf)
    if not torch.isfinite(grad).all():
        raise NonFiniteOutputError(
            "the gradient at the slice is NaN or infinite: check the model and its inputs"
        )
    grad = grad if grad.dtype == torch.float64 else grad.float()
    return BatchGradient(reduce_units(grad, granularity), tuple(leaf.shape[1:]), out.detach(), leaf.detach())


def _first_gradient(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    layer: str,
    q: Quantity,
    cap: Capture | None,
    amp_dtype: torch.dtype | None,
    granularity: Granularity,
) -> tuple[BatchGradient, Layout]:
    """:func:`batch_gradient` on the first batch, checking the layout of the slice and batch independence.

    Returns:
        The batch's gradient and the layout of the slice (recorded with a stored z).

    Raises:
        LayoutError: ``granularity`` does not fit the slice's layout.
        BatchCouplingError: an instance alone gives other outputs than inside the batch.
    """
    if is_input_layer(layer):
        grad = batch_gradient(model, x, y, layer, q, cap, amp_dtype, granularity)
        layout = input_layout(grad.z_shape)
    else:
        with record_layout(model, layer) as record:
            grad = batch_gradient(model, x, y, layer, q, cap, amp_dtype, granularity)
        layout = record.layout(grad.z_shape)
    check_granularity(layout, granularity, layer, grad.z_shape)
    if amp_dtype is None:  # autocast's rounding differs between batch sizes by more than any fixed tolerance
        check_batch_independent(model, x, grad.outputs)
    return grad, layout


def _float_dtype(model: nn.Module) -> torch.dtype | None:
    """The floating dtype of the model's parameters (or buffers), None when it has none."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None
