"""The model fingerprint: a hash of what a model computes — its architecture, its code and every weight.

Every stored result is keyed by it (profiles, stored slices, triage), so it must change whenever the model
computes something else: a changed weight, a ReLU turned GELU, another stride or dropout rate, an edited
``forward``. torch's own modules are identified by class and hyper-parameters (their code is torch's, not the
model's); a user's module also by the bytecode of its ``forward``, an fx or exported module by its graph, a
TorchScript module by its code. The loaders of :mod:`essence.core.inputs.models` (and of the zoo, ONNX and the
demo) stamp every :class:`~essence.core.inputs.models.LoadedModel` with it.
"""

from __future__ import annotations

import hashlib
import types

import torch
from torch import nn

__all__ = ["model_fingerprint"]


def model_fingerprint(module: nn.Module, architecture: str = "") -> str:
    """Hash of what the model computes: its architecture and code, and every parameter and buffer.

    The architecture part covers, for every submodule: its path and class, its hyper-parameters (the plain
    attributes such as a stride or a dropout rate, and ``extra_repr``), and its code: the bytecode of a
    user-defined ``forward``, the graph of an fx or exported (unflattened) module, the code of a TorchScript
    module. So ReLU → GELU, a changed stride or rate, or an edited ``forward`` changes the fingerprint even
    when the weights do not (a stored profile is never served for another computation). torch's own modules
    are identified by class and hyper-parameters: their code is torch's, not the model's.

    Args:
        module: the model.
        architecture: a name of the architecture (the spec), hashed in too.

    Returns:
        16 hex digits.
    """
    h = hashlib.sha256(architecture.encode())
    h.update(type(module).__qualname__.encode())
    for name, m in module.named_modules():
        h.update(f"\x00{name}\x00{_module_description(m)}".encode())
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


_PLAIN = (bool, int, float, str, type(None))
# Bookkeeping of nn.Module, not what the model computes (the mode is restored around every analysis).
_NOT_HYPERPARAMETERS = {"training", "dump_patches", "call_super_init"}


def _module_description(m: nn.Module) -> str:
    """One submodule's class, hyper-parameters and code, as text (see :func:`model_fingerprint`)."""
    cls = type(m)
    parts = [f"{cls.__module__}.{cls.__qualname__}"]
    try:
        parts.append(m.extra_repr())
    except Exception:  # a user's extra_repr may fail on a half-built module; the attributes still count
        parts.append("?")
    for key, value in sorted(vars(m).items()):
        if key.startswith("_") or key in _NOT_HYPERPARAMETERS:
            continue
        if isinstance(value, _PLAIN) or (
            isinstance(value, tuple | list) and all(isinstance(v, _PLAIN) for v in value)
        ):
            parts.append(f"{key}={value!r}")
    parts.append(_module_code(m))
    return "|".join(parts)


def _module_code(m: nn.Module) -> str:
    if isinstance(m, torch.jit.ScriptModule):
        try:
            return str(m.code)
        except Exception:  # a ScriptModule without Python-visible code: its graph says what it computes
            return str(m.graph)
    graph = getattr(m, "graph", None)
    if isinstance(graph, torch.fx.Graph):  # fx GraphModules and unflattened torch.export modules
        return str(graph)
    forward = getattr(type(m), "forward", None)
    if isinstance(forward, types.FunctionType) and not type(m).__module__.startswith("torch."):
        return _code_digest(forward.__code__)
    return ""


def _code_digest(code: types.CodeType) -> str:
    """The bytecode, names and constants of a function (nested functions included), as a hash."""
    h = hashlib.sha256(code.co_code)
    h.update(repr(code.co_names).encode())
    for const in code.co_consts:
        h.update(_code_digest(const).encode() if isinstance(const, types.CodeType) else repr(const).encode())
    return h.hexdigest()
