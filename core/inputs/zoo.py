"""Models from the field's libraries: ``timm:ARCH`` and ``monai:NETWORK``, always with weights from a file.

Specs (the architecture's keyword arguments, Python literals only, may follow in parentheses)::

    timm:resnet18 --weights W.safetensors                 any timm image classifier (pretrained=False)
    timm:test_vit --weights W.safetensors
    monai:DenseNet121 --weights W.safetensors             a MONAI network, 2-D (spatial_dims=2)
    monai:DenseNet(init_features=8,growth_rate=8,block_config=(2,2)) --weights W.safetensors

Nothing is downloaded and no file but ``--weights`` is read: timm models are built with ``pretrained=False``
and MONAI's with ``pretrained=False`` where the network takes it, then the weights file is loaded strictly into
them. The keyword arguments of a spec are checked before anything is built with them, by one rule:

- allowed are only the parameters of the network class's own constructor (for timm, the class the
  architecture builds: ``ResNet``, ``VisionTransformer``...; a constructor that forwards ``**kwargs`` adds
  its parent class's parameters), so the library's loading options (``pretrained_cfg``,
  ``pretrained_cfg_overlay``, ``checkpoint_path``, ``cache_dir``, ``features_only``...) are never reached;
- of those, a parameter that downloads or reads files is refused: ``pretrained``, ``progress``, ``weights``,
  and any name with a part ``pretrain*``, ``checkpoint``, ``ckpt``, ``cache``, ``download``, ``hub``, ``url``,
  or ending in ``_path``, ``_file``, ``_dir``, ``_root``...;
- a string value (also inside a tuple, list or dict) that looks like a file path or URL (a ``/``, ``\\`` or
  ``:``, a leading ``~``, a weights-file suffix) is refused whatever its argument.

Each refusal is one :class:`SpecError` naming the argument. The input channels and the number of classes are
read from the weights (the first convolution's and the last linear layer's shapes), so a one-channel,
three-class DenseNet needs no more than its file. Module paths are the library's own, as ``essence layers``
lists them (``layer3``, ``features.denseblock3``...).
"""

from __future__ import annotations

import ast
import difflib
import inspect
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from essence.core.base.errors import ModelLoadError, SpecError
from essence.core.inputs import specs
from essence.core.inputs.model_fingerprints import model_fingerprint
from essence.core.inputs.models import LoadedModel
from essence.core.inputs.preprocessing import Preprocessing
from essence.core.inputs.specs import ModelRequest
from essence.core.inputs.weights import apply_state_dict, load_weights

_IN_NAMES = ("in_channels", "n_input_channels", "in_chans")
_OUT_NAMES = ("out_channels", "num_classes", "classes")
# Arguments that download or read files (module docstring): refused by name even where the class takes them.
_LOADING_NAMES = frozenset({"pretrained", "progress", "weights", "state_dict"})
_LOADING_PARTS = ("pretrain", "checkpoint", "ckpt", "cache", "download", "hub", "url", "uri")
_LOADING_ENDS = frozenset(
    {"path", "paths", "file", "files", "filename", "dir", "directory", "root", "folder"}
)
_WEIGHTS_SUFFIX = r"\.(pt|pth|bin|ckpt|safetensors|npz|npy|onnx|h5|pkl|pickle|json|ya?ml|tar|gz|zip)$"
_PATH_LIKE = re.compile(rf"[/\\:]|^~|{_WEIGHTS_SUFFIX}", re.IGNORECASE)


