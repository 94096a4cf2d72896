"""Slices of a network: name a layer, capture its output z = h(x), differentiate above it.

A slice is named by a module path exactly as ``model.named_modules()`` prints it; the empty string (or
``"input"``) is the input slice, where z = x.

Units. ``neuron`` keeps every element of z. The coarser units depend on the slice's *layout*, which is read from
the modules that produce z (:func:`record_layout`), never guessed from its shape:

* ``channels_first`` (``[B, C, *spatial]``: conv, batch norm, pooling outputs, the input images): ``channel``
  sums each channel over its positions;
* ``channels_last`` (``[B, H, W, C]``, Swin-like) and ``tokens`` (``[B, T, D]``, ViT-like; a linear layer or
  layer norm over the last axis): ``feature`` sums each of the last axis's features over the positions or
  tokens, ``token`` sums each position or token over its features;
* ``features`` (``[B, U]``): every granularity is the same;
* ``unknown`` (a custom leaf or a reshape after the last known module): only ``neuron``.

A granularity that does not fit the layout is refused (:class:`LayoutError`) with the ones that do.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from essence.core.base.errors import LayerNotFoundError, SpecError
from essence.core.base.model_state import (
    inference_state as inference_state,  # re-exported: the engine's users reach it here
)

Granularity = Literal["channel", "neuron", "feature", "token"]
GRANULARITIES: tuple[str, ...] = ("channel", "neuron", "feature", "token")
Layout = Literal["features", "channels_first", "channels_last", "tokens", "unknown"]
INPUT_LAYER = ""
# Which granularities each layout supports (neuron always; the same units as neuron on ``features``).
FITS: dict[str, tuple[str, ...]] = {
    "features": GRANULARITIES,
    "channels_first": ("channel", "neuron"),
    "channels_last": ("feature", "token", "neuron"),
    "tokens": ("feature", "token", "neuron"),
    "unknown": ("neuron",),
}


class LayoutError(SpecError):
    """A unit granularity that does not fit the layout of the slice's output."""


class DegenerateUnitsError(LayoutError):
    """Every unit of a granularity carries zero influence up to rounding (:func:`check_units_carry`)."""


_INSTEAD = {"token": "feature", "channel": "neuron", "feature": "token"}  # units not summing the shifted axis


def is_input_layer(layer: str) -> bool:
    return layer in ("", "input")


def layer_names(model: nn.Module) -> list[str]:
    """Every sliceable module path of ``model`` (the root module excluded).

    Examples:
        >>> from torch import nn
        >>> layer_names(nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Sequential(nn.Linear(3, 2))))
        ['0', '1', '2', '2.0']
    """
    return [name for name, _ in model.named_modules() if name]


def resolve_layer(model: nn.Module, layer: str) -> nn.Module | None:
    """Return the module at ``layer`` (``None`` for the input slice).

    Raises:
        LayerNotFoundError: ``layer`` is not a module path; the message lists the closest valid names.

    Examples:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> resolve_layer(model, "1"), resolve_layer(model, "") is None  # "" is the input slice
        (ReLU(), True)
        >>> resolve_layer(model, "3")
        Traceback (most recent call last):
            ...
        essence.core.base.errors.LayerNotFoundError: layer '3' is not a module of the model; valid names include: 0, 1, 2 (list them all with `essence layers --model ...`)
    """
    if not isinstance(layer, str):
        raise LayerNotFoundError(f"layer must be a module path string, got {type(layer).__name__}")
    if is_input_layer(layer):
        return None
    modules: dict[str, nn.Module] = dict(model.named_modules())
    if layer in modules and layer:
        return modules[layer]
    names = layer_names(model)
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.3)
    hint = f"closest: {', '.join(close)}" if close else f"valid names include: {', '.join(names[:8])}"
    raise LayerNotFoundError(
        f"layer {layer!r} is not a module of the model; {hint} (list them all with `essence layers --model ...`)"
    )


