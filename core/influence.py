"""The influence engine: χ_j = E_{x~P}[∂q/∂z_j at z = h(x)], batched and streamed.

One forward pass through the whole model and one backward pass through the layers above the slice give
every instance of a batch its own gradient at once: in eval mode the instances are independent, so
∂(Σᵢ qᵢ)/∂zᵢ = ∂qᵢ/∂zᵢ. Per-group running sums, sums of squares and counts (float64) make the result
streamed (memory O(batch)), mergeable across shards, and give each profile its standard error.
"""

from __future__ import annotations

import queue
import threading
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from essence.core.data import as_batches, labels_of
from essence.core.devices import resolve_device
from essence.core.distributions import (
    ClassConditional,
    Distribution,
    GaussianNoise,
    Instance,
    LinearPath,
)
from essence.core.errors import (
    Cancelled,
    ClassNotFoundError,
    EmptyClassError,
    NonFiniteOutputError,
    SpecError,
)
from essence.core.quantities import Quantity, as_quantity, quantity_name
from essence.core.slices import (
    Granularity,
    capture,
    inference_state,
    is_input_layer,
    reduce_units,
    unit_shape,
)

Progress = Callable[[int, int], None]
CancelFlag = threading.Event | Callable[[], bool] | None
Autocast = Literal["bf16", "fp16"] | None


@dataclass
class InfluenceSums:
    """Running per-group sums of influence vectors: what is streamed, merged across shards and stored.

    Attributes:
        sum: float64 ``[G, U]`` Σ of instance vectors per group.
        sumsq: float64 ``[G, U]`` Σ of their squares.
        count: int64 ``[G]`` instances per group.
    """

    sum: torch.Tensor
    sumsq: torch.Tensor
    count: torch.Tensor

    @classmethod
    def zeros(cls, groups: int, units: int, device: torch.device | str = "cpu") -> InfluenceSums:
        z = torch.zeros(groups, units, dtype=torch.float64, device=device)
        return cls(z, z.clone(), torch.zeros(groups, dtype=torch.int64, device=device))

    def add(self, vectors: torch.Tensor, groups: torch.Tensor) -> None:
        """Add instance vectors ``[B, U]`` to their groups ``[B]``."""
        v = vectors.to(torch.float64)
        self.sum.index_add_(0, groups, v)
        self.sumsq.index_add_(0, groups, v * v)
        self.count.index_add_(0, groups, torch.ones_like(groups, dtype=torch.int64))

    def merge(self, other: InfluenceSums) -> InfluenceSums:
        """The sums of two disjoint shards (order does not matter)."""
        if self.sum.shape != other.sum.shape:
            raise SpecError(
                f"cannot merge sums of shapes {tuple(self.sum.shape)} and {tuple(other.sum.shape)}"
            )
        return InfluenceSums(
            self.sum + other.sum.to(self.sum.device),
            self.sumsq + other.sumsq.to(self.sum.device),
            self.count + other.count.to(self.sum.device),
        )

    def mean(self) -> torch.Tensor:
        """Mean vector per group ``[G, U]`` (NaN for an empty group)."""
        n = self.count.to(torch.float64).unsqueeze(1)
        return torch.where(n > 0, self.sum / n.clamp(min=1), torch.full_like(self.sum, float("nan")))

    def stderr(self) -> torch.Tensor:
        """Standard error of each group's mean ``[G, U]``: sqrt(s² / n), s² the unbiased variance (NaN if n < 2)."""
        n = self.count.to(torch.float64).unsqueeze(1)
        var = (self.sumsq - self.sum * self.sum / n.clamp(min=1)) / (n - 1).clamp(min=1)
        se = torch.sqrt(var.clamp(min=0) / n.clamp(min=1))
        return torch.where(n > 1, se, torch.full_like(se, float("nan")))

    def cpu(self) -> InfluenceSums:
        return InfluenceSums(self.sum.cpu(), self.sumsq.cpu(), self.count.cpu())


@dataclass(frozen=True)
class Influence:
    """Distributional influence at a slice.

    Attributes:
        mean: float32 ``[G, U]`` the influence of each unit for each group (class, instance or dataset).
        stderr: float32 ``[G, U]`` standard error of each mean over the group's instances (NaN if n < 2).
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


def _cancelled(flag: CancelFlag) -> bool:
    if flag is None:
        return False
    if isinstance(flag, threading.Event):
        return flag.is_set()
    return bool(flag())


@contextmanager
def on_device(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """Run ``model`` on ``device``, moving it back where it was afterwards."""
    try:
        original = next(model.parameters()).device
    except StopIteration:
        original = device
    moved = original != device
    if moved:
        model.to(device)
    try:
        yield model
    finally:
        if moved:
            model.to(original)


@contextmanager
def memory_format(model: nn.Module, channels_last: bool) -> Iterator[nn.Module]:
    """Hold ``model``'s 4-d parameters in channels-last format inside the block (contiguous again after)."""
    if not channels_last:
        yield model
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        model.to(memory_format=torch.contiguous_format)


