"""Each unit's contribution to an instance's class score at a slice: the evidence the model used.

For an instance x with label y, cut at z = h(x), unit j's contribution to the label's logit is

    c_j(x) = Σ_positions z_j(x) · ∂logit_y/∂z_j(x)

(gradient × activation at the slice; at channel granularity summed over the channel's positions). It is the
unit's value times its influence on the class score, for this instance. Where the layers above the slice are
linear (a slice right below the classifier) it is exact: ∂logit_y/∂z = W_y for every instance, so
c_j = z_j · W_yj and Σ_j c_j = logit_y − b_y; deeper, it is the first-order share of the score (exact again
for piecewise-linear layers without biases above the slice). The logit, not the softmax, is differentiated on
purpose: the softmax's gradient is scaled by p_y(1 − p_y) and vanishes on confidently predicted instances —
exactly the ones a shortcut makes confident.

The same pass also gives each instance's contributions to its *predicted* class's logit, so that a
misclassified instance can be read against the predicted class's reasons (:mod:`essence.core.analyses.reasoning`).
Cost: one forward of the whole model and one backward above the slice per batch (a second backward only for
batches holding a misclassified instance) — about the physical reference of DESIGN §7.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from essence.core.base.devices import resolve_device
from essence.core.base.errors import (
    Cancelled,
    ClassNotFoundError,
    EmptyClassError,
    NonFiniteOutputError,
    SpecError,
)
from essence.core.base.model_state import CancelFlag, cancelled, inference_state, on_device
from essence.core.engine.influence import Progress
from essence.core.engine.slices import Capture, Granularity, capture, is_input_layer, reduce_units
from essence.core.inputs.data import as_batches


@dataclass(frozen=True)
class UnitContributions:
    """Per-instance, per-unit contributions to the label's and the predicted class's logit at one slice.

    Attributes:
        layer: the slice's module path.
        granularity: ``"channel"`` or ``"neuron"``.
        indices: int64 ``[N]`` each row's position in the dataset.
        labels: int64 ``[N]`` given labels.
        predicted: int64 ``[N]`` the model's argmax.
        outputs: float32 ``[N, K]`` the model's logits.
        to_label: float32 ``[N, U]`` c_j = Σ_pos z_j ∂logit_label/∂z_j.
        to_predicted: float32 ``[N, U]`` the same for the predicted class (equal to ``to_label`` where the
            prediction is the label).
    """

    layer: str
    granularity: Granularity
    indices: np.ndarray
    labels: np.ndarray
    predicted: np.ndarray
    outputs: torch.Tensor = field(repr=False)
    to_label: torch.Tensor = field(repr=False)
    to_predicted: torch.Tensor = field(repr=False)

    def __len__(self) -> int:
        return len(self.indices)


def unit_contributions(
    model: nn.Module,
    data: object,
    layer: str,
    *,
    granularity: Granularity = "channel",
    batch_size: int = 64,
    device: str | torch.device = "auto",
    progress: Progress | None = None,
    cancel: CancelFlag = None,
) -> UnitContributions:
    """Every instance's per-unit contributions to its label's and its predicted class's logit.

    Args:
        model: the classifier (run in eval mode with frozen parameters; mode, flags and device restored).
        data: an :class:`~essence.core.inputs.data.ImageData` or ``(x, labels)`` tensors.
        layer: module path of the slice (``""`` or ``"input"``: the pixels).
        granularity: ``"channel"`` (conv channels summed over positions) or ``"neuron"``.
        batch_size, device, progress, cancel: as in :func:`~essence.core.engine.influence.influence`.

    Returns:
        :class:`UnitContributions` (``to_label`` and ``to_predicted`` ``[N, U]``).

    Raises:
        LayerNotFoundError: unknown layer, or one the forward does not reach.
        ClassNotFoundError: a label outside the model's outputs.
        NonFiniteOutputError: NaN or infinite outputs or gradients.
        EmptyClassError: no data. Cancelled: the cancel flag was set.
    """
    if granularity not in ("channel", "neuron"):
        raise SpecError(f"unknown granularity {granularity!r}: use 'channel' or 'neuron'")
    dev = resolve_device(device)
    batches, n = as_batches(data, batch_size)
    if n == 0:
        raise EmptyClassError("the data holds no instances: nothing to score")
    total = -(-n // batch_size)
    kept: dict[str, list[torch.Tensor]] = {k: [] for k in ("cy", "cp", "idx", "y", "out")}
    hook: AbstractContextManager[Capture | None] = (
        nullcontext() if is_input_layer(layer) else capture(model, layer)
    )
    with inference_state(model), on_device(model, dev), hook as cap:
        for done, (x, y, idx) in enumerate(batches, start=1):
            if cancelled(cancel):
                raise Cancelled("cancelled by the user; nothing was kept")
            cy, cp, out = _batch(model, x.to(dev), y.to(dev), layer, cap, granularity)
            for key, value in (("cy", cy), ("cp", cp), ("idx", idx), ("y", y), ("out", out)):
                kept[key].append(value.detach().cpu())
            if progress is not None:
                progress(done, total)
    outputs = torch.cat(kept["out"]).float()
    return UnitContributions(
        layer=layer,
        granularity=granularity,
        indices=torch.cat(kept["idx"]).numpy().astype(np.int64),
        labels=torch.cat(kept["y"]).numpy().astype(np.int64),
        predicted=outputs.argmax(1).numpy().astype(np.int64),
        outputs=outputs,
        to_label=torch.cat(kept["cy"]).float(),
        to_predicted=torch.cat(kept["cp"]).float(),
    )


def _batch(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    layer: str,
    cap: Capture | None,
    granularity: Granularity,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One forward and one (or two) backwards above the slice: contributions to the label and the prediction."""
    leaf: torch.Tensor | None
    with torch.enable_grad():
        if cap is None:
            leaf = x.detach().requires_grad_(True)
            out = model(leaf)
        else:
            out = model(x)
            leaf = cap.leaf
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            raise SpecError(
                f"the model must return a [batch, classes] tensor; got {getattr(out, 'shape', type(out).__name__)}"
            )
        if leaf is None:
            raise SpecError(
                f"layer {layer!r} was not reached in the forward pass: pick a layer the model uses"
            )
        if not torch.isfinite(out).all():
            raise NonFiniteOutputError(
                "the model produced NaN or infinite outputs on this data: check the weights and the "
                "preprocessing (normalisation) of the inputs"
            )
        if y.numel() and int(y.max()) >= out.shape[1]:
            raise ClassNotFoundError(
                f"label {int(y.max())} has no class among the model's {out.shape[1]} outputs: "
                "the data's classes must match the model's"
            )
        out = out.float()
        predicted = out.argmax(1)
        wrong = bool((predicted != y).any())
        (gy,) = torch.autograd.grad(
            out.gather(1, y.long()[:, None]).sum(), leaf, retain_graph=wrong, allow_unused=True
        )
        cy = _reduce(gy, leaf, granularity)
        cp = cy
        if wrong:
            (gp,) = torch.autograd.grad(out.gather(1, predicted[:, None]).sum(), leaf, allow_unused=True)
            cp = _reduce(gp, leaf, granularity)
    if not (torch.isfinite(cy).all() and torch.isfinite(cp).all()):
        raise NonFiniteOutputError(
            "the gradient at the slice is NaN or infinite: check the model and its inputs"
        )
    return cy, cp, out.detach()


def _reduce(grad: torch.Tensor | None, leaf: torch.Tensor, granularity: Granularity) -> torch.Tensor:
    if grad is None:  # the score does not depend on the slice at all
        return torch.zeros(leaf.shape[0], reduce_units(leaf.detach(), granularity).shape[1])
    return reduce_units((grad * leaf.detach()).float(), granularity)
