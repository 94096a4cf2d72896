"""``essence triage`` end to end: every instance in the JSON, ``--top`` only on the print, the reasoning score."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
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
    root = tmp_path_factory.mktemp("triage_factory")
    (root / "essence_triage_cli_net.py").write_text(FACTORY)
    import sys

    sys.path.insert(0, str(root))
    import essence_triage_cli_net as mod

    # mod.build() after torch.manual_seed(0), 60 Adam steps on batches of 64 digits (tests/cli/conftest.py)
    model = mod.build()
    model.load_state_dict(trained_digits_net(0, 60).state_dict())
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


def common(weights: Path, store: Path) -> list[str]:
    return ["--model", "essence_triage_cli_net:build", "--weights", str(weights), "--data", "digits",
            "--layer", "fc1", "--device", "cpu", "--store", str(store)]  # fmt: skip


def test_json_holds_every_instance_and_top_limits_the_print(weights, capsys, tmp_path) -> None:
    out = tmp_path / "t.json"
    code, text, err = run(
        capsys, "triage", *common(weights, tmp_path / "s.sqlite"), "--top", "3", "--json", str(out)
    )
    assert code == 0, err
    js = json.loads(out.read_text())
    assert js["score"] == "merged" and js["layer"] == "fc1"
    assert len(js["scores"]) == 1797  # every ranked instance, whatever --top
    assert sorted(r["index"] for r in js["scores"]) == list(range(1797))
    assert {"mode", "blur_sigma"} <= set(js["preprocessing"])  # the recipe as applied
    first = js["scores"][0]
    assert {"index", "label", "predicted", "confidence", "deviation", "reasoning", "reading", "why"} <= set(
        first
    )
    devs = [r["deviation"] for r in js["scores"]]
    assert devs == sorted(devs, reverse=True)
    reasonings = [r["reasoning"] for r in js["scores"]]
    assert all(r is not None and math.isfinite(r) and r >= 0 for r in reasonings)
    # the reading is given exactly for the misclassified
    assert all((r["reading"] is None) == (r["label"] == r["predicted"]) for r in js["scores"])
    table = [line for line in text.splitlines() if line.startswith("  ") and line.strip()[0].isdigit()]
    assert len(table) == 3 and "reason" in text and "top 3" in text


def test_score_reasoning_ranks_by_it(weights, capsys, tmp_path) -> None:
    out = tmp_path / "r.json"
    code, _, err = run(
        capsys, "triage", *common(weights, tmp_path / "s.sqlite"), "--score", "reasoning", "--json", str(out)
    )
    assert code == 0, err
    rows = json.loads(out.read_text())["scores"]
    assert all(r["deviation"] == r["reasoning"] for r in rows)
    assert rows[0]["reasoning"] == max(r["reasoning"] for r in rows)


def test_unknown_score_is_one_line_and_exit_2(weights, capsys, tmp_path) -> None:
    code, _, err = run(capsys, "triage", *common(weights, tmp_path / "s.sqlite"), "--score", "vibes")
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "reasoning" in err
