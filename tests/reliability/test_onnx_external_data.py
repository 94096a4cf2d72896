"""An ONNX model's external data is read only from a regular file inside the model's own folder.

ONNX keeps large tensors in files named by the model (``location``); a hostile model can name a file elsewhere
(``../``, an absolute path) or a symbolic link to one, to make the reader pull another file into the weights.
Each is refused with one line naming the tensor, and a model whose data lies beside it still loads.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from essence.core import load_model
from essence.core.base.errors import ModelLoadError

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnx2torch")


def _model(folder: Path) -> Path:
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((48, 3), np.float32), "W")
    shape = numpy_helper.from_array(np.array([-1, 48], np.int64), "shape")
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["f"]), helper.make_node("MatMul", ["f", "W"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
        [weight, shape],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = folder / "model.onnx"
    onnx.save_model(
        model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location="w.bin",
        size_threshold=0,
    )  # fmt: skip
    return path


def _pointing_at(path: Path, location: str, name: str) -> Path:
    model = onnx.load(str(path), load_external_data=False)
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location":
                entry.value = location
    out = path.parent / name
    onnx.save_model(model, str(out))
    return out


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "model").mkdir()
    (tmp_path / "secret.bin").write_bytes(os.urandom(48 * 3 * 4 + 16))
    return tmp_path / "model"


def test_data_beside_the_model_loads(folder: Path) -> None:
    loaded = load_model(f"onnx:{_model(folder)}")
    assert any(True for _ in loaded.module.parameters()) or any(True for _ in loaded.module.buffers())


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink"])
def test_data_outside_the_folder_is_refused(folder: Path, where: str) -> None:
    path = _model(folder)
    secret = folder.parent / "secret.bin"
    if where == "parent":
        hostile = _pointing_at(path, "../secret.bin", "up.onnx")
    elif where == "absolute":
        hostile = _pointing_at(path, str(secret), "abs.onnx")
    else:
        (folder / "link.bin").symlink_to(secret)
        hostile = _pointing_at(path, "link.bin", "link.onnx")
    with pytest.raises(ModelLoadError) as info:
        load_model(f"onnx:{hostile}")
    message = str(info.value)
    assert "\n" not in message and hostile.name in message and "W" in message, message
