"""Slices of a network: name a layer, capture its output z = h(x), differentiate above it.

A slice is named by a module path exactly as ``model.named_modules()`` prints it; the empty string (or
``"input"``) is the input slice, where z = x.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from essence.core.errors import LayerNotFoundError

Granularity = Literal["channel", "neuron"]
INPUT_LAYER = ""


def is_input_layer(layer: str) -> bool:
    return layer in ("", "input")


def layer_names(model: nn.Module) -> list[str]:
    """Every sliceable module path of ``model`` (the root module excluded)."""
    return [name for name, _ in model.named_modules() if name]


def resolve_layer(model: nn.Module, layer: str) -> nn.Module | None:
    """Return the module at ``layer`` (``None`` for the input slice).

    Raises:
        LayerNotFoundError: ``layer`` is not a module path; the message lists the closest valid names.
    """
    if not isinstance(layer, str):
        raise LayerNotFoundError(f"layer must be a module path string, got {type(layer).__name__}")
    if is_input_layer(layer):
        return None
    modules = dict(model.named_modules())
    if layer in modules and layer:
        return modules[layer]
    names = layer_names(model)
    close = difflib.get_close_matches(layer, names, n=5, cutoff=0.3)
    hint = f"closest: {', '.join(close)}" if close else f"valid names include: {', '.join(names[:8])}"
    raise LayerNotFoundError(
        f"layer {layer!r} is not a module of the model; {hint} (list them all with `essence layers --model ...`)"
    )


def reduce_units(grad: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    """Flatten a per-instance gradient ``[B, *unit_shape]`` into ``[B, U]``.

    ``channel`` sums over every axis after the channel axis (conv layers: over positions); for a layer whose
    output is ``[B, U]`` both granularities are the same. ``neuron`` keeps every element, flattened C-order.
    """
    if granularity == "neuron" or grad.ndim <= 2:
        return grad.reshape(grad.shape[0], -1)
    if granularity == "channel":
        return grad.reshape(grad.shape[0], grad.shape[1], -1).sum(-1)
    raise ValueError(f"unknown granularity {granularity!r}: use 'channel' or 'neuron'")


def unit_shape(z_shape: tuple[int, ...], granularity: Granularity) -> tuple[int, ...]:
    """Shape of one instance's units at a slice whose output is ``[B, *z_shape]``."""
    if granularity == "neuron" or len(z_shape) <= 1:
        return tuple(z_shape)
    return (z_shape[0],)


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
    """
    module = resolve_layer(model, layer)
    if module is None:
        raise LayerNotFoundError("the input slice needs no hook: differentiate with respect to x")
    cap = Capture(substitute=substitute)

    def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> torch.Tensor:
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

    def reset(_module: nn.Module, _inputs: tuple) -> None:
        cap.calls = 0

    handles = [model.register_forward_pre_hook(reset), module.register_forward_hook(hook)]
    try:
        yield cap
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def inference_state(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode with frozen parameters; restore mode and ``requires_grad`` flags on exit.

    In eval mode the instances of a batch are independent (batch norm uses running statistics, dropout is
    off), which is what lets one backward of Σᵢ qᵢ(xᵢ) give every instance's own gradient.
    """
    modes = {name: m.training for name, m in model.named_modules()}
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    try:
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        yield model
    finally:
        for name, m in model.named_modules():
            m.training = modes.get(name, m.training)
        for name, p in model.named_parameters():
            p.requires_grad_(flags.get(name, p.requires_grad))