def reduce_units(grad: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """Flatten a per-instance gradient ``[B, *z_shape]`` into ``[B, U]``.

    ``channel`` sums over every axis after axis 1 (channels-first conv outputs: over positions); ``feature``
    sums over every axis between the batch and the last one (``[B, T, D]`` → ``[B, D]``); ``token`` sums over
    the last axis (``[B, T, D]`` → ``[B, T]``, flattened C-order). For a layer whose output is ``[B, U]``
    all granularities are the same. ``neuron`` keeps every element, flattened C-order. Which granularity fits
    a slice is :func:`check_granularity`'s to say.

    Raises:
        SpecError: an unknown granularity.
    """
    if granularity not in GRANULARITIES:
        raise SpecError(f"unknown granularity {granularity!r}: use one of {', '.join(GRANULARITIES)}")
    b = grad.shape[0]
    if granularity == "neuron" or grad.ndim <= 2:
        return grad.reshape(b, -1)
    if granularity == "channel":
        return grad.reshape(b, grad.shape[1], -1).sum(-1)
    if granularity == "feature":
        return grad.reshape(b, -1, grad.shape[-1]).sum(1)
    return grad.sum(-1).reshape(b, -1)


def check_units_carry(grad: torch.Tensor, units: torch.Tensor, granularity: Granularity) -> None:
    """Refuse units whose influence is zero up to floating-point rounding for every instance of a batch.

    A unit sums the gradient over n elements of z. When the layers above ignore a shift shared by them (a
    LayerNorm over a token's features, an InstanceNorm over a channel's positions) the exact sum is zero and
    the computed one is rounding: summing n terms errs by at most (n − 1)·ε·Σ|gₖ| (Higham, *Accuracy and
    Stability of Numerical Algorithms*, §4.2), each gₖ adding a few ε of its own; so a unit is *degenerate*
    when |Σ gₖ| ≤ n·ε·Σ|gₖ|, ε the machine epsilon of the gradient's dtype (a real influence is of the order
    of Σ|gₖ|, 1/(n·ε) times more). Refused, not warned: when every unit of every instance of ``grad`` is
    degenerate, any ranking of them ranks noise. An all-zero gradient (the slice is never read) is let through.

    Args:
        grad, units, granularity: the gradient ``[B, *z_shape]``, its ``reduce_units`` ``[B, U]``, their units.

    Raises:
        DegenerateUnitsError: every unit of every instance is zero up to rounding, and the gradient is not.

    Examples:
        >>> import torch
        >>> g = torch.randn(2, 3, 4)
        >>> check_units_carry(g, reduce_units(g, "token"), "token")  # a real influence: nothing said
        >>> g = g - g.mean(-1, keepdim=True)  # what a LayerNorm over the features gives
        >>> try:
        ...     check_units_carry(g, reduce_units(g, "token"), "token")
        ... except DegenerateUnitsError as e:
        ...     print(str(e)[:58])
        every token unit's influence is zero up to rounding (|Σ ∂q
    """
    n = grad[:1].numel() // max(1, units.shape[1]) if len(grad) else 0
    if granularity == "neuron" or n < 2 or not grad.is_floating_point():
        return
    scale = reduce_units(grad.abs(), granularity)
    if not bool((scale > 0).any()):
        return
    eps = torch.finfo(grad.dtype).eps
    if bool((units.abs() <= n * eps * scale).all()):
        instead = _INSTEAD.get(granularity, "neuron")
        raise DegenerateUnitsError(
            f"every {granularity} unit's influence is zero up to rounding (|Σ ∂q/∂z| ≤ n·ε·Σ|∂q/∂z| over its "
            f"{n} elements, for every instance): the layers above ignore a shift shared by a unit's elements "
            "(a LayerNorm over a token's features, an InstanceNorm or GroupNorm over a channel's positions), so "
            f"ranking these units would rank rounding noise: use granularity='{instead}' (or 'neuron')"
        )


def unit_shape(z_shape: tuple[int, ...], granularity: Granularity) -> tuple[int, ...]:
    """Shape of one instance's units at a slice whose output is ``[B, *z_shape]``."""
    if granularity == "neuron" or len(z_shape) <= 1:
        return tuple(z_shape)
    if granularity == "feature":
        return (z_shape[-1],)
    if granularity == "token":
        return tuple(z_shape[:-1])
    return (z_shape[0],)


def check_granularity(layout: Layout, granularity: str, layer: str, z_shape: tuple[int, ...]) -> None:
    """Refuse a granularity that does not fit the slice's layout, naming the ones that do.

    Args:
        layout: the layout of the slice's output (see :func:`record_layout`).
        granularity: the granularity asked for.
        layer: the slice's module path (for the message).
        z_shape: one instance's z shape (for the message).

    Raises:
        LayoutError: ``granularity`` does not fit ``layout``.
        SpecError: an unknown granularity.
    """
    if granularity not in GRANULARITIES:
        raise SpecError(f"unknown granularity {granularity!r}: use one of {', '.join(GRANULARITIES)}")
    fits = FITS[layout]
    if granularity in fits:
        return
    what = {
        "channels_last": "channels last ([B, H, W, C]): its channels are the last axis",
        "tokens": "tokens ([B, T, D]): one feature vector per token",
        "channels_first": "channels first ([B, C, H, W])",
        "unknown": "not known (no module Essence knows produces it)",
    }[layout]
    shape = ", ".join(str(d) for d in z_shape)
    raise LayoutError(
        f"layer {layer or 'input'!r} outputs [B, {shape}] whose layout is {what}, so {granularity} units do "
        f"not apply: use --granularity {' or '.join(fits)}"
    )


# Modules that act elementwise keep whatever layout their input has: look past them.
_ELEMENTWISE_NAMES = (
    "ReLU ReLU6 GELU SiLU Sigmoid Tanh Hardswish Hardsigmoid LeakyReLU ELU SELU CELU Mish Softplus Hardtanh "
    "Identity Dropout Dropout1d Dropout2d Dropout3d AlphaDropout StochasticDepth"
)
_ELEMENTWISE = frozenset(_ELEMENTWISE_NAMES.split())
# The same facts for the operators of a graph module (an unflattened torch.export program's leaves): the
# first match of the last operator that is not elementwise decides.
_OPS_CHANNELS_FIRST = (
    "conv",
    "batch_norm",
    "max_pool",
    "avg_pool",
    "group_norm",
    "upsample",
    "pixel_shuffle",
)
_OPS_LAST_AXIS = ("linear", "layer_norm", "rms_norm", "addmm")
_OPS_ELEMENTWISE = (
    "relu",
    "gelu",
    "silu",
    "sigmoid",
    "tanh",
    "hardswish",
    "hardsigmoid",
    "hardtanh",
    "elu",
    "mish",
    "softplus",
    "dropout",
    "getitem",
    "clone",
    "alias",
    "detach",
    "add",
    "mul",
    "_assert",
    "sym_",
)
_CHANNELS_FIRST = (
    nn.modules.conv._ConvNd,
    nn.modules.batchnorm._NormBase,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.pooling._MaxPoolNd,
    nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd,
    nn.modules.pooling._AdaptiveMaxPoolNd,
    nn.Upsample,
    nn.PixelShuffle,
)
_LAST_AXIS = (nn.Linear, nn.LayerNorm, nn.RMSNorm)


@dataclass
class LayoutRecord:
    """The leaf modules run during a forward up to the slice's output, in order: ``(module, output shape)``.

    Attributes:
        calls: every leaf module's call, in order (the slice's own output marks where to read).
        reached: how many calls had been made when the slice's output was produced (None: not yet).
    """

    calls: list[tuple[nn.Module, tuple[int, ...]]]
    reached: int | None = None

    def layout(self, z_shape: tuple[int, ...]) -> Layout:
        """The layout of the slice's output ``[B, *z_shape]``, read from the last module that fixed it."""
        if len(z_shape) <= 1:
            return "features"
        for module, shape in reversed(self.calls[: self.reached]):
            if shape != tuple(z_shape):
                return "unknown"  # reshaped or permuted by code Essence cannot read
            kind = _layout_of(module, len(z_shape))
            if kind is not None:
                return kind
        return "unknown"


def _layout_of(module: nn.Module, rank: int) -> Layout | None:
    """The layout a leaf module's ``[B, *rank dims]`` output has (None: elementwise, look further back)."""
    name = type(module).__name__
    graph = getattr(module, "graph", None)
    if isinstance(graph, torch.fx.Graph):
        return _graph_layout(graph, rank)
    if isinstance(module, nn.PReLU):
        return "channels_first" if module.num_parameters > 1 else None
    if name in _ELEMENTWISE:
        return None
    if isinstance(module, _CHANNELS_FIRST):
        return "channels_first"
    if isinstance(module, _LAST_AXIS):
        return "tokens" if rank == 2 else "channels_last"
    dims = getattr(module, "dims", None)
    if name == "Permute" and isinstance(dims, list | tuple) and rank == 3:  # torchvision's Permute (Swin)
        permuted: dict[tuple[int, ...], Layout] = {
            (0, 2, 3, 1): "channels_last",
            (0, 3, 1, 2): "channels_first",
        }
        return permuted.get(tuple(dims), "unknown")
    return "unknown"


def _graph_layout(graph: torch.fx.Graph, rank: int) -> Layout | None:
    for node in reversed(list(graph.nodes)):
        if node.op != "call_function":
            continue
        target = str(getattr(node.target, "__name__", node.target)).lower()
        op = target.split(".")[1] if target.startswith("aten.") and "." in target else target
        if any(op.startswith(e) or op == e for e in _OPS_ELEMENTWISE):
            continue
        if any(k in op for k in _OPS_CHANNELS_FIRST):
            return "channels_first"
        if any(k in op for k in _OPS_LAST_AXIS):
            return "tokens" if rank == 2 else "channels_last"
        return "unknown"
    return None


@contextmanager
def record_layout(model: nn.Module, layer: str) -> Iterator[LayoutRecord]:
    """Record the leaf modules run up to ``layer``'s output during the forward passes in the context.

    Every leaf of the model is watched, not only those inside the slice: a slice that is itself elementwise
    (a ReLU) keeps the layout of the module before it. For the input slice nothing is recorded: the inputs'
    layout is the data's (:func:`input_layout`).

    Raises:
        LayerNotFoundError: unknown layer.
    """
    record = LayoutRecord([])
    module = resolve_layer(model, layer)
    leaves = [] if module is None else [m for m in model.modules() if next(m.children(), None) is None]

    def hook(m: nn.Module, _inputs: tuple[object, ...], output: object) -> None:
        if isinstance(output, torch.Tensor) and record.reached is None:
            record.calls.append((m, tuple(output.shape[1:])))

    def reached(_m: nn.Module, _inputs: tuple[object, ...], _output: object) -> None:
        if record.reached is None:
            record.reached = len(record.calls)

    handles = [leaf.register_forward_hook(hook) for leaf in leaves]
    if module is not None:  # registered last: a leaf slice's own call is recorded before the mark
        handles.append(module.register_forward_hook(reached))
    try:
        yield record
    finally:
        for handle in handles:
            handle.remove()


def input_layout(x_shape: tuple[int, ...]) -> Layout:
    """The layout of inputs ``[B, *x_shape]``: images are channels-first by the data's contract."""
    by_rank: dict[int, Layout] = {1: "features", 3: "channels_first"}
    return by_rank.get(len(x_shape), "unknown")


@dataclass
class Capture:
    """What a :func:`capture` context recorded during a forward pass.

    Attributes:
        leaf: z = h(x) as a leaf tensor that requires grad, ``[B, *unit_shape]`` (``None`` until the forward).
        substitute: a tensor to use instead of the layer's output (experts: g(z) with a masked z).
    """

    leaf: torch.Tensor | None = None
    substitute: torch.Tensor | None = None
    calls: int = 0


@contextmanager
def capture(model: nn.Module, layer: str, substitute: torch.Tensor | None = None) -> Iterator[Capture]:
    """Capture z at ``layer`` as a gradient leaf, detached from everything below the slice.

    Inside the context, each forward pass of ``model`` replaces the layer's output by a clone of a fresh
    leaf ``z`` (``requires_grad=True``): the backward of any quantity then stops at the slice, so only the
    layers above it are differentiated, and ``torch.autograd.grad(q, capture.leaf)`` gives ∂q/∂z. The clone
    keeps an in-place op above the slice (``ReLU(inplace=True)``) from corrupting the recorded z.

    With ``substitute``, the layer's output is replaced by that tensor instead (used to evaluate g(z) by
    re-running h when the model cannot be split).

    The hook is removed on exit, also on error.

    Raises:
        LayerNotFoundError: unknown layer.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
        >>> with capture(model, "1") as cap:
        ...     logits = model(torch.randn(5, 4))
        >>> cap.leaf.shape, cap.leaf.requires_grad  # z at the slice, a leaf of the graph above it
        (torch.Size([5, 3]), True)
        >>> (grad,) = torch.autograd.grad(logits[:, 0].sum(), cap.leaf)  # ∂logit₀/∂z: the last layer's row 0
        >>> torch.allclose(grad, model[2].weight[0].expand(5, 3))
        True
    """
    module = resolve_layer(model, layer)
    if module is None:
        raise LayerNotFoundError("the input slice needs no hook: differentiate with respect to x")
    cap = Capture(substitute=substitute)

    def hook(_module: nn.Module, _inputs: tuple[object, ...], output: torch.Tensor) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise LayerNotFoundError(
                f"layer {layer!r} returns {type(output).__name__}, not a tensor: pick a layer with a tensor output"
            )
        cap.calls += 1
        if cap.calls > 1:
            raise LayerNotFoundError(
                f"layer {layer!r} is called more than once per forward pass (a shared module): "
                "pick a layer used once, e.g. a wrapper module around it"
            )
        if cap.substitute is not None:
            return cap.substitute
        cap.leaf = output.detach().requires_grad_(True)
        return cap.leaf.clone()

    def reset(_module: nn.Module, _inputs: tuple[object, ...]) -> None:
        cap.calls = 0

    handles = [model.register_forward_pre_hook(reset), module.register_forward_hook(hook)]
    try:
        yield cap
    finally:
        for handle in handles:
            handle.remove()
