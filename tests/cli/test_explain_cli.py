"""``essence explain``, ``essence layers`` and ``essence compare`` end to end, on a small factory model and digits."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from essence.cli import main

FACTORY = textwrap.dedent(
    """
    import torch
    from torch import nn

    def _net(seed):
        torch.manual_seed(seed)
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10),
        )

    def net_a():
        return _net(0)

    def net_b():
        return _net(1)

    def net_wide():
        torch.manual_seed(2)
        return nn.Sequential(
            nn.Conv2d(1, 12, 3, padding=1), nn.ReLU(), nn.Conv2d(12, 16, 3, padding=1), nn.ReLU(),
            nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10),
        )
    """
)
CARD = {
    "class_names": [str(i) for i in range(10)],
    "preprocessing": {"mode": "L", "mean": [0.0], "std": [1.0], "scale": 16.0, "size": None},
    "default_layer": "2",
    "input_size": [8, 8],
}


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "essence_cli_nets.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib
    import sys

    sys.modules.pop("essence_cli_nets", None)
    module = importlib.import_module("essence_cli_nets")
    from safetensors.torch import save_file

    for name in ("net_a", "net_b"):
        save_file(getattr(module, name)().state_dict(), tmp_path / f"{name}.safetensors")
        (tmp_path / f"{name}.json").write_text(json.dumps(CARD))
    from sklearn.datasets import load_digits

    digit = (load_digits().images[3] * 255 / 16).astype(np.uint8)
    Image.fromarray(digit, "L").save(tmp_path / "three.png")
    Image.fromarray(digit, "L").resize((16, 16)).save(tmp_path / "big.png")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8), "RGB").save(tmp_path / "colour.png")
    return tmp_path


def run(args: list[str], capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def model_args(d: Path, name: str = "net_a") -> list[str]:
    return ["--model", f"essence_cli_nets:{name}", "--weights", str(d / f"{name}.safetensors")]


def test_explain_writes_a_panel_and_json(setup: Path, capsys) -> None:
    out, js = setup / "panel.png", setup / "e.json"
    code, stdout, err = run(
        [
            "explain",
            *model_args(setup),
            "--image",
            str(setup / "three.png"),
            "--class",
            "3",
            "--vs",
            "8",
            "--top",
            "3",
            "--method",
            "guided",
            "--out",
            str(out),
            "--json",
            str(js),
        ],
        capsys,
    )
    assert code == 0, err
    assert "why '3' rather than '8'" in stdout
    panel = Image.open(out)
    assert panel.format == "PNG" and panel.width == 5 * 160
    data = json.loads(js.read_text())
    assert data["class"] == "3" and data["vs"] == "8" and data["method"] == "guided"
    assert len(data["top_units"]) == 3 and data["layer"] == "2"


@pytest.mark.parametrize(
    ("extra", "image", "message"),
    [
        (["--class", "eleven"], "three.png", "unknown class 'eleven'"),
        (["--class", "12"], "three.png", "out of range"),
        (["--class", "3"], "big.png", "16×16 px but the model takes 8×8"),
        (["--class", "3"], "colour.png", "mode RGB, but the model takes greyscale"),
        (["--class", "3", "--layer", "conv9"], "three.png", "layer 'conv9' is not a module"),
        (["--class", "3", "--method", "lrp"], "three.png", "--method 'lrp'"),
        (["--class", "3"], "missing.png", "file not found"),
    ],
)
def test_explain_bad_input_is_one_line_and_status_2(setup: Path, capsys, extra, image, message) -> None:
    code, _, err = run(["explain", *model_args(setup), "--image", str(setup / image), *extra], capsys)
    assert code == 2
    assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1


def test_layers_lists_and_scores(setup: Path, capsys) -> None:
    code, stdout, _ = run(["layers", "--model", "essence_cli_nets:net_a"], capsys)
    assert code == 0 and "Conv2d" in stdout and "Linear" in stdout
    js = setup / "layers.json"
    code, stdout, err = run(
        ["layers", *model_args(setup), "--data", "digits", "--max-instances", "200", "--json", str(js)],
        capsys,
    )
    assert code == 0, err
    data = json.loads(js.read_text())
    assert [row["name"] for row in data["layers"]] == ["0", "2", "6"]
    assert data["suggested"] == "2" and "← suggested" in stdout
    assert set(data["layers"][0]) >= {"name", "output_shape", "units", "share80", "gini"}


def test_compare_json_layout_and_width_error(setup: Path, capsys) -> None:
    js = setup / "c.json"
    code, stdout, err = run(
        [
            "compare",
            *model_args(setup),
            "--against",
            "essence_cli_nets:net_b",
            "--against-weights",
            str(setup / "net_b.safetensors"),
            "--data",
            "digits",
            "--layer",
            "6",
            "--no-diagnose",
            "--json",
            str(js),
        ],
        capsys,
    )
    assert code == 0, err
    data = json.loads(js.read_text())
    assert {"a", "b", "classes", "changed", "matching"} <= set(data)
    assert {"name", "recall_a", "recall_b", "precision_a", "precision_b"} <= set(data["classes"][0])
    assert {"fixed", "broken"} <= set(data["changed"])
    assert len(data["matching"]["pairs"]) == 32 and "units matched: 32" in stdout
    code, _, err = run(
        [
            "compare",
            "--model",
            "essence_cli_nets:net_a",
            "--against",
            "essence_cli_nets:net_wide",
            "--data",
            "digits",
            "--layer",
            "0",
            "--no-diagnose",
        ],
        capsys,
    )
    assert code == 2 and "different widths" in err and "--partial" in err
