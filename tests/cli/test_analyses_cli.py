"""``essence triage``, ``experts`` and ``diagnose`` end to end on a small digits model given as a factory."""

from __future__ import annotations

import json
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
def model_files(tmp_path_factory: pytest.TempPathFactory, trained_digits_net) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("factory")
    (root / "essence_cli_digits_net.py").write_text(FACTORY)
    import sys

    sys.path.insert(0, str(root))
    import essence_cli_digits_net as mod

    # mod.build() after torch.manual_seed(0), 60 Adam steps on batches of 64 digits (tests/cli/conftest.py)
    model = mod.build()
    model.load_state_dict(trained_digits_net(0, 60).state_dict())
    with torch.no_grad():  # plant a never-predicted class
        model.fc2.weight[6] = 0
        model.fc2.bias[6] = -30
    weights = root / "digits.safetensors"
    save_file(model.state_dict(), str(weights))
    return root, weights


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def common(weights: Path) -> list[str]:
    return [
        "--model",
        "essence_cli_digits_net:build",
        "--weights",
        str(weights),
        "--data",
        "digits",
        "--layer",
        "fc1",
        "--device",
        "cpu",
    ]


def test_triage_json(model_files, capsys, tmp_path) -> None:
    _, weights = model_files
    from essence.core import load_dataset
    from essence.storage import Store

    out = tmp_path / "t.json"
    store = tmp_path / "store.sqlite"
    code, _, err = run(
        capsys, "triage", *common(weights), "--top", "3", "--json", str(out), "--store", str(store)
    )
    assert code == 0, err
    first = json.loads(out.read_text())["scores"][0]["index"]
    assert json.loads(out.read_text())["scores"][0]["verdict"] is None
    with Store.open(store) as s:
        s.record_verdict(load_dataset("digits", None).fingerprint, first, "label error")
    code, text, err = run(
        capsys, "triage", *common(weights), "--top", "7", "--json", str(out), "--store", str(store)
    )
    assert code == 0, err
    js = json.loads(out.read_text())
    assert js["scores"][0]["index"] == first and js["scores"][0]["verdict"] == "label error"
    assert "label error" in text
    assert js["layer"] == "fc1" and len(js["scores"]) == 1797  # --top limits the print, not the JSON
    devs = [r["deviation"] for r in js["scores"]]
    assert devs == sorted(devs, reverse=True)
    assert {"index", "label", "predicted", "confidence", "deviation", "cosine", "why"} <= set(js["scores"][0])
    assert "triage at 'fc1'" in text


def test_experts_json_and_bad_input(model_files, capsys, tmp_path) -> None:
    _, weights = model_files
    out = tmp_path / "e.json"
    code, text, err = run(
        capsys,
        "experts",
        *common(weights),
        "--class",
        "3",
        "--alphas",
        "1,2,4",
        "--betas",
        "0,2",
        "--json",
        str(out),
    )
    assert code == 0, err
    js = json.loads(out.read_text())
    assert js["class"] == "3" and js["alphas"] == [1, 2, 4] and js["betas"] == [0, 2]
    assert len(js["recall"]) == 3 and len(js["recall"][0]) == 2
    assert set(js["baseline"]) >= {"recall", "precision"} and "recall" in js["activation_control"]
    code, _, err = run(capsys, "experts", *common(weights), "--class", "3", "--alphas", "1,99")
    assert code == 2 and err.startswith("error:") and "99" in err and "1..32" in err
    code, _, err = run(capsys, "experts", *common(weights), "--class", "eleven")
    assert code == 2 and "unknown class 'eleven'" in err


def test_diagnose_names_the_never_predicted_class(model_files, capsys, tmp_path) -> None:
    _, weights = model_files
    out = tmp_path / "d.json"
    code, text, err = run(capsys, "diagnose", *common(weights), "--json", str(out))
    assert code == 0, err
    js = json.loads(out.read_text())
    six = js["classes"][6]
    assert six["name"] == "6" and six["predicted_count"] == 0 and six["precision"] is None
    # Its read-out row is zeroed: the slice still separates 6, the head never reads it (tests/cli/test_diagnose_cli.py).
    assert six["diagnosis"] == "not read out" and six["expert"] is None
    assert "never predicted: 6" in text and "retrain or rebalance the head" in text


def test_analyses_read_their_profiles_through_the_store(model_files, capsys, tmp_path) -> None:
    """A second triage / diagnose on the same model and data is served from the store, with the same answer."""
    _, weights = model_files
    store = tmp_path / "store.sqlite"
    answers = {}
    for command in ("triage", "diagnose"):
        for attempt in (1, 2):
            out = tmp_path / f"{command}{attempt}.json"
            code, _, err = run(capsys, command, *common(weights), "--json", str(out), "--store", str(store))
            assert code == 0, err
            assert ("served from the store" in err) == (attempt == 2), (command, attempt, err)
            answers[command, attempt] = json.loads(out.read_text())
        assert answers[command, 1] == answers[command, 2]
    code, _, err = run(capsys, "triage", *common(weights), "--store", str(store), "--no-cache")
    assert code == 0 and "served from the store" not in err
