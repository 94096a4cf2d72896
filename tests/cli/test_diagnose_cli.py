"""``essence diagnose`` (and the honest test of ``essence experts``): text and JSON, on digits and on the demo."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from essence.cli import main

FACTORY = """
from collections import OrderedDict
from torch import nn

def build():
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, 8, 3, padding=1), relu1=nn.ReLU(), pool1=nn.MaxPool2d(2), flatten=nn.Flatten(),
        fc1=nn.Linear(128, 32), relu3=nn.ReLU(), fc2=nn.Linear(32, 10)))
"""


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory, trained_digits_net) -> Path:
    """A digits CNN whose read-out row of class 6 is zeroed (the slice still carries 6)."""
    root = tmp_path_factory.mktemp("diagnose_factory")
    (root / "essence_cli_diagnose_net.py").write_text(FACTORY)
    sys.path.insert(0, str(root))
    import essence_cli_diagnose_net as mod

    # mod.build() after torch.manual_seed(0), 80 Adam steps on batches of 64 digits (tests/cli/conftest.py)
    model = mod.build()
    model.load_state_dict(trained_digits_net(0, 80).state_dict())
    with torch.no_grad():
        model.fc2.weight[6] = 0
        model.fc2.bias[6] = -30
    path = root / "digits.safetensors"
    save_file(model.state_dict(), str(path))
    return path


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def common(weights: Path) -> list[str]:
    return ["--model", "essence_cli_diagnose_net:build", "--weights", str(weights), "--data", "digits"] + [
        "--layer",
        "fc1",
        "--device",
        "cpu",
    ]


def test_diagnose_text_and_json(weights, capsys, tmp_path) -> None:
    out = tmp_path / "d.json"
    code, text, err = run(capsys, "diagnose", *common(weights), "--json", str(out))
    assert code == 0, err
    js = json.loads(out.read_text())
    assert js["layer"] == "fc1" and js["preprocessing"]["scale"] == 16.0
    for row in js["classes"]:
        assert {"name", "recall", "precision", "predicted_count", "diagnosis", "expert", "probe"} <= set(row)
        assert row["diagnosis"] in ("ok", "drowning experts", "not read out", "not learned")
        assert 0.0 <= row["probe"]["auc"] <= 1.0 and 0.5 < row["probe"]["threshold"] < 1.0
        assert isinstance(row["suspect_steps"], list)
    six = js["classes"][6]
    assert six["diagnosis"] == "not read out" and six["expert"] is None and six["suspect_steps"] == []
    assert six["probe"]["auc"] > six["probe"]["threshold"]
    assert six["expert_test"]["crossfit"] and six["expert_test"]["best"] is None
    assert "not read out" in text and "probe vs" in text and "Remedy: the layers above the slice" in text


def test_experts_reports_the_honest_test(weights, capsys, tmp_path) -> None:
    out = tmp_path / "e.json"
    args = ["--class", "3", "--alphas", "1,4,16", "--betas", "0,4", "--json", str(out)]
    code, text, err = run(capsys, "experts", *common(weights), *args)
    assert code == 0, err
    honest = json.loads(out.read_text())["honest"]
    assert honest["cells"] == 6 and honest["crossfit"] and honest["gain"] > 0
    assert "honest test (cross-fitted" in text


def test_bad_rare_share_is_one_line(weights, capsys) -> None:
    code, _, err = run(capsys, "diagnose", *common(weights), "--rare-share", "0")
    assert code == 2 and "--rare-share" in err and len(err.strip().splitlines()) == 1


DEMO = Path(__file__).resolve().parents[2] / "sample_data" / "models"


@pytest.mark.slow
@pytest.mark.skipif(not list(DEMO.glob("*.safetensors")), reason="the demo's weights are not built")
def test_demo_blurred_names_the_blur(capsys, tmp_path) -> None:
    out = tmp_path / "demo.json"
    code, text, err = run(
        capsys,
        "diagnose",
        "--model",
        "demo:blurred",
        "--data",
        "demo:test",
        "--device",
        "cpu",
        "--json",
        str(out),
    )
    assert code == 0, err
    two = json.loads(out.read_text())["classes"][1]
    assert two["name"] == "severity 2" and two["diagnosis"] == "not learned"
    assert [s["step"] for s in two["suspect_steps"]] == ["Gaussian blur σ=2 px"]
    assert "survives" in two["suspect_steps"][0]["evidence"]
    assert "suspect step: Gaussian blur σ=2 px" in text
