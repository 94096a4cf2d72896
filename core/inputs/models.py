"""Loading models from the specs of the CLI and the API (DESIGN §4).

Model specs: ``PREFIX:ARG`` answered by the spec registry (:mod:`essence.core.inputs.specs`: ``torchvision:ARCH``
with weights is built in, ``demo:blurred|sharp`` is registered by the bundled demo); ``package.module:function``
with weights (a factory of the user's); ``PATH.pt2`` (a ``torch.export`` program, unflattened into ordinary
modules so that every analysis can hook its layers); ``PATH.pt`` holding a full pickle (with ``trust_pickle``).

TorchScript files are recognised and refused with the fix: PyTorch runs no Python hooks on ScriptModules, and every
analysis reads its slice through one (``docs/formats.md``). Weights are read by :mod:`essence.core.inputs.weights`;
every loaded model is stamped with its fingerprint (:mod:`essence.core.inputs.model_fingerprints`).
"""

from __future__ import annotations

import importlib
import os
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from essence.core.base.errors import (
    DataLoadError,
    EssenceError,
    LabelMismatchError,
    ModelLoadError,
    SpecError,
)
from essence.core.base.files import regular_file
from essence.core.base.independence import check_batch_independent
from essence.core.inputs import specs
from essence.core.inputs.cards import apply_card, class_order, model_file_of, read_card
from essence.core.inputs.data import ImageData
from essence.core.inputs.model_fingerprints import model_fingerprint
from essence.core.inputs.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from essence.core.inputs.pt2_code import run_compiled
from essence.core.inputs.pt2_vetting import load_vetted_program
from essence.core.inputs.specs import ModelRequest
from essence.core.inputs.weights import apply_state_dict, load_weights, torch_load

