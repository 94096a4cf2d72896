"""Interpreting units: what in the input a unit responds to (paper §3.2).

A unit is interpreted by the gradient of its activation (summed over positions for a channel) with respect to
the input: the pixels that most change the unit. Three backward rules give three readings of a unit:

* ``saliency``: the plain gradient (autograd);
* ``guided`` (guided backprop): at every ReLU only positive gradients pass, and only where the forward
  input was positive: ∂ᵢₙ = 1[x > 0] · max(∂ₒᵤₜ, 0);
* ``deconvnet``: at every ReLU only positive gradients pass, whatever the forward input: ∂ᵢₙ = max(∂ₒᵤₜ, 0).

The rules act on ``nn.ReLU`` modules (as Captum's do); a model that applies ReLU functionally has nothing to
modify, so asking for ``guided``/``deconvnet`` on it is an error rather than a silent plain gradient.

Integrated gradients is the input-level baseline: the average gradient along the engine's :class:`LinearPath`
from a baseline (at the input slice), times ``x − baseline``.

Display: ``saliency_map`` turns a gradient ``[C, H, W]`` into a map ``[H, W]`` in [0, 1] (|grad| maxed over
channels, divided by its maximum); ``overlay`` multiplies the map onto the image (the paper's "scaled onto the
image"); ``heatmap`` colours the map.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.autograd.function import BackwardCFunction, FunctionCtx

from essence.core.base.errors import LayerNotFoundError, SpecError
from essence.core.base.model_state import inference_state
from essence.core.engine.distributions import Instance, LinearPath, PathMethod
from essence.core.engine.influence import influence
from essence.core.engine.quantities import Quantity
from essence.core.engine.slices import Granularity, resolve_layer

Method = Literal["saliency", "guided", "deconvnet"]
METHODS: tuple[str, ...] = ("saliency", "guided", "deconvnet")


class _GuidedReLU(torch.autograd.Function):
    """ReLU whose backward is guided backprop's rule: positive gradients, where the forward input was positive."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        out = x.clamp(min=0)
        ctx.save_for_backward(out)
        return out

    @staticmethod
    def backward(ctx: BackwardCFunction, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        return grad.clamp(min=0) * (out > 0).to(grad.dtype)


class _DeconvReLU(torch.autograd.Function):
    """ReLU whose backward is DeconvNet's rule: positive gradients, whatever the forward input."""

    @staticmethod
    def forward(ctx: FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: BackwardCFunction, grad: torch.Tensor) -> torch.Tensor:
        return grad.clamp(min=0)


@contextmanager
def relu_rule(model: nn.Module, method: Method) -> Iterator[int]:
    """Within the context, every ``nn.ReLU`` of ``model`` back-propagates with ``method``'s rule.

    A forward pre-hook keeps the ReLU's input (a clone for ``inplace=True``, which would overwrite it) and a
    forward hook returns the rectified ReLU of that input instead of the module's output, so the modified
    backward replaces the ReLU's own. Every hook is removed on exit, also on error. ``saliency`` changes
    nothing.

    Yields:
        The number of ReLU modules modified.

    Raises:
        SpecError: unknown method, or ``guided``/``deconvnet`` on a model without ``nn.ReLU`` modules.
    """
    if method not in METHODS:
        raise SpecError(f"unknown interpretation method {method!r}: use one of {', '.join(METHODS)}")
    if method == "saliency":
        yield 0
        return
    relus = [m for m in model.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise SpecError(
            f"method {method!r} modifies the backward of nn.ReLU modules, and this model has none (it may "
            "apply ReLU as a function): use method='saliency'"
        )
    rule = _GuidedReLU if method == "guided" else _DeconvReLU
    inputs: dict[int, torch.Tensor] = {}

    def pre(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0]
        inputs[id(module)] = x.clone() if getattr(module, "inplace", False) else x

    def post(module: nn.Module, _args: tuple[torch.Tensor, ...], _output: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = rule.apply(inputs.pop(id(module)))  # Function.apply is untyped
        return out

    handles = []
    try:
        for m in relus:
            handles.append(m.register_forward_pre_hook(pre))
            handles.append(m.register_forward_hook(post))
        yield len(relus)
    finally:
        for h in handles:
            h.remove()
        inputs.clear()


class _Reached(Exception):
    """Raised at the slice to stop the forward pass: layers above it are not needed for a unit's gradient."""


def unit_input_gradients(
    model: nn.Module,
    x: torch.Tensor,
    layer: str,
    units: Sequence[int],
    *,
    granularity: Granularity = "channel",
    method: Method = "saliency",
) -> torch.Tensor:
    """The input gradient of each unit's activation, ``[k, C, H, W]``, in one forward and one backward.

    The image is repeated once per unit; row r's quantity is unit ``units[r]`` of the slice (a channel's
    activation summed over positions; a neuron's value), so one backward of the sum gives every unit's
    gradient. The forward stops at the slice.

    Args:
        model: the classifier (run in eval mode with frozen parameters; restored after).
        x: one preprocessed input ``[C, H, W]`` (or ``[1, C, H, W]``).
        layer: module path of the slice (not the input).
        units: flat unit indices (channel indices at channel granularity; C-order indices at neuron).
        granularity: ``"channel"`` or ``"neuron"``.
        method: ``"saliency"``, ``"guided"`` or ``"deconvnet"``.

    Returns:
        float32 ``[k, C, H, W]``.

    Raises:
        LayerNotFoundError: unknown layer, the input slice, or a layer the forward does not reach.
        SpecError: a unit index out of range, an unknown method.
    """
    module = resolve_layer(model, layer)
    if module is None:
        raise LayerNotFoundError("units of the input slice are pixels: pick a layer above the input")
    x = x.detach()
    if x.ndim == 3:
        x = x[None]
    units = [int(u) for u in units]
    if not units:
        return torch.zeros((0, *x.shape[1:]))
    device = next(iter(model.parameters()), torch.empty(0)).device
    xs = x.to(device).expand(len(units), *x.shape[1:]).clone().requires_grad_(True)
    got: dict[str, torch.Tensor] = {}

    def stop(_m: nn.Module, _i: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        got["z"] = out
        raise _Reached

    with inference_state(model), relu_rule(model, method), torch.enable_grad():
        handle = module.register_forward_hook(stop)
        try:
            model(xs)
        except _Reached:
            pass
        finally:
            handle.remove()
    if "z" not in got:
        raise LayerNotFoundError(
            f"layer {layer!r} was not reached in the forward pass: pick a layer the model uses"
        )
    z = got["z"]
    flat = z.reshape(len(units), z.shape[1], -1).sum(-1) if granularity == "channel" and z.ndim > 2 else None
    flat = flat if flat is not None else z.reshape(len(units), -1)
    width = flat.shape[1]
    bad = [u for u in units if not 0 <= u < width]
    if bad:
        raise SpecError(f"unit indices {bad[:5]} are out of range: the slice {layer!r} has {width} units")
    picked = flat[torch.arange(len(units), device=flat.device), torch.tensor(units, device=flat.device)]
    with torch.enable_grad():
        (grad,) = torch.autograd.grad(picked.sum(), xs)
    return grad.detach().float().cpu()


def integrated_gradients(
    model: nn.Module,
    x: torch.Tensor,
    quantity: Quantity,
    *,
    baseline: float | torch.Tensor = 0.0,
    steps: int = 32,
    method: PathMethod = "gausslegendre",
    label: int = 0,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> tuple[torch.Tensor, float]:
    """Integrated gradients of ``quantity`` at one input, with its completeness error.

    IG = (x − baseline) ⊙ E_α[∂q/∂x at baseline + α(x − baseline)], with the points and weights of the
    engine's :class:`LinearPath`. The path's points of one image are independent instances, so they go
    through the engine as one batch (point distribution at the input slice) instead of one pass per point:
    the same numbers as ``influence(..., LinearPath(...))`` in ``ceil(steps / batch_size)`` passes.
    Completeness: Σ IG ≈ q(x) − q(baseline); the returned error is the difference.

    Args:
        model: the classifier.
        x: one preprocessed input ``[C, H, W]``.
        quantity: what is attributed (e.g. ``ClassScore(a)`` or ``Comparative(a, b)``).
        baseline: a constant or a tensor ``[C, H, W]`` in the preprocessed input space.
        steps: quadrature points on the path.
        method: quadrature rule (see :func:`~essence.core.engine.distributions.path_points`).
        label: the label passed to the quantity (only label-dependent quantities use it).
        batch_size: path points per pass.
        device: where to compute (``auto``, ``cpu``, ``cuda``).

    Returns:
        ``(attribution float32 [C, H, W], completeness error q(x) − q(baseline) − Σ IG)``.
    """
    x = x.detach().float()
    if x.ndim == 4:
        x = x[0]
    base = torch.as_tensor(baseline, dtype=x.dtype).expand_as(x)
    path = LinearPath(steps=steps, baseline=base, method=method)
    alphas, weights = zip(*path.points(), strict=True)
    points = torch.stack([base + a * (x - base) for a in alphas])
    labels = torch.full((steps,), label, dtype=torch.long)
    result = influence(
        model,
        (points, labels),
        "",
        quantity,
        Instance(),
        "neuron",
        batch_size=batch_size,
        device=device,
        keep_instances=True,
    )
    vectors, rows = result.instance_vectors, result.instance_indices
    assert vectors is not None and rows is not None, "keep_instances=True keeps every point's vector"
    grads = torch.empty_like(vectors, dtype=torch.float64)
    grads[rows] = vectors.double()
    average = (torch.tensor(weights, dtype=torch.float64)[:, None] * grads).sum(0)
    attribution = average.reshape(x.shape) * (x - base).double()
    with inference_state(model), torch.no_grad():
        dev = next(iter(model.parameters()), torch.empty(0)).device
        q = quantity(model(torch.stack([x, base]).to(dev)).float(), labels[:2].to(dev)).double().cpu()
    error = float(q[0] - q[1] - attribution.sum())
    return attribution.float(), error


# -- display ----------------------------------------------------------------------------------------------


def saliency_map(grad: torch.Tensor) -> np.ndarray:
    """``[C, H, W]`` (or ``[k, C, H, W]``) gradients → maps in [0, 1], ``[H, W]`` (or ``[k, H, W]``).

    |grad| maxed over channels, divided by each map's maximum (an all-zero gradient gives an all-zero map).
    """
    g = grad.detach().abs().float()
    single = g.ndim == 3
    if single:
        g = g[None]
    m = g.amax(dim=1)
    peak = m.flatten(1).amax(dim=1).clamp(min=1e-12).view(-1, 1, 1)
    out = (m / peak).numpy()
    return out[0] if single else out


def display_image(
    x: torch.Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> np.ndarray:
    """A preprocessed input ``[C, H, W]`` back to uint8 ``[H, W, 3]`` (what the model sees, blur included).

    With the recipe's ``mean``/``std`` the normalisation is undone; without, the image is min-max scaled.
    """
    x = x.detach().float().cpu()
    if x.ndim == 4:
        x = x[0]
    if mean is not None and std is not None:
        x = x * torch.tensor(std).view(-1, 1, 1) + torch.tensor(mean).view(-1, 1, 1)
    else:
        lo, hi = float(x.min()), float(x.max())
        x = (x - lo) / (hi - lo) if hi > lo else torch.zeros_like(x)
    a = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    return np.repeat(a, 3, axis=2) if a.shape[2] == 1 else a[..., :3]


def overlay(image: np.ndarray, saliency: np.ndarray) -> np.ndarray:
    """The image scaled by the map, uint8 ``[H, W, 3]``: bright where the unit is sensitive, dark elsewhere."""
    if image.shape[:2] != saliency.shape:
        raise SpecError(f"image {image.shape[:2]} and map {saliency.shape} differ in size")
    scaled: np.ndarray = (
        (image.astype(np.float32) * saliency[..., None]).round().clip(0, 255).astype(np.uint8)
    )
    return scaled


# A perceptually ordered dark-to-bright ramp (black → purple → orange → yellow), linear between anchors.
_RAMP = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float32)


def heatmap(saliency: np.ndarray) -> np.ndarray:
    """A map in [0, 1] coloured with a dark-to-bright ramp, uint8 ``[..., 3]``."""
    s = np.clip(np.nan_to_num(saliency), 0, 1) * (len(_RAMP) - 1)
    lo = np.floor(s).astype(int).clip(0, len(_RAMP) - 2)
    t = (s - lo)[..., None]
    coloured: np.ndarray = ((1 - t) * _RAMP[lo] + t * _RAMP[lo + 1]).round().astype(np.uint8)
    return coloured


def signed_map(attribution: torch.Tensor) -> np.ndarray:
    """IG ``[C, H, W]`` → uint8 RGB ``[H, W, 3]``: red for positive, blue for negative, summed over channels."""
    a = attribution.detach().float().sum(0).numpy()
    peak = max(float(np.abs(a).max()), 1e-12)
    r = np.clip(a / peak, 0, 1)
    b = np.clip(-a / peak, 0, 1)
    img = np.stack([r, np.zeros_like(r), b], axis=-1)
    return (img * 255).round().astype(np.uint8)
