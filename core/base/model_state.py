"""The model's state around a computation: its device, its memory format, and the user's cancel flag.

Each context manager changes one thing about a user's model for the length of a block and puts it back on
exit, also on error, so a model handed to Essence comes back as it was given (mode and ``requires_grad`` flags:
:func:`essence.core.engine.slices.inference_state`; hooks: :func:`essence.core.engine.slices.capture`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

# What a long computation polls between steps: None, an Event, or a callable returning True once it should stop.
CancelFlag = threading.Event | Callable[[], bool] | None


def cancelled(flag: CancelFlag) -> bool:
    """Whether the user asked to stop.

    Args:
        flag: ``None`` (never cancelled), a ``threading.Event`` (cancelled once set), or a callable returning
            ``True`` once the work should stop (e.g. a UI's stop button).

    Returns:
        ``True`` if the work should stop before its next step.
    """
    if flag is None:
        return False
    if isinstance(flag, threading.Event):
        return flag.is_set()
    return bool(flag())


@contextmanager
def on_device(model: nn.Module, device: torch.device) -> Iterator[nn.Module]:
    """Run ``model`` on ``device``, moving it back where it was afterwards.

    Args:
        model: the model (moved in place; a model without parameters is left alone).
        device: where to run it.

    Yields:
        The same model, on ``device``.
    """
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
    """Hold ``model``'s 4-d parameters in channels-last format inside the block (contiguous again after).

    Args:
        model: the model (converted in place).
        channels_last: convert; ``False`` leaves the model as it is.

    Yields:
        The same model.
    """
    if not channels_last:
        yield model
        return
    model.to(memory_format=torch.channels_last)
    try:
        yield model
    finally:
        model.to(memory_format=torch.contiguous_format)


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