MODEL_FILE_SUFFIXES = {".pt", ".pth", ".ts", ".jit", ".pt2", ".torchscript"}
SPEC_FORMS = (
    "demo:blurred|sharp, torchvision:ARCH with weights=FILE, package.module:function with weights=FILE, "
    "or an exported program PATH.pt2 (torch.export.save)"
)
TORCHSCRIPT_REFUSAL = (
    "is a TorchScript model, which Essence cannot analyse (PyTorch runs no hooks on ScriptModules and every "
    "analysis reads its slice through one): save it with torch.export.save(torch.export.export(model, (x,)), "
    "'model.pt2') and pass the .pt2, or use package.module:function with weights=FILE"
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
        class_source: where ``class_names`` came from: ``"card"`` (a card file), ``"option"`` (the caller),
            ``None`` for the model's own (the demo); see :mod:`essence.core.inputs.cards`.

    Examples:
        :func:`load_model` makes one from a spec; a model already in memory is wrapped directly:

        >>> from torch import nn
        >>> from essence.core import LoadedModel
        >>> from essence.core.inputs.model_fingerprints import model_fingerprint
        >>> module = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
        >>> names = [str(i) for i in range(10)]
        >>> model = LoadedModel(module, "my:digits", model_fingerprint(module), class_names=names, default_layer="1")
        >>> model.name, model.default_layer
        ('my:digits', '1')
    """

    module: nn.Module
    spec: str
    fingerprint: str
    class_names: list[str] | None = None
    preprocessing: Preprocessing | None = None
    default_layer: str | None = None
    card: dict[str, Any] = field(default_factory=dict)
    class_source: str | None = None

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
        The model in eval mode, with its fingerprint and what is known about it: the card beside its file
        (:mod:`essence.core.inputs.cards`: ``W.card.json`` beside weights, ``model.card.json`` beside ``model.pt2``
        or ``model.onnx``) gives class names, recipe and default slice.

    Raises:
        SpecError: a malformed spec, an unknown prefix (the message lists the known ones), or a card of the
            wrong shape.
        ModelLoadError: weights missing, unreadable, unsafe, or not fitting the architecture.

    Examples:
        The bundled demo's model, with its class names, recipe and default slice:

        >>> from essence.core import load_model
        >>> model = load_model("demo:blurred")
        >>> model.class_names[:2], model.default_layer, model.module.training
        (['severity 1', 'severity 2'], 'fc1', False)
        >>> print(model.preprocessing.describe())
        RGB, Gaussian blur σ=2 px, values / 255, mean 0.479,0.188,0.137, std 0.342,0.141,0.102

        Weights of your own for a torchvision architecture (the number of outputs is read from them), with the
        card beside them that names the classes:

        >>> import tempfile
        >>> from pathlib import Path
        >>> import torch
        >>> import torchvision
        >>> from safetensors.torch import save_file
        >>> _ = torch.manual_seed(0)
        >>> net = torchvision.models.mobilenet_v3_small(num_classes=2)
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     weights = Path(folder) / "W.safetensors"
        ...     save_file(net.state_dict(), weights)
        ...     _ = (Path(folder) / "W.card.json").write_text('{"class_names": ["normal", "nodule"]}')
        ...     model = load_model("torchvision:mobilenet_v3_small", weights)
        >>> model.class_names, model.class_source
        (['normal', 'nodule'], 'card')
        >>> model.module(torch.zeros(1, 3, 64, 64)).shape
        torch.Size([1, 2])
    """
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(
            "empty model spec: use demo:blurred, torchvision:ARCH, package.module:function or PATH.pt2"
        )
    spec = spec.strip()
    prefix, colon, arg = spec.partition(":")
    loader = specs.model_loader(prefix) if colon else None
    if weights is not None and Path(weights).is_dir():
        found = sorted(p.name for p in Path(weights).glob("*") if p.suffix in (".safetensors", ".pt", ".pth"))
        hint = f" (it holds {', '.join(found[:3])})" if found else ""
        raise SpecError(f"the weights file {weights} is a folder{hint}: name the weights file inside it")
    path = Path(spec)
    if loader is not None:
        loaded = loader(ModelRequest(spec, arg, weights, trust_pickle, num_classes))
    elif path.suffix in MODEL_FILE_SUFFIXES or path.exists():
        loaded = _load_file_model(path, spec, trust_pickle)
    elif colon and all(part.replace(".", "").replace("_", "").isalnum() for part in (prefix, arg)):
        loaded = _load_factory(spec, weights, trust_pickle)
    else:
        loaded = None
    if loaded is not None:
        card = read_card(model_file_of(spec, weights))  # the one place a card is read, for every format
        if card is not None:
            apply_card(loaded, card[0])
        return loaded
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
            f"torchvision:{arch} needs a weights file (weights=FILE.safetensors or a state_dict .pt); "
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


def _archive_kind(path: Path) -> str | None:
    """``"export"`` for a torch.export archive, ``"torchscript"`` for a TorchScript one, else None."""
    if not zipfile.is_zipfile(path):
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return None
    if any(n.endswith("/archive_format") or n.endswith("/models/model.json") for n in names):
        return "export"
    if any("/code/__torch__" in n for n in names) or any(n.endswith("/constants.pkl") for n in names):
        return "torchscript"
    return None


def _load_exported(path: Path, spec: str, trust_pickle: bool = False) -> LoadedModel:
    """A ``torch.export`` program unflattened into ordinary modules (the original module paths kept).

    Every entry of the archive is vetted first (:mod:`essence.core.inputs.pt2_vetting`): a pickled entry, native
    code or a graph that calls anything but torch operators is refused unless ``trust_pickle``.
    """
    program = load_vetted_program(path, trust_pickle=trust_pickle)
    try:
        with warnings.catch_warnings():  # torch's chatter would break the one-line error
            warnings.simplefilter("ignore")
            module = torch.export.unflatten(program)
    except Exception as exc:  # a program torch cannot unflatten
        raise ModelLoadError(
            f"{path.name} is not a usable torch.export program ({type(exc).__name__}: {str(exc)[:160]}): save it "
            "with torch.export.save(torch.export.export(model, (x,)), 'model.pt2')"
        ) from exc
    run_compiled(module)  # the generated code of each graph, not torch.fx.Interpreter: the same operators
    return LoadedModel(
        module=module.eval(),
        spec=spec,
        fingerprint=model_fingerprint(module, "torch.export"),
        card={"name": path.name, "architecture": "torch.export program", "weights": str(path)},
    )


def _load_file_model(path: Path, spec: str, trust_pickle: bool) -> LoadedModel:
    if not os.path.lexists(path):
        raise ModelLoadError(f"model file {str(path)!r} does not exist; check the path")
    regular_file(path, "the model spec", ModelLoadError)  # a FIFO, a device or a symlink loop, named as such
    kind = _archive_kind(path)
    if kind == "export" or (kind is None and path.suffix == ".pt2"):
        return _load_exported(path, spec, trust_pickle)
    if kind == "torchscript":
        raise ModelLoadError(f"{path.name} {TORCHSCRIPT_REFUSAL}")
    # A plain state_dict has no architecture; a full pickle is refused unless trusted.
    obj = torch_load(path, trust_pickle)
    if isinstance(obj, torch.jit.ScriptModule):
        raise ModelLoadError(f"{path.name} {TORCHSCRIPT_REFUSAL}")
    if isinstance(obj, nn.Module):
        return LoadedModel(
            module=obj.eval(),
            spec=spec,
            fingerprint=model_fingerprint(obj, type(obj).__qualname__),
            card={"name": path.name, "architecture": type(obj).__qualname__, "weights": str(path)},
        )
    if isinstance(obj, dict):
        raise ModelLoadError(
            f"{path} holds weights (a state_dict) but no architecture: use the spec torchvision:ARCH or "
            f"package.module:function with weights={path}"
        )
    raise ModelLoadError(
        f"{path} is neither an exported program (.pt2), a whole pickled module nor a state_dict: use {SPEC_FORMS}"
    )


def forward_failure(exc: BaseException, input_shape: tuple[int, ...]) -> str:
    """The one-line message for a model whose own ``forward`` raised something other than a shape error."""
    text = " ".join(str(exc).split())[:200] or "no message"
    return (
        f"the model's own forward raised {type(exc).__name__} ({text}) on inputs {input_shape}: fix the model's "
        "code, or check that these are the inputs it was built for"
    )


def check_compatible(model: LoadedModel | nn.Module, data: ImageData) -> int:
    """Run the model on a few instances: check it accepts the data and its outputs match the data's classes.

    Args:
        model: the model (or its module).
        data: the dataset it is to be analysed on.

    Returns:
        The number of model outputs.

    Raises:
        DataLoadError: the model cannot run on these inputs (size, channels).
        LabelMismatchError: the model's number of outputs differs from the data's number of classes.
        ClassOrderError: the model names no classes and the data's class order would be a guess
            (:func:`essence.core.inputs.cards.class_order`).
        BatchCouplingError: an instance's output depends on the rest of its batch (see
            :mod:`essence.core.base.independence`).

    Examples:
        >>> from essence.core import load_dataset, load_model
        >>> model = load_model("demo:blurred")
        >>> check_compatible(model, load_dataset("demo:test", model.preprocessing))
        5

        A model of 3 outputs does not fit the 10 classes of the digits:

        >>> from torch import nn
        >>> check_compatible(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), load_dataset("digits"))
        Traceback (most recent call last):
        ...
        essence.core.base.errors.LabelMismatchError: the model has 3 outputs but digits has 10 classes ...
    """
    module = model.module if isinstance(model, LoadedModel) else model
    x = data.tensors(np.arange(min(4, len(data), data.max_batch_size() or 4)))
    was = module.training
    try:
        module.eval()
        with torch.no_grad():
            device = next(iter(module.parameters()), torch.empty(0)).device
            out = module(x.to(device))
        if isinstance(out, torch.Tensor) and out.ndim == 2:
            check_batch_independent(module, x.to(device), out)
    except RuntimeError as exc:
        msg = str(exc).splitlines()[0][:200]
        raise DataLoadError(
            f"the model cannot run on {data.spec} (inputs {tuple(x.shape[1:])}): {msg}; check the image size "
            "and channels of the preprocessing (size, mode)"
        ) from exc
    except EssenceError:
        raise
    except Exception as exc:  # the user's own forward raised (KeyError, AssertionError...): their code
        raise ModelLoadError(forward_failure(exc, tuple(x.shape[1:]))) from exc
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
    if isinstance(model, LoadedModel):
        class_order(model, data)  # a model naming no classes is never matched to the data's sorted names
    return k


specs.register_model_spec("torchvision", load_torchvision)
