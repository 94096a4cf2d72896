"""ONNX models: ``onnx:PATH.onnx``, converted to PyTorch modules by ``onnx2torch`` so every analysis can slice them.

onnx2torch turns each ONNX node into a submodule of an ``fx.GraphModule`` named after the node (``0/Conv``,
``layer3/layer3.1/conv2/Conv``...), so a slice is named by such a path (``essence layers`` lists them) and
read through a forward hook like any module's. The weights are the file's own initialisers; ``--weights`` is
not taken.

Refused, one line each with the fix: a file that is not ONNX, operators onnx2torch cannot convert (named), a
graph without convertible layers to slice, an input with a fixed batch size other than one that varies
(Essence runs batches of any size), a model with several inputs.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any

from essence.core.base.errors import ModelLoadError, SpecError
from essence.core.inputs import specs
from essence.core.inputs.model_fingerprints import model_fingerprint
from essence.core.inputs.models import LoadedModel
from essence.core.inputs.specs import ModelRequest

INSTALL_HINT = "pip install 'essence[onnx]' (or pip install onnx onnx2torch)"
_OP = re.compile(r"operation_type='([^']+)'.*?version=(\d+)")


def _libraries() -> tuple[Any, Any]:
    try:
        import onnx
        import onnx2torch
    except ImportError as exc:
        raise ModelLoadError(f"ONNX models need onnx and onnx2torch: {INSTALL_HINT}") from exc
    return onnx, onnx2torch


def load_onnx(request: ModelRequest) -> LoadedModel:
    """The ``onnx:PATH`` loader (see the module docstring).

    Raises:
        SpecError: no path, or ``weights`` given.
        ModelLoadError: onnx/onnx2torch missing, an unreadable file, unsupported operators, no layers to slice,
            a fixed batch size, several inputs.
    """
    if not request.arg.strip():
        raise SpecError("model spec onnx: needs a path: onnx:MODEL.onnx")
    if request.weights is not None:
        raise SpecError(f"{request.spec} holds its own weights: drop weights=")
    path = Path(request.arg.strip())
    if not path.is_file():
        raise ModelLoadError(f"ONNX file {str(path)!r} does not exist; check the path")
    onnx, onnx2torch = _libraries()
    try:
        proto = onnx.load(str(path))
        onnx.checker.check_model(proto)
    except Exception as exc:  # protobuf's and the checker's errors have no common base
        raise ModelLoadError(
            f"{path.name} is not a valid ONNX model ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}): "
            "export it again (torch.onnx.export) and pass the .onnx file"
        ) from exc
    _check_inputs(proto, path.name)
    try:
        with warnings.catch_warnings():  # the converter's chatter would break the one-line errors
            warnings.simplefilter("ignore")
            module = onnx2torch.convert(proto)
    except NotImplementedError as exc:
        ops = sorted({f"{op} (opset {v})" for op, v in _OP.findall(str(exc))}) or [str(exc)[:120]]
        raise ModelLoadError(
            f"{path.name} uses ONNX operators that cannot be converted to PyTorch modules: {', '.join(ops)}; "
            "export the model without them (another opset, or replace the layer), or load the PyTorch model "
            "itself (package.module:function with weights=FILE)"
        ) from exc
    except Exception as exc:  # the converter fails in many ways on graphs it half-supports
        raise ModelLoadError(
            f"{path.name} cannot be converted to PyTorch ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}): "
            "load the PyTorch model itself (package.module:function with weights=FILE)"
        ) from exc
    if not any(True for name, _ in module.named_modules() if name):
        raise ModelLoadError(
            f"{path.name} converted to a graph without layers to slice: load the PyTorch model itself "
            "(package.module:function with weights=FILE)"
        )
    return LoadedModel(
        module=module.eval(),
        spec=request.spec,
        fingerprint=model_fingerprint(module, "onnx"),
        card={"name": path.name, "architecture": "ONNX (onnx2torch)", "weights": str(path)},
    )


def _check_inputs(proto: Any, name: str) -> None:
    """One graph input (initialisers aside) whose batch dimension may vary."""
    initialisers = {i.name for i in proto.graph.initializer}
    inputs = [i for i in proto.graph.input if i.name not in initialisers]
    if len(inputs) != 1:
        raise ModelLoadError(
            f"{name} takes {len(inputs)} inputs; Essence analyses models of one image input: export the model "
            "with the image as its only input"
        )
    dims = inputs[0].type.tensor_type.shape.dim
    if dims and dims[0].HasField("dim_value") and dims[0].dim_value != 0:
        raise ModelLoadError(
            f"{name} has a fixed batch size of {dims[0].dim_value}; Essence runs batches of any size: export it "
            "with a dynamic batch axis (torch.onnx.export(..., dynamic_axes={'input': {0: 'batch'}}))"
        )


specs.register_model_spec("onnx", load_onnx)
