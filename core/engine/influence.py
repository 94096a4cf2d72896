"""The influence engine: χ_j = E_{x~P}[∂q/∂z_j at z = h(x)], batched and streamed.

One forward pass through the whole model and one backward pass through the layers above the slice give
every instance of a batch its own gradient at once: in eval mode the instances are independent, so
∂(Σᵢ qᵢ)/∂zᵢ = ∂qᵢ/∂zᵢ. Per-group running sums, sums of squares and counts (float64,
:class:`~essence.core.engine.sums.InfluenceSums`) make the result streamed (memory O(batch)), mergeable across shards,
and give each profile its standard error.

:func:`influence` reads as its steps: plan the pass (which instances, which batches, a stored z or not), run it
batch by batch through one of two routes (the whole model, or g alone on a stored z; both differentiate with
:func:`~essence.core.engine.gradient.quantity_gradient`), and turn the running sums into an :class:`Influence`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import torch
from torch import nn

from essence.core.base.devices import resolve_device
from essence.core.base.errors import Cancelled, EmptyClassError, SpecError
from essence.core.base.independence import check_batch_independent
from essence.core.base.model_state import CancelFlag, cancelled, inference_state, memory_format, on_device
from essence.core.engine.activation_cache import SliceCache
from essence.core.engine.activation_source import (
    ActivationRecorder,
    ActivationSource,
    above_batch_size,
    moves_input,
    slice_batches,
    slice_layout,
    stored_gradient,
    usable_slice,
)
from essence.core.engine.distributions import ClassConditional, Distribution, GaussianNoise, LinearPath
from essence.core.engine.gradient import BatchGradient, quantity_gradient
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
    input_layout,
    is_input_layer,
    record_layout,
    unit_shape,
)
from essence.core.engine.sums import InfluenceSums
from essence.core.inputs.data import as_batches, labels_of

__all__ = [
    "Autocast",
    "BatchGradient",
    "CancelFlag",
    "Influence",
    "Progress",
    "batch_gradient",
    "influence",
]

Progress = Callable[[int, int], None]
Autocast = Literal["bf16", "fp16"] | None
# (x [B, ...] — or a stored z [B, *z_shape] —, labels [B], dataset positions [B])
Batches = Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


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
    ask = _Question(layer, as_quantity(quantity), distribution or ClassConditional(), granularity)
    dev = resolve_device(device)
    plan = _plan(model, data, ask, batch_size, indices, slices, activations)
    if model.training:
        warnings.warn(
            "the model was in train mode; influence is computed in eval mode (batch norm running statistics, "
            "no dropout) so that instances are independent. The model's mode is restored afterwards.",
            stacklevel=2,
        )
    run = _RunOptions(dev, _amp_dtype(autocast), keep_instances, num_groups, progress, cancel, channels_last)
    recording = _recorder(model, data, ask, plan, run, activations)
    got = _run_pass(model, ask, plan, run, recording)
    model_dtype = _float_dtype(model)
    result_dtype = torch.float64 if model_dtype == torch.float64 and run.amp_dtype is None else torch.float32
    return _result(got, ask, plan, result_dtype)


# --------------------------------------------------------------------------------------- what the pass is


@dataclass(frozen=True)
class _Question:
    """What is asked: the slice, the quantity, the distribution of interest and the units."""

    layer: str
    q: Quantity
    distribution: Distribution
    granularity: Granularity


@dataclass(frozen=True)
class _RunOptions:
    """How the pass runs: settings of :func:`influence` that do not change what is asked."""

    device: torch.device
    amp_dtype: torch.dtype | None
    keep_instances: bool
    num_groups: int | None
    progress: Progress | None
    cancel: CancelFlag
    channels_last: bool


@dataclass(frozen=True)
class _Plan:
    """The batches one pass runs over, and which running-sum row each instance's vector goes into.

    Attributes:
        batches: the inputs (or the stored z) with labels and dataset positions, batch by batch.
        n: instances asked about. total: batches × neighbourhood points (the progress total).
        subset: the dataset positions asked about (``None``: all of them).
        rows, slot, positions: per-instance sum rows (:func:`~essence.core.engine.grouping.instance_slots`).
        points: ``(α, weight)`` of each instance's neighbourhood (one point of weight 1 without one).
        stored: the stored z that g runs on (``None``: the whole model runs).
    """

    batches: Batches
    n: int
    total: int
    subset: np.ndarray | None
    rows: int
    slot: Callable[[torch.Tensor], torch.Tensor]
    positions: torch.Tensor
    points: list[tuple[float, float]]
    stored: SliceCache | None


def _plan(
    model: nn.Module,
    data: object,
    ask: _Question,
    batch_size: int,
    indices: Sequence[int] | np.ndarray | None,
    slices: SliceCache | None,
    activations: ActivationSource | None,
) -> _Plan:
    """Which instances the question is about, in which batches, and whether a stored z spares the layers below.

    Raises:
        ClassNotFoundError, SpecError: a distribution or indices outside the data; a slice of other data.
        EmptyClassError: no instance is asked about.
    """
    labels = labels_of(data)
    subset = restrict(ask.distribution, labels, getattr(data, "class_names", None))
    if indices is not None:
        subset = within(subset, indices, len(labels))
    points = neighbourhood_points(ask.distribution)
    batches: Batches
    batches, n = as_batches(data, batch_size, subset)
    stored = None
    if not is_input_layer(ask.layer):
        stored = usable_slice(slices, activations, model, data, ask.layer, ask.distribution)
    if stored is not None:  # the layers below the slice never run: g forward and backward on the stored z
        batch_size = above_batch_size(stored, batch_size)  # g alone takes larger batches in the same memory
        batches = slice_batches(stored, batch_size, subset)
    rows, slot, positions = instance_slots(subset, len(labels))
    if n == 0:
        raise EmptyClassError("the data holds no instances: nothing to compute influence over")
    total = -(-n // batch_size) * len(points)
    return _Plan(batches, n, total, subset, rows, slot, positions, points, stored)


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
    ask: _Question,
    plan: _Plan,
    run: _RunOptions,
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


# --------------------------------------------------------------------------------------- running the pass


@dataclass
class _Collected:
    """What the pass has gathered so far (the running sums appear with the first batch)."""

    sums: InfluenceSums | None = None
    kept: tuple[list[torch.Tensor], ...] = field(default_factory=lambda: ([], [], [], []))
    z_shape: tuple[int, ...] = ()
    layout: Layout = "unknown"
    done: int = 0


def _run_pass(
    model: nn.Module,
    ask: _Question,
    plan: _Plan,
    run: _RunOptions,
    recording: AbstractContextManager[ActivationRecorder] | None,
) -> _Collected:
    """Every batch through the route, into the running sums (and the kept rows, and the recorder).

    Raises:
        Cancelled: the cancel flag was set; nothing is kept or recorded.
    """
    got = _Collected()  # kept: vectors, dataset positions, labels, outputs
    model_dtype = _float_dtype(model)
    dev = run.device
    neighbourhood = moves_input(ask.distribution)
    with inference_state(model), on_device(model, dev), memory_format(model, run.channels_last):
        below = is_input_layer(ask.layer) or plan.stored is not None
        hook: AbstractContextManager[Capture | None] = nullcontext() if below else capture(model, ask.layer)
        with hook as cap, recording or nullcontext() as recorder:
            route = _route(model, ask, plan, cap, run.amp_dtype)
            for x, y, idx in prefetch(iter(plan.batches), pin=dev.type == "cuda"):
                if cancelled(run.cancel):
                    raise Cancelled("cancelled by the user; nothing was kept")
                x, y = _to_device(x, y, dev, model_dtype, run.channels_last)
                vectors, outputs, z = _batch_vectors(route, ask.distribution, plan, x, y, idx, got, run)
                if recorder is not None and z is not None:
                    recorder.write(z, y, outputs, got.layout)
                _add(got, vectors, outputs, y, idx, ask, plan, run)
                if run.keep_instances:
                    if neighbourhood:  # the outputs at the instance itself, not at a path point
                        with torch.no_grad():
                            outputs = model(x).float()
                    _keep(got, vectors, idx, y, outputs)
    return got


def _to_device(
    x: torch.Tensor, y: torch.Tensor, dev: torch.device, model_dtype: torch.dtype | None, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch on the model's device, in its floating dtype and memory format."""
    x = x.to(dev, non_blocking=True)
    y = y.to(dev, non_blocking=True)
    if x.is_floating_point() and model_dtype is not None and x.dtype != model_dtype:
        x = x.to(model_dtype)  # a float64 model computes in float64 on the same data
    if channels_last and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x, y


