"""∂q/∂z at the slice for a batch: the one gradient routine of the engine.

Every route that differentiates a quantity with respect to z runs it: the full pass (the whole model, z captured
at the layer, or the input itself), g alone on a stored z (:mod:`essence.core.engine.activation_source`), and a
class score's gradients on a cached z (:func:`~essence.core.engine.activation_cache.instance_gradients`). One
forward gives the outputs ``[B, K]`` and the leaf z the gradient is taken at; one backward of Σᵢ qᵢ gives every
instance its own ∂qᵢ/∂zᵢ at once, because in eval mode the instances of a batch are independent. The outputs and
the gradient are checked the same way on every route; only the advice on non-finite outputs names the route.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from essence.core.base.errors import NonFiniteOutputError, SpecError
from essence.core.engine.quantities import Quantity
from essence.core.engine.slices import Granularity, check_units_carry, reduce_units

# Runs the model forward (autograd on): ``(outputs [B, K], leaf z [B, *z_shape])``; the leaf is ``None`` when the
# forward never reached the slice.
Forward = Callable[[], tuple[torch.Tensor, torch.Tensor | None]]

# Where non-finite outputs came from, and what to do: ends the message "the model produced NaN or infinite
# outputs ...".
ON_THE_DATA = "on this data: check the weights and the preprocessing (normalisation) of the inputs"
ON_STORED_Z = (
    "on the stored slice: check the weights, or remove the stored slices (essence store prune --slices) and "
    "recompute"
)
ON_CACHED_Z = "on the cached activations: check the weights"


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


def quantity_gradient(
    forward: Forward,
    labels: torch.Tensor,
    quantity: Quantity,
    granularity: Granularity,
    *,
    layer: str = "",
    outputs_on: str = ON_THE_DATA,
) -> BatchGradient:
    """Every instance's ∂q/∂z from one forward (``forward``) and one backward of the batch's summed quantity.

    Args:
        forward: runs the model with autograd on and returns ``(outputs [B, K], leaf z [B, *z_shape])``.
        labels: int64 ``[B]`` (for quantities of each instance's own class).
        quantity: ``(logits [B, K], labels [B]) -> [B]``; given float32 outputs (float64 ones as they are).
        granularity: the units the gradient is reduced to (:func:`~essence.core.engine.slices.reduce_units`).
        layer: the slice, named when the forward never reached it.
        outputs_on: where the outputs came from and what to do when they are not finite (:data:`ON_THE_DATA`,
            :data:`ON_STORED_Z`, :data:`ON_CACHED_Z`).

    Returns:
        A :class:`BatchGradient`: vectors ``[B, U]``, outputs ``[B, K]`` and z ``[B, *z_shape]``, detached.

    Raises:
        SpecError: the model does not return ``[B, K]``, or never reaches ``layer``.
        NonFiniteOutputError: NaN or infinity in the outputs or in the gradient.
        DegenerateUnitsError: every unit is zero up to rounding (:func:`~essence.core.engine.slices.check_units_carry`).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from essence.core.engine.quantities import ClassScore
        >>> top = nn.Linear(3, 2)
        >>> z = torch.ones(4, 3, requires_grad=True)
        >>> grad = quantity_gradient(lambda: (top(z), z), torch.zeros(4, dtype=torch.long), ClassScore(1), "neuron")
        >>> torch.equal(grad.vectors, top.weight[1].detach().expand(4, 3))  # ∂(w₁·z + b₁)/∂z = w₁
        True
    """
    with torch.enable_grad():
        out, leaf = forward()
        _check_outputs(out, outputs_on)
        if leaf is None:
            raise SpecError(
                f"layer {layer!r} was not reached in the forward pass: pick a layer the model uses"
            )
        values = quantity(out if out.dtype == torch.float64 else out.float(), labels)
        (grad,) = torch.autograd.grad(values.sum(), leaf, allow_unused=True)
    if grad is None:  # the quantity does not depend on z (a class the layers above never read)
        grad = torch.zeros_like(leaf)
    if not torch.isfinite(grad).all():
        raise NonFiniteOutputError(
            "the gradient at the slice is NaN or infinite: check the model and its inputs"
        )
    grad = grad if grad.dtype == torch.float64 else grad.float()
    units = reduce_units(grad, granularity)
    check_units_carry(grad, units, granularity)  # refuse units that only hold rounding
    return BatchGradient(units, tuple(leaf.shape[1:]), out.detach(), leaf.detach())


def _check_outputs(out: object, outputs_on: str) -> None:
    """The outputs must be a finite ``[B, K]`` tensor.

    Raises:
        SpecError: not a two-dimensional tensor. NonFiniteOutputError: NaN or infinity.
    """
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise SpecError(
            f"the model must return a [batch, classes] tensor; got {getattr(out, 'shape', type(out).__name__)}"
        )
    if not torch.isfinite(out).all():
        raise NonFiniteOutputError(f"the model produced NaN or infinite outputs {outputs_on}")
