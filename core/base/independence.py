"""Whether a model treats the instances of a batch independently, as every analysis assumes.

The engine differentiates Σᵢ qᵢ(xᵢ) once per batch and reads each instance's own gradient from it: exact only
when instance i's output depends on xᵢ alone. In eval mode ordinary models are so (batch norm uses its running
statistics, dropout is off). Some are not: batch norm built with ``track_running_stats=False`` normalises by
the batch's own statistics even in eval mode, a ``forward`` that calls ``F.dropout(x, p)`` (``training=True`` by
default) drops units at random whatever the mode, and anything else train-mode-like that ``eval()`` does not
switch off. Their influence would depend on the batch size and on the neighbours: we refuse them, with the reason.

The check: an instance's output alone must equal its output inside the batch (up to float round-off of the
different kernels a batch may take). It costs one forward of one instance.
"""

from __future__ import annotations

import torch
from torch import nn

from essence.core.base.errors import ModelLoadError

# Batched and single-instance kernels differ by float round-off only (~1e-6 relative in float32); batch
# statistics or random dropout move outputs by orders of magnitude more.
RTOL = 1e-3
ATOL = 1e-4


class BatchCouplingError(ModelLoadError):
    """The model's output for one instance depends on the other instances of its batch."""


def check_batch_independent(model: nn.Module, x: torch.Tensor, outputs: torch.Tensor | None = None) -> None:
    """Refuse a model whose output for an instance changes with the rest of its batch.

    Args:
        model: the model, already in the mode and on the device it is analysed in (eval mode).
        x: ``[B, ...]`` a batch of inputs (B ≥ 2 for the check to say anything; a single instance passes).
        outputs: ``[B, K]`` the model's outputs on ``x`` if already computed (a forward is saved).

    Raises:
        BatchCouplingError: instance 0 alone gives other outputs than inside the batch.
    """
    if x.shape[0] < 2:
        return
    with torch.no_grad():
        inside = (outputs if outputs is not None else model(x))[:1].detach().double()
        alone = model(x[:1]).detach().double()
    if not (torch.isfinite(inside).all() and torch.isfinite(alone).all()):
        return  # NaN or infinite outputs are their own error, named where the outputs are checked
    scale = float(inside.abs().max()) if inside.numel() else 0.0
    if alone.shape == inside.shape and torch.allclose(alone, inside, rtol=RTOL, atol=ATOL * max(1.0, scale)):
        return
    gap = float((alone - inside).abs().max()) if alone.shape == inside.shape else float("inf")
    raise BatchCouplingError(
        f"the model's output for an instance changes with the rest of its batch (alone vs in a batch of "
        f"{x.shape[0]}: max difference {gap:.3g}), so its influence would depend on the batch: "
        f"{_suspects(model)}make it batch-independent in eval mode (track_running_stats=True, nn.Dropout "
        "instead of F.dropout) and save it again"
    )


def _suspects(model: nn.Module) -> str:
    """The modules that explain a coupling, named for the message (empty when none is visible)."""
    names = [
        name or type(m).__name__
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._NormBase) and not m.track_running_stats
    ]
    if names:
        return f"batch norm without running statistics at {', '.join(names[:3])}; "
    return "a forward that uses batch statistics or random dropout in eval mode (e.g. F.dropout); "
