"""``essence diagnose --train-data``: the training data's facts and the benchmark precision in the text and the
JSON; a spec that cannot be read, or training data of other classes, is one line and exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from in_process import run_essence
from safetensors.torch import save_file
from sklearn.datasets import load_digits

FACTORY = """
from collections import OrderedDict
from torch import nn

def build():
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, 8, 3, padding=1), relu1=nn.ReLU(), pool1=nn.MaxPool2d(2), flatten=nn.Flatten(),
        fc1=nn.Linear(128, 32), relu3=nn.ReLU(), fc2=nn.Linear(32, 10)))
"""
MODULE = "essence_cli_train_data_net"


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, trained_digits_net) -> Path:
    """The factory, the weights of a digits CNN whose read-out row of class 6 is zeroed, and training sets."""
    root = tmp_path_factory.mktemp("train_data_cli")
    (root / f"{MODULE}.py").write_text(FACTORY)
    model = trained_digits_net(0, 80)
    with torch.no_grad():
        model.fc2.weight[6] = 0
        model.fc2.bias[6] = -30
    save_file(model.state_dict(), str(root / "digits.safetensors"))
    d = load_digits()
    # The digits spec reads the 0..16 greys at scale 16; an npz of floats is read as it is: the same inputs.
    images, labels = (d.images[:900] / 16.0).astype(np.float32), d.target[:900]
    np.savez(root / "train.npz", images=images, labels=labels)
    np.savez(root / "other.npz", images=images, labels=labels, class_names=np.array(list("abcdefghij")))
    return root


def diagnose(folder: Path, *extra: str) -> tuple[int, str, str]:
    args = ["diagnose", "--model", f"{MODULE}:build", "--weights", str(folder / "digits.safetensors")]
    args += ["--data", "digits", "--layer", "fc1", "--device", "cpu", *extra]
    done = run_essence(args, code_path=folder)
    return done.returncode, done.stdout, done.stderr


def test_train_data_facts_and_benchmark_precision(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "d.json"
    code, text, err = diagnose(folder, "--train-data", f"npz:{folder / 'train.npz'}", "--json", str(out))
    assert code == 0, err
    assert f"training data: npz:{folder / 'train.npz'}, 900 images" in text
    six = json.loads(out.read_text())["classes"][6]
    assert six["diagnosis"] == "not read out" and six["training"]["count"] == int(
        (load_digits().target[:900] == 6).sum()
    )
    assert six["training"]["resembles"] is True and six["training"]["cause"] is None
    assert (
        "though the training data holds" in six["remedy"] and "retrain or rebalance the head" in six["remedy"]
    )
    row = six["benchmark_precision"]
    assert row["half"] == "heldout" and 0 <= row["right"] <= row["count"] and row["count"] > 0
    assert f"training data: {six['training']['count']} training images labelled 6" in text
    # Reached with training data: the line says so only where the shipped table was measured without it.
    measured = "" if row["training_data"] else " (measured without training data)"
    assert (
        f"benchmark: not read out — right in {row['right']} of {row['count']} such calls on the held-out "
        f"benchmark{measured}\n"
    ) in text
    assert "benchmark: ok — right in" in text
    assert json.loads(out.read_text())["training_instances"] == 900


def test_a_bad_train_data_spec_is_one_line_and_exit_2(folder: Path) -> None:
    code, _, err = diagnose(folder, "--train-data", f"npz:{folder / 'missing.npz'}")
    assert code == 2 and "missing.npz" in err and len(err.strip().splitlines()) == 1, err
    code, _, err = diagnose(folder, "--train-data", f"npz:{folder / 'other.npz'}")
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--train-data" in err and "not the model's" in err
