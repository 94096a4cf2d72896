"""The spec registry: unknown prefixes, third-party loaders, entry-point discovery, and no import of the demo."""

from __future__ import annotations

import ast
import importlib.metadata
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from essence.core.base.errors import ModelLoadError, SpecError
from essence.core.inputs import specs
from essence.core.inputs.data import ImageData
from essence.core.inputs.datasets import load_dataset
from essence.core.inputs.model_fingerprints import model_fingerprint
from essence.core.inputs.models import LoadedModel, load_model
from essence.core.inputs.specs import DataRequest, ModelRequest, SpecRegistry

CORE = Path(__file__).resolve().parents[2] / "core"


@pytest.fixture
def registry(monkeypatch: pytest.MonkeyPatch) -> SpecRegistry:
    """The real registry (built-ins and all), with whatever a test registers taken off again afterwards."""
    monkeypatch.setattr(specs.REGISTRY, "models", dict(specs.REGISTRY.models))
    monkeypatch.setattr(specs.REGISTRY, "data", dict(specs.REGISTRY.data))
    return specs.REGISTRY


def toy_model(request: ModelRequest) -> LoadedModel:
    module = nn.Linear(int(request.arg), 2).eval()
    return LoadedModel(module, request.spec, model_fingerprint(module, request.spec), card={"req": request})


def toy_data(request: DataRequest) -> ImageData:
    images = np.zeros((4, 3, 2, 2), dtype=np.float32)
    labels = np.array([0, 1, 0, 1])
    return ImageData(
        spec=request.spec, labels=labels, class_names=["a", "b"], preprocessing=request.preprocessing,
        fingerprint=request.arg or "bare", arrays=images,
    )  # fmt: skip


def test_unknown_prefixes_list_the_known_ones_and_the_fix() -> None:
    with pytest.raises(SpecError) as info:
        load_dataset("parquet:x.parquet")
    message = str(info.value)
    for prefix in ("csv", "demo", "digits", "folder", "npz", "essence.specs"):
        assert prefix in message
    with pytest.raises(SpecError, match=r"registered prefixes: .*torchvision.*essence\.specs"):
        load_model("what is this?")


def test_a_third_party_registration_answers_its_prefix(registry: SpecRegistry) -> None:
    specs.register_model_spec("toy", toy_model)
    specs.register_data_spec("toy", toy_data)
    model = load_model("toy:5", "w.bin", num_classes=2)
    assert isinstance(model.module, nn.Linear) and model.module.in_features == 5
    assert model.card["req"] == ModelRequest("toy:5", "5", "w.bin", False, 2)
    assert load_dataset("toy:abc").fingerprint == "abc" and load_dataset("toy").fingerprint == "bare"
    assert "toy" in specs.known_prefixes("model") and "toy" in specs.known_prefixes("data")
    specs.register_model_spec("toy", toy_model)  # the same loader again: a no-op (a plug-in loaded twice)


def test_registration_refuses_clashes_bad_prefixes_and_non_callables(registry: SpecRegistry) -> None:
    def other(request: ModelRequest) -> LoadedModel:
        raise AssertionError("not called")

    with pytest.raises(SpecError, match="already registered"):
        specs.register_model_spec("torchvision", other)
    specs.register_model_spec("torchvision", other, replace=True)
    assert specs.model_loader("torchvision") is other
    for prefix in ("", "a.b", "a:b", "9lives", "has space"):
        with pytest.raises(SpecError, match="plain name"):
            specs.register_data_spec(prefix, toy_data)
    with pytest.raises(TypeError, match="callable"):
        specs.register_data_spec("toy", "not a function")  # type: ignore[arg-type]


def test_the_demo_is_registered_through_its_entry_point() -> None:
    # Every distribution's metadata (as the registry reads it): a stale egg-info of a build in the working
    # folder would hide the installed one from ``entry_points()``.
    installed = {ep.name: ep.value for ep in specs._entry_points()}
    assert installed.get("demo") == "essence.sample_data.specs:register"
    assert "demo" in specs.known_prefixes("model") and "demo" in specs.known_prefixes("data")
    assert specs.model_loader("demo").__module__ == "essence.sample_data.specs"
    assert specs.data_loader("demo").__module__ == "essence.sample_data.specs"


def write_plugin(folder: Path, name: str, body: str) -> None:
    (folder / f"{name}.py").write_text(textwrap.dedent(body))


def test_plugins_are_discovered_lazily_by_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_plugin(
        tmp_path,
        "essence_toy_plugin",
        """
        from essence.core.inputs import specs
        from essence.core.inputs.models import LoadedModel
        from torch import nn

        CALLS = []

        def register():
            CALLS.append(1)
            specs.register_model_spec("toyep", lambda r: LoadedModel(nn.Identity(), r.spec, "f" * 16))
        """,
    )
    write_plugin(tmp_path, "essence_broken_plugin", "def register():\n    raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    group = specs.ENTRY_POINT_GROUP
    points = [
        importlib.metadata.EntryPoint("toyep", "essence_toy_plugin:register", group),
        importlib.metadata.EntryPoint("broken", "essence_broken_plugin:register", group),
    ]
    monkeypatch.setattr(specs, "_entry_points", lambda: points)
    monkeypatch.setattr(specs, "REGISTRY", SpecRegistry())
    assert specs.known_prefixes("model") == ["broken", "toyep"]
    assert specs.model_loader("other") is None
    assert "essence_toy_plugin" not in sys.modules  # listed, not imported, until its prefix is asked for
    assert load_model("toyep:x").spec == "toyep:x"
    assert load_model("toyep:y").spec == "toyep:y"
    assert sys.modules["essence_toy_plugin"].CALLS == [1]  # loaded once
    with pytest.raises(SpecError, match=r"broken.*essence_broken_plugin:register.*RuntimeError: boom"):
        load_model("broken:x")


def core_imports() -> set[str]:
    names: set[str] = set()
    for path in CORE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                names.add(node.module)
                names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


@pytest.mark.slow  # fresh interpreters
def test_core_never_imports_the_demo(tmp_path: Path) -> None:
    assert not [n for n in core_imports() if "sample_data" in n]
    torch.manual_seed(0)
    torch.save(nn.Linear(4, 3).state_dict(), tmp_path / "w.pt")
    (tmp_path / "essence_toy_factory.py").write_text(
        "from torch import nn\ndef build():\n    return nn.Linear(4, 3)\n"
    )
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        import essence.core
        from essence.core import load_dataset, load_model
        from essence.core.inputs import specs
        load_model("essence_toy_factory:build", {str(tmp_path / "w.pt")!r})
        load_dataset("digits")
        try:
            load_dataset("parquet:x")
        except essence.core.SpecError as exc:
            assert "demo" in str(exc)  # listed from the metadata, not imported
        assert "essence.sample_data" not in sys.modules, "core imported the demo"
        load_model("demo:sharp")
        assert "essence.sample_data.specs" in sys.modules
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_an_unknown_demo_name_is_still_a_model_error() -> None:
    with pytest.raises(ModelLoadError, match="unknown demo model"):
        load_model("demo:fuzzy")
    with pytest.raises(SpecError, match="unknown demo split"):
        load_dataset("demo:holdout")
    assert torch.is_tensor(load_dataset("demo:val").tensors([0]))
