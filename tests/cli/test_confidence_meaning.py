"""One name, one meaning: ``confidence`` is max p (the predicted class's probability) and ``doubt`` is 1 − max p,
alike in ``essence triage``'s JSON, its printed table and its CSV export — a near-certain prediction reads
confidence ≈ 1 and doubt ≈ 0 in all three."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from sklearn.datasets import load_digits

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
def trained(tmp_path_factory: pytest.TempPathFactory, trained_digits_net) -> tuple[Path, np.ndarray]:
    """The weights of a digits net trained to near-certainty on most images, and its softmax ``[N, 10]``."""
    root = tmp_path_factory.mktemp("confidence_meaning")
    (root / "essence_confidence_net.py").write_text(FACTORY)
    sys.path.insert(0, str(root))
    import essence_confidence_net as mod

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    # mod.build() after torch.manual_seed(0), 150 Adam steps on batches of 64 digits (tests/cli/conftest.py)
    model = mod.build()
    model.load_state_dict(trained_digits_net(0, 150).state_dict())
    path = root / "digits.safetensors"
    save_file(model.state_dict(), str(path))
    with torch.no_grad():
        probs = torch.softmax(model(x).double(), dim=1).numpy()
    return path, probs


def test_json_table_and_csv_agree_that_confidence_is_max_p_and_doubt_its_complement(
    trained, capsys, tmp_path
) -> None:
    weights, probs = trained
    out, export = tmp_path / "t.json", tmp_path / "t.csv"
    args = ["triage", "--model", "essence_confidence_net:build", "--weights", str(weights), "--data", "digits",
            "--layer", "fc1", "--device", "cpu", "--store", str(tmp_path / "s.sqlite"), "--top", "5000",
            "--json", str(out), "--export", str(export)]  # fmt: skip
    try:
        main(args)
    except SystemExit as exc:
        assert not exc.code, capsys.readouterr().err
    text = capsys.readouterr().out

    rows = {r["index"]: r for r in json.loads(out.read_text())["scores"]}
    table = {int(r["index"]): r for r in csv.DictReader(export.open())}
    header = next(line for line in text.splitlines() if "index" in line and "conf" in line).split()
    printed = {
        int(cells[0]): cells
        for cells in (line.split() for line in text.splitlines() if line.startswith("  "))
        if cells[0].isdigit()
    }
    assert len(rows) == len(table) == len(printed) == len(probs)
    conf_at, doubt_at = header.index("conf"), header.index("doubt")

    # A near-certain prediction: confidence ≈ 1 and doubt ≈ 0, in every output.
    sure = int(np.argmax(probs.max(1)))
    assert probs[sure].max() > 0.99
    assert rows[sure]["confidence"] > 0.99 and rows[sure]["doubt"] < 0.01
    assert float(table[sure]["confidence"]) > 0.99 and float(table[sure]["doubt"]) < 0.01
    assert printed[sure][conf_at] == "1.00" and printed[sure][doubt_at] == "0.00"

    # Every instance: confidence = max p, doubt = 1 − max p, the same number in the JSON, the table and the CSV.
    for i, p in enumerate(probs.max(1)):
        json_row, csv_row, cells = rows[i], table[i], printed[i]
        assert json_row["confidence"] == pytest.approx(p, abs=1e-6)
        assert json_row["doubt"] == pytest.approx(1.0 - p, abs=1e-6)
        assert float(csv_row["confidence"]) == pytest.approx(json_row["confidence"], abs=1e-12)
        assert float(csv_row["doubt"]) == pytest.approx(json_row["doubt"], abs=1e-12)
        assert float(cells[conf_at]) == pytest.approx(p, abs=0.0051)
        assert float(cells[doubt_at]) == pytest.approx(1.0 - p, abs=0.0051)
        assert json_row["label_probability"] == pytest.approx(probs[i, json_row["label"]], abs=1e-6)
