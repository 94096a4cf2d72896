"""A model trained in a class order that is not the folders' sorted order, in every format: never a silent order.

The network is trained here on greyscale chest-film-like images in folders ``normal/nodule/opacity`` with
normal = 0, nodule = 1, opacity = 2 — the folders sort as nodule, normal, opacity, so a sorted guess swaps the
first two classes. It is saved as weights for a factory, exported as a ``.pt2`` program and as ONNX.

- Without a card, every analysis, in every format, stops with one line that says how to give the order
  (``--class-names`` or a card), through the CLI (a subprocess), ``essence.core`` and the app's upload route.
- With a card beside each file (written by ``essence card``), every analysis runs, and profile, triage, experts,
  diagnose, layers, explain and compare give the same numbers as the module with its weights; the JSON says
  ``"class_source": "card"``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from forked import run_forked
from in_process import run_essence
from PIL import Image

CLASSES = ["normal", "nodule", "opacity"]  # the training order: output 0 is normal
SIDE = 12
FACTORY = """
import torch
from torch import nn


def chestnet():
    return nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )
"""
GREY = {"mode": "L", "mean": [0.0], "std": [1.0]}


def _image(cls: int, rng: np.random.Generator) -> np.ndarray:
    img = rng.normal(60, 12, (SIDE, SIDE))
    if cls == 1:  # nodule: a bright spot
        y, x = rng.integers(3, SIDE - 3, 2)
        img[y - 1 : y + 2, x - 1 : x + 2] += 150
    elif cls == 2:  # opacity: a bright lower half
        img[SIDE // 2 :, :] += 90
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict:
    root = tmp_path_factory.mktemp("chest")
    rng = np.random.default_rng(7)
    images, labels = [], []
    for cls, name in enumerate(CLASSES):
        (root / "chest" / name).mkdir(parents=True)
        for i in range(16):
            img = _image(cls, rng)
            Image.fromarray(img).save(root / "chest" / name / f"{i:02d}.png")
            images.append(img)
            labels.append(cls)
    (root / "code").mkdir()
    (root / "code" / "chestnets.py").write_text(FACTORY)
    sys.path.insert(0, str(root / "code"))
    import chestnets

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        net = chestnets.chestnet()
        x = torch.tensor(np.stack(images), dtype=torch.float32).unsqueeze(1) / 255
        y = torch.tensor(labels)
        opt = torch.optim.Adam(net.parameters(), lr=0.02)
        for _ in range(150):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            opt.step()
        net.eval()
        accuracy = float((net(x).argmax(1) == y).float().mean())
    finally:
        torch.set_num_threads(threads)
    (root / "exports").mkdir()
    from safetensors.torch import save_file

    save_file(net.state_dict(), str(root / "exports" / "W.safetensors"))
    program = torch.export.export(net, (x[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(root / "exports" / "model.pt2"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (x[:1],), str(root / "exports" / "net.onnx"), dynamo=False,
            input_names=["x"], dynamic_axes={"x": {0: "batch"}},
        )  # fmt: skip
    (root / "grey.json").write_text(json.dumps(GREY))
    from essence.core import load_model

    convs = [
        n for n, m in load_model(f"onnx:{root / 'exports' / 'net.onnx'}").module.named_modules()
        if isinstance(m, torch.nn.Conv2d)
    ]  # fmt: skip
    onnx_layer = convs[1]  # the second conv: the module's "2"
    return {
        "root": root,
        "accuracy": accuracy,
        "formats": {  # spec args, and the slice (the second conv's output) in that format's names
            "module": (
                ["--model", "chestnets:chestnet", "--weights", str(root / "exports" / "W.safetensors")],
                "2",
            ),
            "pt2": (["--model", str(root / "exports" / "model.pt2")], "2"),
            "onnx": (["--model", f"onnx:{root / 'exports' / 'net.onnx'}"], onnx_layer),
        },
    }


# One command per format runs as a subprocess in each test (the console script as a user starts it); the rest run
# in this process through the same entry point (``essence.cli.main``), which saves an interpreter and torch's
# import each.
SUBPROCESS = {"diagnose"}


def _run(case: dict, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    if args[0] not in SUBPROCESS:
        return _in_process(case, *args)
    return _subprocess(case, *args, timeout=timeout)


def _in_process(case: dict, *args: str) -> subprocess.CompletedProcess[str]:
    root = case["root"]
    return run_essence(args, {"ESSENCE_HOME": str(root / "home")}, cwd=root)


def _subprocess(case: dict, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    root = case["root"]
    env = dict(os.environ)
    env.pop("ESSENCE_DEBUG", None)
    env |= {"ESSENCE_HOME": str(root / "home"), "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    env["PYTHONPATH"] = os.pathsep.join([str(root / "code"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return run_forked(args, env, cwd=root, timeout=timeout)  # its own process, forked (:mod:`forked`)


def test_the_model_learned_its_classes(case: dict) -> None:
    assert case["accuracy"] >= 0.9  # otherwise a swapped order would not show


COMMANDS = {
    "profile": ["profile"],
    "triage": ["triage"],
    "experts": ["experts", "--class", "nodule"],
    "diagnose": ["diagnose"],
    "layers": ["layers"],
    "report": ["report", "--out", "r.html"],
}


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["module", "pt2", "onnx"])
def test_without_a_card_every_analysis_refuses_in_one_line(case: dict, fmt: str) -> None:
    spec, layer = case["formats"][fmt]
    data = ["--data", f"folder:{case['root'] / 'chest'}", "--preprocessing", str(case["root"] / "grey.json")]
    runs = {
        name: [*cmd, *spec, *data, *(["--layer", layer] if name != "layers" else [])]
        for name, cmd in COMMANDS.items()
    }
    runs["compare"] = ["compare", *spec, *_against(spec), *data, "--layer", layer]
    for name, args in runs.items():
        result = _run(case, *args)
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2, (fmt, name, result.stderr[-800:])
        assert len(lines) == 1 and "--class-names" in lines[0] and "card" in lines[0], (fmt, name, lines)
        assert "nodule, normal, opacity" in lines[0], lines[0]  # it names what the data holds


def _against(spec: list[str]) -> list[str]:
    """``--model M [--weights W]`` as the other side of a comparison: ``--against M [--against-weights W]``."""
    out = ["--against", spec[1]]
    return out + (["--against-weights", spec[3]] if len(spec) > 2 else [])


def _json(case: dict, *args: str) -> dict:
    out = case["root"] / "out.json"
    out.unlink(missing_ok=True)
    result = _run(case, *args, "--json", str(out))
    assert result.returncode == 0, (args, result.stderr[-1500:])
    return json.loads(out.read_text())


@pytest.mark.slow
def test_with_a_card_every_format_gives_the_modules_answers(case: dict) -> None:
    root = case["root"]
    for spec, layer in case["formats"].values():
        result = _run(
            case, "card", *spec, "--class-names", ",".join(CLASSES), "--preprocessing", str(root / "grey.json"),
            "--layer", layer,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    assert (root / "exports" / "W.card.json").is_file() and (root / "exports" / "model.card.json").is_file()
    assert (root / "exports" / "net.card.json").is_file()
    data = ["--data", f"folder:{root / 'chest'}"]
    got: dict[str, dict[str, dict]] = {}
    for fmt, (spec, _) in case["formats"].items():
        got[fmt] = {
            "profile": _json(case, "profile", *spec, *data),
            "triage": _json(case, "triage", *spec, *data),
            "experts": _json(case, "experts", "--class", "nodule", *spec, *data),
            "diagnose": _json(case, "diagnose", *spec, *data),
            "layers": _json(case, "layers", *spec, *data),
            "explain": _json(
                case,
                "explain",
                *spec,
                "--image",
                str(root / "chest" / "nodule" / "00.png"),
                "--class",
                "nodule",
            ),
        }
        report = _run(case, "report", *spec, *data, "--out", str(root / f"{fmt}.html"))
        assert report.returncode == 0 and (root / f"{fmt}.html").stat().st_size > 1000, report.stderr
    base = got["module"]
    assert base["profile"]["class_source"] == "card" and base["profile"]["classes"] == CLASSES
    diag = {c["name"]: c for c in base["diagnose"]["classes"]}
    assert diag["nodule"]["recall"] >= 0.8 and diag["normal"]["recall"] >= 0.8  # read in the trained order
    for fmt in ("pt2", "onnx"):
        mine = got[fmt]
        assert mine["profile"]["class_source"] == "card", fmt
        np.testing.assert_allclose(
            mine["profile"]["profiles"], base["profile"]["profiles"], rtol=1e-4, atol=1e-5
        )
        np.testing.assert_allclose(mine["profile"]["counts"], base["profile"]["counts"])
        key = lambda s: s["index"]  # noqa: E731
        for a, b in zip(
            sorted(mine["triage"]["scores"], key=key), sorted(base["triage"]["scores"], key=key), strict=True
        ):
            assert a["predicted"] == b["predicted"] and a["label"] == b["label"]
            assert a["deviation"] == pytest.approx(b["deviation"], rel=1e-3, abs=1e-5)
        np.testing.assert_allclose(mine["experts"]["recall"], base["experts"]["recall"], atol=1e-6)
        for a, b in zip(mine["diagnose"]["classes"], base["diagnose"]["classes"], strict=True):
            assert (a["name"], a["recall"], a["predicted_count"]) == (
                b["name"],
                b["recall"],
                b["predicted_count"],
            )
        assert mine["layers"]["default_layer"] == case["formats"][fmt][1]
        assert mine["explain"]["prediction"] == base["explain"]["prediction"]
    cmp = _run(
        case, "compare", *case["formats"]["module"][0], "--against", *case["formats"]["pt2"][0][1:], *data,
        "--json", str(root / "cmp.json"),
    )  # fmt: skip
    assert cmp.returncode == 0, cmp.stderr[-1500:]
    out = json.loads((root / "cmp.json").read_text())
    assert out["class_source"] == {"a": "card", "b": "card"}
    assert "W.safetensors" in out["a"] and not out["changed"]["fixed"] and not out["changed"]["broken"]


def _module_profiles(case: dict):
    from essence.core import class_profiles, load_dataset, load_model

    root = case["root"]
    module = load_model("chestnets:chestnet", root / "exports" / "W.safetensors")
    module.class_names = list(CLASSES)
    from essence.core.inputs.preprocessing import Preprocessing

    data = load_dataset(f"folder:{root / 'chest'}", Preprocessing.from_dict(GREY), class_names=CLASSES)
    return class_profiles(module.module, data, "2", device="cpu")


def test_through_essence_core_no_card_refuses_and_a_card_agrees(case: dict, tmp_path: Path) -> None:
    import shutil

    from essence.core import check_compatible, class_profiles, load_dataset, load_model
    from essence.core.inputs.cards import ClassOrderError, write_card
    from essence.core.inputs.preprocessing import Preprocessing

    root = case["root"]
    for name, layer in (("model.pt2", "2"), ("net.onnx", case["formats"]["onnx"][1])):
        path = shutil.copy(root / "exports" / name, tmp_path / name)
        spec = str(path) if name.endswith(".pt2") else f"onnx:{path}"
        model = load_model(spec)
        assert model.class_names is None
        data = load_dataset(f"folder:{root / 'chest'}", Preprocessing.from_dict(GREY), class_names=None)
        with pytest.raises(ClassOrderError, match="class_names"):
            check_compatible(model, data)
        model.class_names = list(CLASSES)
        write_card(model, path, Preprocessing.from_dict(GREY))
        carded = load_model(spec)  # the card beside the file, read by core
        assert carded.class_names == CLASSES and carded.class_source == "card"
        assert carded.preprocessing.mode == "L"
        data = load_dataset(f"folder:{root / 'chest'}", carded.preprocessing, class_names=carded.class_names)
        check_compatible(carded, data)
        got = class_profiles(carded.module, data, layer, device="cpu")
        np.testing.assert_allclose(
            got.mean.numpy(), _module_profiles(case).mean.numpy(), rtol=1e-4, atol=1e-5
        )


def test_the_app_upload_route_asks_for_the_order_and_then_agrees(
    case: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ESSENCE_HOME", str(tmp_path / "home"))
    from essence.app import loading, uploads
    from essence.core import check_compatible, class_profiles
    from essence.core.inputs.cards import ClassOrderError

    root = case["root"]
    recipe = uploads.recipe_of(None, 0.0, "none", "L")
    spec = f"folder:{root / 'chest'}"
    for name, kind, layer in (
        ("model.pt2", uploads.TORCHSCRIPT, "2"),
        ("net.onnx", uploads.ONNX, case["formats"]["onnx"][1]),
    ):
        raw = (root / "exports" / name).read_bytes()
        bare = loading.open_model(uploads.model_from_upload(raw, name, kind, recipe))
        data = loading.open_data(spec, loading.recipe_of(bare), None)
        with pytest.raises(ClassOrderError):
            check_compatible(bare, data)
        named = loading.open_model(uploads.model_from_upload(raw, name, kind, recipe, list(CLASSES)))
        assert named.class_source == "option"
        data = loading.open_data(spec, loading.recipe_of(named), tuple(named.class_names))
        check_compatible(named, data)
        got = class_profiles(named.module, data, layer, device="cpu")
        np.testing.assert_allclose(
            got.mean.numpy(), _module_profiles(case).mean.numpy(), rtol=1e-4, atol=1e-5
        )
    with pytest.raises(Exception, match="control character"):
        uploads.model_from_upload(raw, name, kind, recipe, ["normal", "nod\x1bule", "opacity"])


def test_size_changes_the_size_and_nothing_else(case: dict, tmp_path: Path) -> None:
    """A greyscale npz and a model without a card: ``--size`` resizes, and the data's greyscale recipe stays L."""
    import shutil

    model = shutil.copy(case["root"] / "exports" / "model.pt2", tmp_path / "bare.pt2")  # no card beside it
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (9, 20, 20), dtype=np.uint8)  # N×H×W: one channel, not the model's size
    np.savez(tmp_path / "grey.npz", images=images, labels=np.arange(9) % 3)
    out = tmp_path / "p.json"
    result = _in_process(
        case, "profile", "--model", str(model), "--data", f"npz:{tmp_path / 'grey.npz'}", "--layer", "2",
        "--size", str(SIDE), str(SIDE), "--json", str(out),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    recipe = json.loads(out.read_text())["preprocessing"]
    assert recipe["mode"] == "L" and recipe["size"] == [SIDE, SIDE]
    assert json.loads(out.read_text())["class_source"] == "data"  # integer labels: output k is class k
