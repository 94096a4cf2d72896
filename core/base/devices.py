"""Device selection: CUDA when present, the CPU otherwise."""

from __future__ import annotations

from typing import Literal

import torch

from essence.core.base.errors import SpecError

DeviceName = Literal["auto", "cpu", "cuda"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda[:N]`` into a :class:`torch.device`.

    Args:
        device: ``"auto"`` picks CUDA when available, else the CPU.

    Raises:
        SpecError: an unknown name, or ``cuda`` asked for on a machine without it.
    """
    if isinstance(device, torch.device):
        return device
    name = str(device).strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise SpecError(
                f"device {device!r} asked for, but no CUDA device is available: use device='cpu' or 'auto'"
            )
        return torch.device(name)
    raise SpecError(f"unknown device {device!r}: use auto, cpu or cuda")