def parse_call(arg: str, form: str) -> tuple[str, dict[str, Any]]:
    """``NAME`` or ``NAME(key=literal, ...)`` → the name and the keyword arguments.

    Raises:
        SpecError: anything else (positional arguments, expressions that are not literals).
    """
    text = arg.strip()
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError as exc:
        raise SpecError(
            f"model spec {form}:{arg} is not understood: write {form}:NAME or {form}:NAME(key=value, ...)"
        ) from exc
    if isinstance(node, ast.Name):
        return node.id, {}
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and not node.args:
        kwargs: dict[str, Any] = {}
        for kw in node.keywords:
            if kw.arg is None:
                raise SpecError(f"model spec {form}:{arg}: **kwargs are not allowed; name each argument")
            try:
                kwargs[kw.arg] = ast.literal_eval(kw.value)
            except ValueError as exc:
                raise SpecError(
                    f"model spec {form}:{arg}: the value of {kw.arg} is not a literal (numbers, strings, tuples, "
                    "lists, True/False/None)"
                ) from exc
        return node.func.id, kwargs
    raise SpecError(
        f"model spec {form}:{arg} is not understood: write {form}:NAME or {form}:NAME(key=value, ...) with "
        "keyword arguments only"
    )


def is_loading_argument(name: str) -> bool:
    """Whether an argument's name says it downloads or reads files (``pretrained``, ``checkpoint_path``...)."""
    parts = name.lower().split("_")
    return (
        name.lower() in _LOADING_NAMES
        or any(part.startswith(_LOADING_PARTS) for part in parts)
        or (len(parts) > 1 and parts[-1] in _LOADING_ENDS and "drop" not in parts)  # drop_path: no file
    )


def _path_like(value: Any) -> str | None:
    """The first string in ``value`` (a literal, searched through tuples, lists, sets and dicts) that looks
    like a file path or URL, or None."""
    if isinstance(value, str):
        return value if _PATH_LIKE.search(value) else None
    if isinstance(value, dict):
        value = [*value.keys(), *value.values()]
    if isinstance(value, list | tuple | set | frozenset):
        return next((found for v in value if (found := _path_like(v)) is not None), None)
    return None


def refuse_loading_arguments(kwargs: dict[str, Any], spec: str) -> None:
    """Refuse, by name, an argument that downloads or reads files, or whose value looks like a path or URL.

    Raises:
        SpecError: one line naming the argument and the fix (the weights come from ``weights`` only).
    """
    for name, value in kwargs.items():
        if is_loading_argument(name):
            raise SpecError(
                f"model spec {spec}: the argument {name} downloads or reads files, which Essence never lets a "
                "library do; drop it and pass the weights as weights=FILE.safetensors"
            )
        found = _path_like(value)
        if found is not None:
            raise SpecError(
                f"model spec {spec}: the value of {name} ({found[:80]!r}) looks like a file path or URL; "
                "architecture arguments are numbers, names and tuples, the weights come with weights=FILE"
            )


def constructor_parameters(network: type) -> list[str]:
    """The keyword parameters of a network class's own constructor, in order.

    A constructor that takes ``**kwargs`` forwards them to its parent, whose parameters are added in turn (up
    to ``torch.nn.Module``, whose own are not a network's).
    """
    names: list[str] = []
    for cls in network.__mro__:
        if cls is nn.Module or cls is object:
            break
        init = cls.__dict__.get("__init__")
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            break
        names += [
            p.name for p in params
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self" and p.name not in names
        ]  # fmt: skip
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names


def refuse_foreign_arguments(kwargs: dict[str, Any], network: type, spec: str, library: str) -> None:
    """Refuse, by name, an argument that is not a parameter of the network class's own constructor.

    Raises:
        SpecError: one line naming the argument, the class, and the closest of its parameters.
    """
    own = [n for n in constructor_parameters(network) if not is_loading_argument(n)]
    for name in kwargs:
        if name not in own:
            close = difflib.get_close_matches(name, own, n=3)
            hint = f"closest: {', '.join(close)}" if close else f"its parameters: {', '.join(own[:12])}"
            if len(own) > 12 and not close:
                hint += ", ..."
            raise SpecError(
                f"model spec {spec}: {name} is not a parameter of {library}'s {network.__name__} ({hint}); "
                "only the network's own constructor arguments are accepted"
            )


