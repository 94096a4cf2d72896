"""Loading models from the specs of the CLI and the API (DESIGN §4).

Model specs: ``PREFIX:ARG`` answered by the spec registry (:mod:`essence.core.specs`: ``torchvision:ARCH``
with weights is built in, ``demo:blurred|sharp`` is registered by the bundled demo); ``package.module:function``
with weights (a factory of the user's); ``PATH.pt`` (TorchScript, or a full pickle with ``trust_pickle``).
Weights are read by :mod:`essence.core.weights`.
"""

from __future__ import annotations

import hashlib
import importlib
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from essence.core import specs
from essence.core.data import ImageData
from essence.core.errors import DataLoadError, LabelMismatchError, ModelLoadError, SpecError
from essence.core.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from essence.core.specs import ModelRequest
from essence.core.weights import apply_state_dict, load_weights, torch_load

MODEL_FILE_SUFFIXES = {".pt", ".pth", ".ts", ".jit", ".pt2", ".torchscript"}
SPEC_FORMS = (
    "demo:blurred|sharp, torchvision:ARCH --weights FILE, package.module:function --weights FILE, "
    "or a TorchScript PATH.pt"
)


@dataclass
class LoadedModel:
    """A model ready for analysis, with what is known about it.

    Attributes:
        module: the ``nn.Module`` (eval mode).
        spec: the spec it was loaded from.
        fingerprint: hash of the architecture and every weight (a cache key).
        class_names: the classes of its outputs, if known (a card, the demo).
        preprocessing: the recipe its inputs need, if known.
        default_layer: the slice to use when none is given, if known.
        card: extra facts (demo card, training metrics).
    """

    module: nn.Module
    spec: str
    fingerprint: str
    class_names: list[str] | None = None
    preprocessing: Preprocessing | None = None
    default_layer: str | None = None
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.card.get("name") or self.spec