def prefetch(batches: Iterator, *, pin: bool, depth: int = 2, background: bool | None = None) -> Iterator:
    """Yield ``batches`` prepared up to ``depth`` ahead in a background thread, pinned if ``pin``.

    On a GPU the next batch is decoded and preprocessed while this one computes, and pinned host memory
    lets ``.to(device, non_blocking=True)`` copy asynchronously. Order is kept; an error raised while
    preparing a batch is raised here; leaving early stops the thread. ``background`` (default: ``pin``)
    chooses the thread; on the CPU it would only compete with the compute for the same cores.
    """
    if not (pin if background is None else background):
        yield from batches
        return
    ready: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item: object) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for batch in batches:
                if not put(tuple(t.pin_memory() for t in batch) if pin else batch):
                    return
            put(end)
        except BaseException as exc:  # handed to the consumer, raised there
            put(exc)

    worker = threading.Thread(target=produce, name="essence-prefetch", daemon=True)
    worker.start()
    try:
        while (item := ready.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)


def _within(subset: np.ndarray | None, indices: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """The positions of ``subset`` (all when ``None``) that are among ``indices``, in ``indices``' order."""
    chosen = np.asarray(indices, dtype=np.int64).reshape(-1)
    if chosen.size and (chosen.min() < 0 or chosen.max() >= n):
        raise SpecError(
            f"instance indices must lie in 0..{n - 1}; got {int(chosen.min())}..{int(chosen.max())}"
        )
    return chosen if subset is None else chosen[np.isin(chosen, subset)]


def _neighbourhood(distribution: Distribution) -> list[tuple[float, float]]:
    if isinstance(distribution, LinearPath | GaussianNoise):
        return distribution.points()
    return [(1.0, 1.0)]


def _restrict(distribution: Distribution, labels: np.ndarray, names: list[str] | None) -> np.ndarray | None:
    """Instance indices a distribution is restricted to (``None``: all)."""
    if isinstance(distribution, Instance) and distribution.index is not None:
        if not 0 <= distribution.index < len(labels):
            raise SpecError(f"instance index {distribution.index} is out of range 0..{len(labels) - 1}")
        return np.array([distribution.index])
    if isinstance(distribution, ClassConditional) and distribution.cls is not None:
        idx = np.flatnonzero(labels == distribution.cls)
        if idx.size == 0:
            label = names[distribution.cls] if names and distribution.cls < len(names) else distribution.cls
            raise EmptyClassError(
                f"class {label!r} has no instances in the data: choose another class or add data"
            )
        return idx
    return None


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
) -> Influence:
    """Distributional influence χ of every unit at ``layer`` for ``quantity`` over ``distribution``.

    Args:
        model: any ``nn.Module`` mapping ``[B, ...]`` inputs to ``[B, K]`` outputs. It is run in eval mode
            with frozen parameters; its mode, ``requires_grad`` flags, device and hooks are restored.
        data: an :class:`~essence.core.data.ImageData`, ``(x [N, ...], labels [N])`` tensors, a bare
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
        indices: only these dataset positions (a shard of the data; see :mod:`essence.core.distributed`).
        channels_last: run 4-d inputs and the model in the channels-last memory format (faster convolutions
            on GPUs with tensor cores; see ``docs/scale.md`` for where it helps). Numbers are unchanged.

    Returns:
        An :class:`Influence`: ``mean [G, U]`` with G classes, instances, or 1.

    Raises:
        LayerNotFoundError, ClassNotFoundError, EmptyClassError, NonFiniteOutputError, Cancelled.
    """
    distribution = distribution or ClassConditional()
    q = as_quantity(quantity)
    dev = resolve_device(device)
    labels = labels_of(data)
    names = getattr(data, "class_names", None)
    subset = _restrict(distribution, labels, names)
    if indices is not None:
        subset = _within(subset, indices, len(labels))
    points = _neighbourhood(distribution)
    batches, n = as_batches(data, batch_size, subset)
    total = -(-n // batch_size) * len(points)
    if n == 0:
        raise EmptyClassError("the data holds no instances: nothing to compute influence over")
    was_training = model.training
    if was_training:
        warnings.warn(
            "the model was in train mode; influence is computed in eval mode (batch norm running statistics, "
            "no dropout) so that instances are independent. The model's mode is restored afterwards.",
            stacklevel=2,
        )
    if autocast is not None and autocast not in ("bf16", "fp16"):
        raise SpecError(f"autocast must be 'bf16', 'fp16' or None, got {autocast!r}")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(autocast or "")

    sums: InfluenceSums | None = None
    kept_v: list[torch.Tensor] = []
    kept_i: list[torch.Tensor] = []
    kept_y: list[torch.Tensor] = []
    kept_o: list[torch.Tensor] = []
    z_shape: tuple[int, ...] = ()
    done = 0
    group_by = distribution.group_by
    hook = nullcontext() if is_input_layer(layer) else None
    with inference_state(model), on_device(model, dev), memory_format(model, channels_last):
        if hook is None:
            hook = capture(model, layer)
        with hook as cap:
            for x, y, idx in prefetch(batches, pin=dev.type == "cuda"):
                if _cancelled(cancel):
                    raise Cancelled("cancelled by the user; nothing was kept")
                x = x.to(dev, non_blocking=True)
                y = y.to(dev, non_blocking=True)
                if channels_last and x.ndim == 4:
                    x = x.contiguous(memory_format=torch.channels_last)
                acc: torch.Tensor | None = None
                out0: torch.Tensor | None = None
                for step, (alpha, weight) in enumerate(points):
                    neighbourhood = isinstance(distribution, LinearPath | GaussianNoise)
                    xs = distribution.transform(x, alpha, step, idx) if neighbourhood else x
                    g, out = _gradient(model, xs, y, layer, q, cap, dev, amp_dtype, granularity)
                    z_shape = tuple(g[1])
                    vec = g[0] * weight
                    acc = vec if acc is None else acc + vec
                    out0 = out if out0 is None else out0
                    done += 1
                    if progress is not None:
                        progress(done, total)
                assert acc is not None and out0 is not None
                if sums is None:
                    sums = _new_sums(group_by, out0.shape[1], acc.shape[1], len(labels), num_groups, dev)
                gid = _group_ids(group_by, y, idx, dev, sums.sum.shape[0], names)
                sums.add(acc, gid)
                if keep_instances:
                    kept_v.append(acc.float().cpu())
                    kept_i.append(idx.cpu())
                    kept_y.append(y.cpu())
                    if isinstance(distribution, LinearPath | GaussianNoise):
                        with torch.no_grad():
                            out0 = model(x).float()
                    kept_o.append(out0.detach().float().cpu())
    assert sums is not None
    sums = sums.cpu()
    if group_by == "instance":
        present = sums.count > 0
        groups = torch.nonzero(present).view(-1)
        sums = InfluenceSums(sums.sum[groups], sums.sumsq[groups], sums.count[groups])
    else:
        groups = torch.arange(sums.sum.shape[0])
    return Influence(
        mean=sums.mean().float(),
        stderr=sums.stderr().float(),
        counts=sums.count.clone(),
        groups=groups,
        unit_shape=unit_shape(z_shape, granularity),
        layer=layer,
        granularity=granularity,
        quantity=quantity_name(q),
        distribution=distribution.name,
        sums=sums,
        instance_vectors=torch.cat(kept_v) if keep_instances else None,
        instance_indices=torch.cat(kept_i) if keep_instances else None,
        instance_labels=torch.cat(kept_y) if keep_instances else None,
        outputs=torch.cat(kept_o) if keep_instances else None,
    )


def _new_sums(
    group_by: str, num_outputs: int, units: int, n_data: int, num_groups: int | None, dev: torch.device
) -> InfluenceSums:
    if group_by == "class":
        return InfluenceSums.zeros(num_groups or num_outputs, units, dev)
    if group_by == "instance":
        return InfluenceSums.zeros(n_data, units, dev)
    return InfluenceSums.zeros(1, units, dev)


def _group_ids(
    group_by: str, y: torch.Tensor, idx: torch.Tensor, dev: torch.device, groups: int, names: list[str] | None
) -> torch.Tensor:
    if group_by == "class":
        if y.numel() and int(y.max()) >= groups:
            raise ClassNotFoundError(
                f"label {int(y.max())} has no class among the model's {groups} outputs: "
                "the data's classes must match the model's"
            )
        return y.long()
    if group_by == "instance":
        return idx.to(dev).long()
    return torch.zeros_like(y, dtype=torch.long)


def _gradient(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    layer: str,
    q: Quantity,
    cap: object,
    dev: torch.device,
    amp_dtype: torch.dtype | None,
    granularity: Granularity,
) -> tuple[tuple[torch.Tensor, torch.Size], torch.Tensor]:
    """One forward of the whole model and one backward above the slice: every instance's ∂q/∂z."""
    amp = torch.autocast(dev.type, dtype=amp_dtype) if amp_dtype is not None else nullcontext()
    with torch.enable_grad():
        if is_input_layer(layer):
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
        values = q(out.float(), y)
        (grad,) = torch.autograd.grad(values.sum(), leaf, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(leaf)
    if not torch.isfinite(grad).all():
        raise NonFiniteOutputError(
            "the gradient at the slice is NaN or infinite: check the model and its inputs"
        )
    return (reduce_units(grad.float(), granularity), leaf.shape[1:]), out.detach()
