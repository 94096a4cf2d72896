"""Hostile ``torch.export`` archives (``.pt2``): nothing in one runs before (or instead of) being vetted.

Each archive is built here from a real exported program, with one entry replaced or added the way an attacker
would. On the code before the vetting (plain ``torch.export.load``), the pickle kinds created the sentinel file;
now every kind is refused with one line naming the entry — through the Python API, the CLI (a subprocess, exit
2) and the app's upload route — and the sentinel never appears. ``--trust-pickle`` still opens a benign
archive that holds a pickled object, and a clean archive loads and computes what the module computes.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import re
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from essence.core import load_model
from essence.core.base.errors import ModelLoadError
from tests.reliability.reliability_helpers import make_workspace, run_cli


class _Touch:
    """Unpickling this creates ``path``: the payload every pickle kind carries."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.path, "w"))


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)
    ).eval()


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pt2")
    program = torch.export.export(
        _tiny(), (torch.randn(2, 3, 8, 8),), dynamic_shapes=({0: torch.export.Dim("batch")},)
    )
    path = root / "model.pt2"
    torch.export.save(program, str(path))
    return path


def _entries(path: Path) -> tuple[str, dict[str, bytes]]:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        return names[0].split("/", 1)[0], {n: z.read(n) for n in names}


def _write(path: Path, entries: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        for name, data in entries.items():
            z.writestr(name, data)
    return path


def _torch_pickle(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def sample_inputs_pickle(root: str, e: dict[str, bytes], sentinel: Path) -> None:
    e[f"{root}/data/sample_inputs/model.pt"] = _torch_pickle(((_Touch(sentinel),), {}))


def pickled_weight(root: str, e: dict[str, bytes], sentinel: Path) -> None:
    cfg_name = f"{root}/data/weights/model_weights_config.json"
    cfg = json.loads(e[cfg_name])
    fqn, meta = next(iter(cfg["config"].items()))
    meta["use_pickle"] = True
    e[f"{root}/data/weights/{meta['path_name']}"] = _torch_pickle(_Touch(sentinel))
    e[cfg_name] = json.dumps(cfg).encode()


def opaque_constant(root: str, e: dict[str, bytes], sentinel: Path) -> None:
    cfg_name = f"{root}/data/constants/model_constants_config.json"
    cfg = json.loads(e[cfg_name])
    cfg["config"]["hidden"] = {
        "path_name": "opaque_obj_0",
        "is_param": False,
        "use_pickle": True,
        "tensor_meta": None,
    }
    e[f"{root}/data/constants/opaque_obj_0"] = pickle.dumps(_Touch(sentinel))
    e[cfg_name] = json.dumps(cfg).encode()


def custom_object_constant(root: str, e: dict[str, bytes], sentinel: Path) -> None:
    cfg_name = f"{root}/data/constants/model_constants_config.json"
    cfg = json.loads(e[cfg_name])
    cfg["config"]["hidden"] = {
        "path_name": "custom_obj_0",
        "is_param": False,
        "use_pickle": True,
        "tensor_meta": None,
    }
    e[f"{root}/data/constants/custom_obj_0"] = pickle.dumps(_Touch(sentinel))
    e[cfg_name] = json.dumps(cfg).encode()


def evaluated_expression(root: str, e: dict[str, bytes], sentinel: Path) -> None:
    graph = e[f"{root}/models/model.json"].decode()
    found = re.search(r"Symbol\('[a-z]+[0-9]+'[^)]*\)", graph)
    assert found, "the exported program has no symbolic batch size to tamper with"
    symbol = found.group(0)
    payload = f"__import__('builtins').open('{sentinel}', 'w') and {symbol}"
    e[f"{root}/models/model.json"] = graph.replace(symbol, payload).encode()


def foreign_call(root: str, e: dict[str, bytes], sentinel: Path) -> None:
    graph = json.loads(e[f"{root}/models/model.json"])
    node = graph["graph_module"]["graph"]["nodes"][0]
    node["target"] = "torch.os.system"
    e[f"{root}/models/model.json"] = json.dumps(graph).encode()


def native_code(root: str, e: dict[str, bytes], sentinel: Path) -> None:
    e[f"{root}/data/aotinductor/model/model.so"] = b"\x7fELF" + b"\0" * 64


def unknown_entry(root: str, e: dict[str, bytes], sentinel: Path) -> None:
    e[f"{root}/data/payload.bin"] = pickle.dumps(_Touch(sentinel))


def legacy_format(root: str, e: dict[str, bytes], sentinel: Path) -> None:
    e.clear()
    e["legacy/version"] = b"8.0"
    e["legacy/serialized_exported_program.json"] = b"{}"
    e["legacy/serialized_example_inputs.pt"] = _torch_pickle(((_Touch(sentinel),), {}))


ATTACKS: dict[str, tuple[Callable[[str, dict[str, bytes], Path], None], str]] = {
    # kind: (how the archive is changed, what the one-line refusal names)
    "sample inputs replaced by a pickle": (sample_inputs_pickle, "data/sample_inputs/model.pt"),
    "a weight saved with use_pickle": (pickled_weight, "data/weights/weight_0"),
    "an opaque_obj constant": (opaque_constant, "opaque_obj_0"),
    "a custom_obj constant": (custom_object_constant, "custom_obj_0"),
    "a symbolic shape that sympify evaluates": (evaluated_expression, "symbolic expression"),
    "a node that calls torch.os.system": (foreign_call, "torch.os.system"),
    "compiled native code": (native_code, "data/aotinductor"),
    "an entry no exported program has": (unknown_entry, "data/payload.bin"),
    "the older archive format with a pickle": (legacy_format, "serialized_example_inputs.pt"),
}


def _hostile(clean: Path, tmp: Path, kind: str, sentinel: Path) -> Path:
    root, entries = _entries(clean)
    ATTACKS[kind][0](root, entries, sentinel)
    return _write(tmp / "model.pt2", entries)


@pytest.mark.parametrize("kind", list(ATTACKS))
def test_the_api_refuses_each_hostile_archive_before_anything_runs(
    clean: Path, tmp_path: Path, kind: str
) -> None:
    sentinel = tmp_path / "ran"
    path = _hostile(clean, tmp_path, kind, sentinel)
    with pytest.raises(ModelLoadError) as info:
        load_model(str(path))
    message = str(info.value)
    assert "\n" not in message and ATTACKS[kind][1] in message, message
    assert not sentinel.exists(), f"{kind}: the payload ran"


def test_the_pickle_kinds_did_run_through_torch_alone(clean: Path, tmp_path: Path) -> None:
    """The attacks are real: plain ``torch.export.load`` runs the payloads the vetting stops."""
    ran = []
    for kind in (
        "sample inputs replaced by a pickle",
        "an opaque_obj constant",
        "a symbolic shape that sympify evaluates",
    ):
        sentinel = tmp_path / f"ran-{len(ran)}"
        folder = tmp_path / str(len(ran))
        folder.mkdir()
        path = _hostile(clean, folder, kind, sentinel)
        with contextlib.suppress(Exception):  # the payload runs before torch notices anything wrong
            torch.export.load(str(path))
        ran.append(sentinel.exists())
    assert all(ran), ran


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind",
    [
        "sample inputs replaced by a pickle",
        "an opaque_obj constant",
        "the older archive format with a pickle",
    ],
)
def test_the_cli_refuses_with_one_line_and_exit_2(clean: Path, tmp_path: Path, kind: str) -> None:
    ws = make_workspace(tmp_path / "ws")
    sentinel = tmp_path / "ran"
    path = _hostile(clean, tmp_path, kind, sentinel)
    result = run_cli(ws, "profile", "--model", str(path), "--data", f"npz:{ws.npz}", "--layer", "1")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--trust-pickle" in lines[0], result.stderr
    assert ATTACKS[kind][1] in lines[0]
    assert not sentinel.exists()


@pytest.mark.slow
def test_a_damaged_archive_is_one_line(clean: Path, tmp_path: Path) -> None:
    ws = make_workspace(tmp_path / "ws")
    root, entries = _entries(clean)
    entries[f"{root}/models/model.json"] = b'{"graph_module": 3}'
    path = _write(tmp_path / "damaged.pt2", entries)
    truncated = tmp_path / "truncated.pt2"
    truncated.write_bytes(clean.read_bytes()[: clean.stat().st_size // 2])
    for bad in (path, truncated):
        result = run_cli(ws, "profile", "--model", str(bad), "--data", f"npz:{ws.npz}", "--layer", "1")
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and bad.name in lines[0], result.stderr


def test_trust_pickle_opens_a_benign_pickled_object(clean: Path, tmp_path: Path) -> None:
    root, entries = _entries(clean)
    cfg_name = f"{root}/data/constants/model_constants_config.json"
    cfg = json.loads(entries[cfg_name])
    cfg["config"]["note"] = {
        "path_name": "opaque_obj_0",
        "is_param": False,
        "use_pickle": True,
        "tensor_meta": None,
    }
    entries[f"{root}/data/constants/opaque_obj_0"] = pickle.dumps({"trained_on": "clinic A"})
    entries[cfg_name] = json.dumps(cfg).encode()
    path = _write(tmp_path / "model.pt2", entries)
    with pytest.raises(ModelLoadError, match="opaque_obj_0"):
        load_model(str(path))
    # Trusted, the archive gets past the vetting; torch itself may or may not use the stray constant.
    try:
        load_model(str(path), trust_pickle=True)
    except ModelLoadError as exc:
        assert "refused" not in str(exc)


def test_a_clean_archive_loads_and_computes_what_the_module_computes(clean: Path) -> None:
    loaded = load_model(str(clean))
    x = torch.randn(5, 3, 8, 8)
    assert torch.allclose(loaded.module(x), _tiny()(x), atol=1e-6)


def test_the_app_upload_route_refuses_a_hostile_archive(
    clean: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ESSENCE_HOME", str(tmp_path / "home"))
    from essence.app.uploads import TORCHSCRIPT, model_from_upload
    from essence.core.inputs.preprocessing import Preprocessing

    for i, kind in enumerate(("sample inputs replaced by a pickle", "an opaque_obj constant")):
        sentinel = tmp_path / f"ran-{i}"
        folder = tmp_path / f"k{i}"
        folder.mkdir()
        data = _hostile(clean, folder, kind, sentinel).read_bytes()
        with pytest.raises(ModelLoadError, match="refused"):
            model_from_upload(data, "model.pt2", TORCHSCRIPT, Preprocessing())
        assert not sentinel.exists()