def _timm_class(timm: Any, arch: str, spec: str) -> type:
    """The class timm builds for ``arch``, found by building it with its defaults on the meta device (no
    memory, no file, nothing downloaded: ``pretrained=False``)."""
    build = _builder(lambda: timm.create_model(arch, pretrained=False), spec)
    try:
        with torch.device("meta"):
            return type(build())
    except ModelLoadError:  # an architecture whose construction reads tensor values: on the CPU, then
        return type(build())


def _library(name: str, extra: str) -> Any:
    try:
        return __import__(name)
    except ImportError as exc:
        raise ModelLoadError(
            f"{name}: models need the {name} package: pip install 'essence[{extra}]' (or pip install {name})"
        ) from exc


def _needs_weights(spec: str, weights: str | Path | None) -> str | Path:
    """The weights file of ``spec``: a zoo model is never built without one (nothing is downloaded)."""
    if weights is None:
        raise ModelLoadError(
            f"{spec} needs a weights file (weights=FILE.safetensors or a state_dict .pt); nothing is downloaded "
            "at run time"
        )
    return weights


def shapes_from_weights(probe: nn.Module, state: dict[str, torch.Tensor]) -> tuple[int | None, int | None]:
    """The input channels (first convolution) and outputs (last linear layer) the weights were saved with.

    Args:
        probe: the architecture built with any channel and class counts (only its module paths are read).
        state: the weights.

    Returns:
        ``(in_channels, num_classes)``, None for what the weights do not say.
    """
    first_conv = last_linear = None
    for name, m in probe.named_modules():
        if first_conv is None and isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d):
            first_conv = (name, m.groups)
        if isinstance(m, nn.Linear):
            last_linear = name
    channels = classes = None
    if first_conv is not None and f"{first_conv[0]}.weight" in state:
        channels = int(state[f"{first_conv[0]}.weight"].shape[1]) * int(first_conv[1])
    if last_linear is not None and f"{last_linear}.weight" in state:
        classes = int(state[f"{last_linear}.weight"].shape[0])
    return channels, classes


def _recipe(channels: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Preprocessing:
    if channels == 3 and len(mean) == 3 and len(std) == 3:
        return Preprocessing(mode="RGB", mean=mean, std=std)
    if channels == 1:
        return Preprocessing(mode="L", mean=(sum(mean) / len(mean),), std=(sum(std) / len(std),))
    raise ModelLoadError(
        f"the weights take {channels} input channels; Essence feeds images of 1 (greyscale) or 3 (RGB) channels"
    )


def load_timm(request: ModelRequest) -> LoadedModel:
    """The ``timm:ARCH`` loader (see the module docstring).

    Raises:
        SpecError: an architecture timm does not have (the closest names are listed), or a malformed spec.
        ModelLoadError: timm missing, no weights, or weights that do not fit.
    """
    timm = _library("timm", "timm")
    arch, kwargs = parse_call(request.arg, "timm")
    refuse_loading_arguments(kwargs, request.spec)
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=4)
        hint = f"closest: {', '.join(close)}" if close else "see timm.list_models()"
        raise SpecError(f"timm has no model {arch!r} ({hint}); name one of timm's architectures")
    if kwargs:
        refuse_foreign_arguments(kwargs, _timm_class(timm, arch, request.spec), request.spec, "timm")
    weights = _needs_weights(request.spec, request.weights)
    state = load_weights(weights, trust_pickle=request.trust_pickle)
    build = _builder(lambda **kw: timm.create_model(arch, pretrained=False, **kw), request.spec)
    channels, classes = shapes_from_weights(build(**kwargs), state)
    sizes = {"in_chans": kwargs.get("in_chans", channels or 3)}
    sizes["num_classes"] = kwargs.get("num_classes", request.num_classes or classes or 1000)
    module = build(**{**kwargs, **sizes})
    apply_state_dict(module, state, weights)
    cfg = getattr(module, "pretrained_cfg", None) or {}
    mean = tuple(float(v) for v in cfg.get("mean", (0.485, 0.456, 0.406)))
    std = tuple(float(v) for v in cfg.get("std", (0.229, 0.224, 0.225)))
    return LoadedModel(
        module=module.eval(),
        spec=request.spec,
        fingerprint=model_fingerprint(module, request.spec),
        preprocessing=_recipe(int(sizes["in_chans"]), mean, std),
        card={"name": request.spec, "architecture": request.spec, "weights": str(request.weights),
              "library": f"timm {timm.__version__}"},
    )  # fmt: skip