def _batch_vectors(
    route: _Route,
    distribution: Distribution,
    plan: _Plan,
    x: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor,
    got: _Collected,
    run: _RunOptions,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Each instance's vector of one batch: its gradients weighted over the neighbourhood's points.

    Returns:
        ``(vectors [B, U], outputs [B, K] at the first point, z [B, *z_shape] at the last point)``.
    """
    acc: torch.Tensor | None = None
    out0: torch.Tensor | None = None
    z: torch.Tensor | None = None
    for step, (alpha, weight) in enumerate(plan.points):
        xs = (
            distribution.transform(x, alpha, step, idx)
            if isinstance(distribution, LinearPath | GaussianNoise)
            else x
        )
        if got.sums is None and step == 0:  # the first batch: check what every later one assumes
            grad, got.layout = route.first(xs, y)
        else:
            grad = route.gradient(xs, y)
        got.z_shape, z = grad.z_shape, grad.z
        vec = grad.vectors * weight
        acc = vec if acc is None else acc + vec
        out0 = grad.outputs if out0 is None else out0
        got.done += 1
        if run.progress is not None:
            run.progress(got.done, plan.total)
    assert acc is not None and out0 is not None
    return acc, out0, z


def _add(
    got: _Collected,
    vectors: torch.Tensor,
    outputs: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor,
    ask: _Question,
    plan: _Plan,
    run: _RunOptions,
) -> None:
    """Add a batch's vectors ``[B, U]`` to their groups' running sums (made, sized, with the first batch)."""
    group_by = ask.distribution.group_by
    if got.sums is None:
        got.sums = new_sums(
            group_by, outputs.shape[1], vectors.shape[1], plan.rows, run.num_groups, run.device
        )
    got.sums.add(vectors, group_ids(group_by, y, plan.slot(idx), run.device, got.sums.sum.shape[0]))


def _keep(
    got: _Collected, vectors: torch.Tensor, idx: torch.Tensor, y: torch.Tensor, outputs: torch.Tensor
) -> None:
    """Keep a batch's own vectors ``[B, U]``, positions, labels and outputs ``[B, K]`` (on the CPU)."""
    kept_vectors = vectors if vectors.dtype == torch.float64 else vectors.float()
    for kept, t in zip(got.kept, (kept_vectors, idx, y, outputs.detach().float()), strict=True):
        kept.append(t.cpu())


def _result(got: _Collected, ask: _Question, plan: _Plan, dtype: torch.dtype) -> Influence:
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


# --------------------------------------------------------------------------------------- the two routes


class _Route(Protocol):
    """How a batch's gradient is taken: the whole model, or g alone on a stored z."""

    def gradient(self, x: torch.Tensor, y: torch.Tensor) -> BatchGradient:
        """Every instance's ∂q/∂z for inputs (or stored z) ``x [B, ...]`` and labels ``y [B]``."""
        ...

    def first(self, x: torch.Tensor, y: torch.Tensor) -> tuple[BatchGradient, Layout]:
        """:meth:`gradient` on the first batch, checking what every later batch assumes; and z's layout."""
        ...


def _route(
    model: nn.Module, ask: _Question, plan: _Plan, cap: Capture | None, amp_dtype: torch.dtype | None
) -> _Route:
    if plan.stored is not None:
        return _AboveSlice(model, ask, plan.stored)
    return _WholeModel(model, ask, cap, amp_dtype)


@dataclass(frozen=True)
class _WholeModel:
    """The full pass: one forward of the whole model, one backward above the slice (z captured, or the input)."""

    model: nn.Module
    ask: _Question
    cap: Capture | None
    amp_dtype: torch.dtype | None

    def gradient(self, x: torch.Tensor, y: torch.Tensor) -> BatchGradient:
        a = self.ask
        return batch_gradient(self.model, x, y, a.layer, a.q, self.cap, self.amp_dtype, a.granularity)

    def first(self, x: torch.Tensor, y: torch.Tensor) -> tuple[BatchGradient, Layout]:
        """:meth:`gradient`, checking the layout of the slice and batch independence.

        Raises:
            LayoutError: the granularity does not fit the slice's layout.
            BatchCouplingError: an instance alone gives other outputs than inside the batch.
        """
        layer, granularity = self.ask.layer, self.ask.granularity
        if is_input_layer(layer):
            grad = self.gradient(x, y)
            layout = input_layout(grad.z_shape)
        else:
            with record_layout(self.model, layer) as record:
                grad = self.gradient(x, y)
            layout = record.layout(grad.z_shape)
        check_granularity(layout, granularity, layer, grad.z_shape)
        if (
            self.amp_dtype is None
        ):  # autocast's rounding differs between batch sizes by more than any tolerance
            check_batch_independent(self.model, x, grad.outputs)
        return grad, layout


@dataclass(frozen=True)
class _AboveSlice:
    """g alone on a stored z: the layers below the slice never run."""

    model: nn.Module
    ask: _Question
    stored: SliceCache

    def gradient(self, x: torch.Tensor, y: torch.Tensor) -> BatchGradient:
        return stored_gradient(self.stored, x, y, self.ask.q, self.ask.granularity)

    def first(self, x: torch.Tensor, y: torch.Tensor) -> tuple[BatchGradient, Layout]:
        """:meth:`gradient`, checking the granularity against the layout recorded with the stored z.

        Raises:
            LayoutError: the granularity does not fit the stored z's layout.
        """
        layout = slice_layout(
            self.stored, self.model
        )  # a full pass checks the layer itself; here, the record
        check_granularity(layout, self.ask.granularity, self.ask.layer, tuple(x.shape[1:]))
        return self.gradient(x, y), layout


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
        A :class:`~essence.core.engine.gradient.BatchGradient` with vectors ``[B, U]`` and outputs ``[B, K]``.

    Raises:
        SpecError: the model does not return ``[B, K]``, or never reaches ``layer``.
        NonFiniteOutputError: the outputs or the gradient hold NaN or infinity.
    """
    amp = torch.autocast(x.device.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()

    def forward() -> tuple[torch.Tensor, torch.Tensor | None]:
        if cap is None:  # the input slice: z is x itself
            leaf = x.detach().requires_grad_(True)
            with amp:
                return model(leaf), leaf
        with amp:
            out = model(x)
        return out, cap.leaf

    return quantity_gradient(forward, y, q, granularity, layer=layer)


def _float_dtype(model: nn.Module) -> torch.dtype | None:
    """The floating dtype of the model's parameters (or buffers), None when it has none."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None
