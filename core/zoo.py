"""Models from the field's libraries: ``timm:ARCH`` and ``monai:NETWORK``, always with weights from a file.

Specs (the architecture's keyword arguments, Python literals only, may follow in parentheses)::

    timm:resnet18 --weights W.safetensors                 any timm image classifier (pretrained=False)
    timm:test_vit --weights W.safetensors
    monai:DenseNet121 --weights W.safetensors             a MONAI network, 2-D (spatial_dims=2)
    monai:DenseNet(init_features=8,growth_rate=8,block_config=(2,2)) --weights W.safetensors

Nothing is downloaded: timm models are built with ``pretrained=False`` and MONAI's with ``pretrained=False``
where the network takes it, then the weights file is loaded strictly into them. The input channels and the
number of classes are read from the weights (the first convolution's and the last linear layer's shapes), so
a one-channel, three-class DenseNet needs no more than its file. Module paths are the library's own, as
``essence layers`` lists them (``layer3``, ``features.denseblock3``...).
"""

from __future__ import annotations

import ast
import difflib
import inspect
from typing import Any

from torch import nn

from essence.core import specs
from essence.core.errors import ModelLoadError, SpecError
from essence.core.models import LoadedModel, model_fingerprint
from essence.core.preprocessing import Preprocessing
from essence.core.specs import ModelRequest
from essence.core.weights import apply_state_dict, load_weights

_IN_NAMES = ("in_channels", "n_input_channels", "in_chans")
_OUT_NAMES = ("out_channels", "num_classes", "classes")


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


def _library(name: str, extra: str) -> Any:
    try:
        return __import__(name)
    except ImportError as exc:
        raise ModelLoadError(
            f"{name}: models need the {name} package: pip install 'essence[{extra}]' (or pip install {name})"
        ) from exc


def _needs_weights(spec: str, weights: object) -> None:
    if weights is None:
        raise ModelLoadError(
            f"{spec} needs a weights file (--weights FILE.safetensors or a state_dict .pt); nothing is downloaded "
            "at run time"
        )


def shapes_from_weights(probe: nn.Module, state: dict) -> tuple[int | None, int | None]:
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
    if not timm.is_model(arch):
        close = difflib.get_close_matches(arch, timm.list_models(), n=4)
        hint = f"closest: {', '.join(close)}" if close else "see timm.list_models()"
        raise SpecError(f"timm has no model {arch!r} ({hint}); name one of timm's architectures")
    _needs_weights(request.spec, request.weights)
    state = load_weights(request.weights, trust_pickle=request.trust_pickle)  # type: ignore[arg-type]
    build = _builder(lambda **kw: timm.create_model(arch, pretrained=False, **kw), request.spec)
    channels, classes = shapes_from_weights(build(**kwargs), state)
    sizes = {"in_chans": kwargs.get("in_chans", channels or 3)}
    sizes["num_classes"] = kwargs.get("num_classes", request.num_classes or classes or 1000)
    module = build(**{**kwargs, **sizes})
    apply_state_dict(module, state, request.weights)  # type: ignore[arg-type]
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
    _needs_weights(request.spec, request.weights)
    state = load_weights(request.weights, trust_pickle=request.trust_pickle)  # type: ignore[arg-type]
    params = inspect.signature(network).parameters
    in_name = next((n for n in _IN_NAMES if n in params), None)
    out_name = next((n for n in _OUT_NAMES if n in params), None)
    fixed = {"spatial_dims": 2} if "spatial_dims" in params else {}
    if "pretrained" in params:
        fixed["pretrained"] = False
    build = _builder(network, request.spec)
    probe_sizes = {k: v for k, v in ((in_name, 1), (out_name, 2)) if k}
    probe = build(**{**fixed, **probe_sizes, **kwargs})
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
    module = build(**{**fixed, **kwargs, **sizes})
    apply_state_dict(module, state, request.weights)  # type: ignore[arg-type]
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