def load_monai(request: ModelRequest) -> LoadedModel:
    """The ``monai:NETWORK`` loader (see the module docstring): a 2-D classifier from ``monai.networks.nets``.

    Raises:
        SpecError: a network MONAI does not have, or a malformed spec.
        ModelLoadError: MONAI missing, no weights, weights that do not fit, or a network that is no classifier.
    """
    _library("monai", "monai")
    from monai.networks import nets

    name, kwargs = parse_call(request.arg, "monai")
    refuse_loading_arguments(kwargs, request.spec)
    network = getattr(nets, name, None)
    if not (inspect.isclass(network) and issubclass(network, nn.Module)):
        known = [
            n
            for n in dir(nets)
            if inspect.isclass(getattr(nets, n)) and issubclass(getattr(nets, n), nn.Module)
        ]
        close = difflib.get_close_matches(name, known, n=4)
        raise SpecError(
            f"MONAI has no network {name!r} (closest: {', '.join(close) or 'none'}); see monai.networks.nets"
        )
    refuse_foreign_arguments(kwargs, network, request.spec, "MONAI")
    weights = _needs_weights(request.spec, request.weights)
    state = load_weights(weights, trust_pickle=request.trust_pickle)
    params = constructor_parameters(network)
    in_name = next((n for n in _IN_NAMES if n in params), None)
    out_name = next((n for n in _OUT_NAMES if n in params), None)
    fixed = {"spatial_dims": 2} if "spatial_dims" in params else {}
    forced = {"pretrained": False} if "pretrained" in params else {}  # last: no argument overrides it
    build = _builder(network, request.spec)
    probe_sizes = {k: v for k, v in ((in_name, 1), (out_name, 2)) if k}
    probe = build(**{**fixed, **probe_sizes, **kwargs, **forced})
    channels, classes = shapes_from_weights(probe, state)
    if not any(isinstance(m, nn.Linear) for m in probe.modules()):
        raise ModelLoadError(
            f"{request.spec} has no final linear layer: Essence analyses image classifiers; "
            "use a MONAI classification network (DenseNet121, EfficientNetBN, ResNet...)"
        )
    sizes = {}
    if in_name:
        sizes[in_name] = kwargs.get(in_name, channels or 1)
    if out_name:
        sizes[out_name] = kwargs.get(out_name, request.num_classes or classes or 2)
    module = build(**{**fixed, **kwargs, **sizes, **forced})
    apply_state_dict(module, state, weights)
    channels = int(sizes.get(in_name, channels or 1)) if in_name else (channels or 1)
    return LoadedModel(
        module=module.eval(),
        spec=request.spec,
        fingerprint=model_fingerprint(module, request.spec),
        preprocessing=_recipe(channels, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
        card={"name": request.spec, "architecture": request.spec, "weights": str(request.weights),
              "library": "monai"},
    )  # fmt: skip


def _builder(factory: Any, spec: str) -> Any:
    """``factory`` whose failures (a wrong argument, an impossible configuration) are one-line errors."""

    def build(**kwargs: Any) -> nn.Module:
        try:
            module = factory(**kwargs)
        except (TypeError, ValueError, AssertionError, RuntimeError, KeyError) as exc:
            raise ModelLoadError(
                f"cannot build {spec} with {kwargs} ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}): "
                "check the architecture's arguments"
            ) from exc
        if not isinstance(module, nn.Module):
            raise ModelLoadError(f"{spec} built a {type(module).__name__}, not a torch.nn.Module")
        return module

    return build


specs.register_model_spec("timm", load_timm)
specs.register_model_spec("monai", load_monai)