def load_model(
    spec: str,
    weights: str | Path | None = None,
    *,
    trust_pickle: bool = False,
    num_classes: int | None = None,
) -> LoadedModel:
    """Load a model from a spec (see the module docstring).

    Args:
        spec: ``PREFIX:ARG`` of a registered prefix, ``package.module:function`` or a model file.
        weights: the weights file (torchvision architectures and factories).
        trust_pickle: allow full pickles, which can run code when read.
        num_classes: the number of outputs (torchvision; read from the weights when None).

    Returns:
        The model in eval mode, with its fingerprint and what is known about it.

    Raises:
        SpecError: a malformed spec, or an unknown prefix (the message lists the known ones).
        ModelLoadError: weights missing, unreadable, unsafe, or not fitting the architecture.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(
            "empty model spec: use demo:blurred, torchvision:ARCH, package.module:function or PATH.pt"
        )
    spec = spec.strip()
    prefix, colon, arg = spec.partition(":")
    loader = specs.model_loader(prefix) if colon else None
    if loader is not None:
        return loader(ModelRequest(spec, arg, weights, trust_pickle, num_classes))
    path = Path(spec)
    if path.suffix in MODEL_FILE_SUFFIXES or path.exists():
        return _load_file_model(path, spec, trust_pickle)
    if colon and all(part.replace(".", "").replace("_", "").isalnum() for part in (prefix, arg)):
        return _load_factory(spec, weights, trust_pickle)
    known = ", ".join(specs.known_prefixes("model")) or "none"
    raise SpecError(
        f"model spec {spec!r} is not understood (registered prefixes: {known}): use {SPEC_FORMS}; "
        f"other prefixes come from plug-ins in the entry-point group {specs.ENTRY_POINT_GROUP}"
    )


def _final_linear_name(module: nn.Module) -> str | None:
    last = None
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            last = name
    return last


def load_torchvision(request: ModelRequest) -> LoadedModel:
    """The ``torchvision:ARCH`` loader: a torchvision architecture with the given weights (no download).

    Raises:
        SpecError: an architecture torchvision does not have (the closest names are listed).
        ModelLoadError: no weights, or weights that do not fit.
    """
    import torchvision

    spec, arch, weights = request.spec, request.arg, request.weights
    available = torchvision.models.list_models(module=torchvision.models)
    if arch not in available:
        import difflib

        close = difflib.get_close_matches(arch, available, n=4)
        raise SpecError(
            f"torchvision has no classification architecture {arch!r}; closest: {', '.join(close)}"
        )
    if weights is None:
        raise ModelLoadError(
            f"torchvision:{arch} needs a weights file (--weights FILE.safetensors or a state_dict .pt); "
            "nothing is downloaded at run time"
        )
    state = load_weights(weights, trust_pickle=request.trust_pickle)
    num_classes = request.num_classes
    if num_classes is None:
        probe = torchvision.models.get_model(arch, weights=None)
        head = _final_linear_name(probe)
        key = f"{head}.weight" if head else None
        num_classes = int(state[key].shape[0]) if key and key in state else 1000
    try:
        module = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"cannot build torchvision:{arch} with {num_classes} classes: {exc}") from exc
    apply_state_dict(module, state, weights)
    return LoadedModel(
        module=module.eval(),
        spec=spec,
        fingerprint=model_fingerprint(module, spec),
        preprocessing=Preprocessing(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        card={"name": spec, "architecture": spec, "weights": str(weights)},
    )


def _load_factory(spec: str, weights: str | Path | None, trust_pickle: bool) -> LoadedModel:
    mod_name, fn_name = spec.split(":", 1)
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ModelLoadError(
            f"cannot import {mod_name!r} for model {spec!r}: {exc}; is it on PYTHONPATH?"
        ) from exc
    factory = getattr(mod, fn_name, None)
    if not callable(factory):
        raise ModelLoadError(
            f"{mod_name!r} has no callable {fn_name!r}: name a function that returns an nn.Module"
        )
    try:
        module = factory()
    except Exception as exc:  # the user's own code failed: say so, with its message
        raise ModelLoadError(
            f"{spec}() failed ({type(exc).__name__}: {exc}): name a function that takes no arguments and "
            "returns an nn.Module"
        ) from exc
    if not isinstance(module, nn.Module):
        raise ModelLoadError(f"{spec} returned {type(module).__name__}, not a torch.nn.Module")
    if weights is not None:
        apply_state_dict(module, load_weights(weights, trust_pickle=trust_pickle), weights)
    return LoadedModel(
        module=module.eval(),
        spec=spec,
        fingerprint=model_fingerprint(module, spec),
        card={"name": spec, "architecture": spec, "weights": str(weights) if weights else None},
    )


def _load_file_model(path: Path, spec: str, trust_pickle: bool) -> LoadedModel:
    if not path.is_file():
        raise ModelLoadError(f"model file {str(path)!r} does not exist; check the path")
    if zipfile.is_zipfile(path):
        try:
            with warnings.catch_warnings():  # torch's deprecation chatter would break the one-line error
                warnings.simplefilter("ignore")
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # a corrupt archive can fail in many ways; each means "not TorchScript"
            module = None
            jit_error = exc
        if module is not None:
            return LoadedModel(
                module=module.eval(),
                spec=spec,
                fingerprint=model_fingerprint(module, "torchscript"),
                card={"name": path.name, "architecture": "TorchScript", "weights": str(path)},
            )
    else:
        jit_error = None
    # Not TorchScript: a plain state_dict has no architecture; a full pickle is refused unless trusted.
    obj = torch_load(path, trust_pickle)
    if isinstance(obj, nn.Module):
        return LoadedModel(
            module=obj.eval(),
            spec=spec,
            fingerprint=model_fingerprint(obj, type(obj).__qualname__),
            card={"name": path.name, "architecture": type(obj).__qualname__, "weights": str(path)},
        )
    if isinstance(obj, dict):
        raise ModelLoadError(
            f"{path} holds weights (a state_dict) but no architecture: use --model torchvision:ARCH or "
            f"package.module:function with --weights {path}"
        )
    detail = f" (TorchScript: {jit_error})" if jit_error else ""
    raise ModelLoadError(f"{path} is neither a TorchScript model nor a state_dict{detail}")


def model_fingerprint(module: nn.Module, architecture: str = "") -> str:
    """Hash of the architecture name, the module structure and every parameter and buffer.

    Args:
        module: the model.
        architecture: a name of the architecture (the spec), hashed in too.

    Returns:
        16 hex digits.
    """
    h = hashlib.sha256(architecture.encode())
    h.update(type(module).__qualname__.encode())
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


def check_compatible(model: LoadedModel | nn.Module, data: ImageData) -> int:
    """Run the model on two instances: check it accepts the data and its outputs match the data's classes.

    Args:
        model: the model (or its module).
        data: the dataset it is to be analysed on.

    Returns:
        The number of model outputs.

    Raises:
        DataLoadError: the model cannot run on these inputs (size, channels).
        LabelMismatchError: the model's number of outputs differs from the data's number of classes.
    """
    module = model.module if isinstance(model, LoadedModel) else model
    x = data.tensors(np.arange(min(2, len(data))))
    was = module.training
    try:
        module.eval()
        with torch.no_grad():
            device = next(iter(module.parameters()), torch.empty(0)).device
            out = module(x.to(device))
    except RuntimeError as exc:
        msg = str(exc).splitlines()[0][:200]
        raise DataLoadError(
            f"the model cannot run on {data.spec} (inputs {tuple(x.shape[1:])}): {msg}; check the image size "
            "and channels of the preprocessing (--size, mode)"
        ) from exc
    finally:
        module.train(was)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise DataLoadError(
            f"the model must return [batch, classes] logits; got {getattr(out, 'shape', type(out))}"
        )
    k = int(out.shape[1])
    if k != data.num_classes:
        raise LabelMismatchError(
            f"the model has {k} outputs but {data.spec} has {data.num_classes} classes {data.class_names[:6]}: "
            "use data labelled with the model's classes"
        )
    return k


specs.register_model_spec("torchvision", load_torchvision)
