"""One pass of the influence engine over the data: what it runs over, batch by batch, and through which route.

:func:`~essence.core.engine.influence.influence` asks a :class:`Question` with :class:`RunOptions`;
:func:`plan_pass` decides which instances, which batches and whether a stored z spares the layers below the
slice; :func:`run_pass` takes every batch through one of two routes (the whole model, or g alone on a stored z;
both differentiate with :func:`~essence.core.engine.gradient.quantity_gradient`) into the running sums of a
:class:`Collected`, which ``influence`` turns into its result.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
import torch
from torch import nn

from essence.core.base.errors import Cancelled, EmptyClassError
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
from essence.core.engine.distributions import Distribution, GaussianNoise, LinearPath
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
from essence.core.engine.quantities import Quantity
from essence.core.engine.slices import (
    Capture,
    Granularity,
    Layout,
    capture,
    check_granularity,
    input_layout,
    is_input_layer,
    record_layout,
)
from essence.core.engine.sums import InfluenceSums
from essence.core.inputs.data import as_batches, labels_of

__all__ = [
    "Autocast",
    "Collected",
    "Plan",
    "Progress",
    "Question",
    "RunOptions",
    "batch_gradient",
    "float_dtype",
    "plan_pass",
    "run_pass",
]

Progress = Callable[[int, int], None]
Autocast = Literal["bf16", "fp16"] | None
# (x [B, ...] — or a stored z [B, *z_shape] —, labels [B], dataset positions [B])
Batches = Iterable[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


# --------------------------------------------------------------------------------------- what the pass is


@dataclass(frozen=True)
class Question:
    """What is asked: the slice, the quantity, the distribution of interest and the units."""

    layer: str
    q: Quantity
    distribution: Distribution
    granularity: Granularity


@dataclass(frozen=True)
class RunOptions:
    """How the pass runs: settings of :func:`influence` that do not change what is asked."""

    device: torch.device
    amp_dtype: torch.dtype | None
    keep_instances: bool
    num_groups: int | None
    progress: Progress | None
    cancel: CancelFlag
    channels_last: bool


@dataclass(frozen=True)
class Plan:
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


def plan_pass(
    model: nn.Module,
    data: object,
    ask: Question,
    batch_size: int,
    indices: Sequence[int] | np.ndarray | None,
    slices: SliceCache | None,
    activations: ActivationSource | None,
) -> Plan:
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
    return Plan(batches, n, total, subset, rows, slot, positions, points, stored)


# --------------------------------------------------------------------------------------- running the pass


@dataclass
class Collected:
    """What the pass has gathered so far (the running sums appear with the first batch)."""

    sums: InfluenceSums | None = None
    kept: tuple[list[torch.Tensor], ...] = field(default_factory=lambda: ([], [], [], []))
    z_shape: tuple[int, ...] = ()
    layout: Layout = "unknown"
    done: int = 0


def run_pass(
    model: nn.Module,
    ask: Question,
    plan: Plan,
    run: RunOptions,
    recording: AbstractContextManager[ActivationRecorder] | None,
) -> Collected:
    """Every batch through the route, into the running sums (and the kept rows, and the recorder).

    Raises:
        Cancelled: the cancel flag was set; nothing is kept or recorded.
    """
    got = Collected()  # kept: vectors, dataset positions, labels, outputs
    model_dtype = float_dtype(model)
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
    plan: Plan,
    x: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor,
    got: Collected,
    run: RunOptions,
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
    got: Collected,
    vectors: torch.Tensor,
    outputs: torch.Tensor,
    y: torch.Tensor,
    idx: torch.Tensor,
    ask: Question,
    plan: Plan,
    run: RunOptions,
) -> None:
    """Add a batch's vectors ``[B, U]`` to their groups' running sums (made, sized, with the first batch)."""
    group_by = ask.distribution.group_by
    if got.sums is None:
        got.sums = new_sums(
            group_by, outputs.shape[1], vectors.shape[1], plan.rows, run.num_groups, run.device
        )
    got.sums.add(vectors, group_ids(group_by, y, plan.slot(idx), run.device, got.sums.sum.shape[0]))


def _keep(
    got: Collected, vectors: torch.Tensor, idx: torch.Tensor, y: torch.Tensor, outputs: torch.Tensor
) -> None:
    """Keep a batch's own vectors ``[B, U]``, positions, labels and outputs ``[B, K]`` (on the CPU)."""
    kept_vectors = vectors if vectors.dtype == torch.float64 else vectors.float()
    for kept, t in zip(got.kept, (kept_vectors, idx, y, outputs.detach().float()), strict=True):
        kept.append(t.cpu())


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
    model: nn.Module, ask: Question, plan: Plan, cap: Capture | None, amp_dtype: torch.dtype | None
) -> _Route:
    if plan.stored is not None:
        return _AboveSlice(model, ask, plan.stored)
    return _WholeModel(model, ask, cap, amp_dtype)


@dataclass(frozen=True)
class _WholeModel:
    """The full pass: one forward of the whole model, one backward above the slice (z captured, or the input)."""

    model: nn.Module
    ask: Question
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
    ask: Question
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


def float_dtype(model: nn.Module) -> torch.dtype | None:
    """The floating dtype of the model's parameters (or buffers), None when it has none."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.dtype
    return None
