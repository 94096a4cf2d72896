"""Reading weights safely and putting them into a module (DESIGN §4).

Weights are safetensors, or a state_dict read with ``torch.load(weights_only=True)``; a full pickle (which can
run code when read) only with ``trust_pickle`` (the CLI's ``--trust-pickle``). Bytes that are no ``torch.save``
file at all are named so, not refused as a pickle (which would mislead).
"""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from essence.core.base.errors import ModelLoadError
from essence.core.base.files import regular_file


def looks_like_torch_file(path: Path) -> bool:
    """A torch.save file is a zip archive (since 1.6) or a raw pickle (first byte 0x80, the PROTO opcode)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head.startswith(b"PK") or head[:1] == b"\x80"


def torch_load(path: Path, trust_pickle: bool) -> Any:
    """``torch.load`` on the CPU, ``weights_only`` unless ``trust_pickle``, with one-line errors.

    Raises:
        ModelLoadError: not a PyTorch file, a full pickle without ``trust_pickle``, or an unreadable file.
    """
    if not looks_like_torch_file(path):
        raise ModelLoadError(
            f"{path} is not a PyTorch file (neither a torch.save archive nor a pickle): point at the weights "
            "(.safetensors, or a state_dict saved with torch.save)"
        )
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol chatter would break the one-line error
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        if trust_pickle:
            raise ModelLoadError(f"{path} is not a readable PyTorch file: {exc}") from exc
        raise ModelLoadError(
            f"{path} is a full pickle, which can run arbitrary code when loaded, so it was refused; save a "
            "state_dict or safetensors instead, or pass trust_pickle=True if you trust its source"
        ) from exc
    except Exception as exc:  # a corrupt file fails in many ways (KeyError, UnicodeDecodeError...)
        raise ModelLoadError(
            f"{path} is not a readable PyTorch file ({exc.__class__.__name__}: {exc})"
        ) from exc


def load_weights(path: str | Path, *, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a state_dict from safetensors or a ``torch.load``-able file, safely.

    Common wrappers (``{"state_dict": ...}``, ``{"model": ...}``) and DataParallel's ``module.`` prefix are
    unwrapped.

    Args:
        path: a ``.safetensors`` file, or a file written by ``torch.save``.
        trust_pickle: allow a full pickle (it can run code when read).

    Returns:
        The state_dict: parameter and buffer names → tensors (on the CPU).

    Raises:
        ModelLoadError: missing, unreadable, unsafe (pickle without ``trust_pickle``) or not a state_dict.
    """
    if not os.path.lexists(path):
        raise ModelLoadError(f"weights file {str(path)!r} does not exist; check the path")
    path = regular_file(path, "the weights", ModelLoadError)  # a FIFO or a symlink loop, named as such
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelLoadError(f"{path} is not a valid safetensors file: {exc}") from exc
    else:
        state = torch_load(path, trust_pickle)
    if isinstance(state, nn.Module):
        state = state.state_dict()
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    for name, tensor in state.items():
        _check_plain(tensor, name, path)
    checked: dict[str, torch.Tensor] = state
    return checked


def _check_plain(tensor: torch.Tensor, name: str, path: Path) -> None:
    """Refuse a tensor no module's parameter can take: sparse or otherwise not strided, on the ``meta`` device
    (a shape with no data), or complex (copying it into a real parameter would drop its imaginary part).

    Raises:
        ModelLoadError: naming the tensor, what it is and the fix.
    """
    if tensor.layout != torch.strided:
        what = f"a {str(tensor.layout).removeprefix('torch.')} tensor"
    elif tensor.device.type == "meta":
        what = "a meta tensor (a shape with no data)"
    elif tensor.is_complex():
        what = f"complex ({str(tensor.dtype).removeprefix('torch.')})"
    else:
        return
    raise ModelLoadError(
        f"{path}: weight {name!r} is {what}, which no parameter takes: save the model's own state_dict "
        "(real, dense tensors with their data, e.g. model.state_dict() after training)"
    )


def apply_state_dict(module: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    """Load ``state`` into ``module`` strictly, naming the first keys that do not fit.

    Args:
        module: the architecture.
        state: the weights (from :func:`load_weights`).
        source: where the weights came from, for the message.

    Raises:
        ModelLoadError: shapes that differ, keys missing from ``state`` or not in the architecture.
    """
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)}≠{tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if wrong or missing or unexpected:
        parts = []
        if wrong:
            parts.append(f"wrong shapes: {'; '.join(wrong[:3])}")
        if missing:
            parts.append(f"missing: {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"unexpected: {', '.join(unexpected[:3])}")
        raise ModelLoadError(
            f"weights {source} do not fit the architecture ({'; '.join(parts)}): pass the architecture these "
            "weights were saved from"
        )
    module.load_state_dict(state, strict=True)
