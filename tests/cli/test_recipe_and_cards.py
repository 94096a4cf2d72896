"""The recipe shown everywhere and cards that cannot be mistaken (issue 18, "Data"), through the CLI.

Every ``--json`` output carries the marker ``essence_output`` and ``preprocessing`` (the recipe as applied); the
text output prints the recipe; the store's run records hold it. A card is ``W.card.json`` (or an older ``W.json``
that is a valid card), and an output written beside the weights is never read as one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from sklearn.datasets import load_digits

from essence.cli import main

FACTORY = """
from collections import OrderedDict
from torch import nn

def build():
    return nn.Sequential(OrderedDict(
        conv1=nn.Conv2d(1, 4, 3, padding=1), relu1=nn.ReLU(), flatten=nn.Flatten(), fc1=nn.Linear(256, 16),
        relu2=nn.ReLU(), fc2=nn.Linear(16, 10)))
"""
# The digits' own recipe: 0..16 greys.
DIGITS_RECIPE = {"mode": "L", "size": None, "blur_sigma": 0.0, "mean": [0.0], "std": [1.0], "scale": 16.0}
CARD = {
    "class_names": [f"digit {i}" for i in range(10)],
    "preprocessing": DIGITS_RECIPE,
    "default_layer": "fc1",
}


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    (tmp_path / "essence_recipe_net.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("ESSENCE_HOME", str(tmp_path / "home"))
    import importlib
    import sys

    sys.modules.pop("essence_recipe_net", None)
    torch.manual_seed(0)
    save_file(importlib.import_module("essence_recipe_net").build().state_dict(), tmp_path / "w.safetensors")
    digit = (load_digits().images[3] * 255 / 16).astype(np.uint8)
    Image.fromarray(digit, "L").save(tmp_path / "three.png")
    return tmp_path


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def model(root: Path) -> list[str]:
    return [
        "--model",
        "essence_recipe_net:build",
        "--weights",
        str(root / "w.safetensors"),
        "--device",
        "cpu",
    ]


def profile(root: Path, *extra: str) -> list[str]:
    return ["profile", *model(root), "--data", "digits", "--layer", "fc1", "--no-cache", *extra]


def test_profile_prints_the_recipe_and_its_json_carries_it_and_the_marker(setup, capsys) -> None:
    (setup / "w.card.json").write_text(json.dumps(CARD))
    code, out, err = run(capsys, *profile(setup, "--json", str(setup / "out.json")))
    assert code == 0, err
    assert "preprocessing: L, no blur, values / 16" in out
    written = json.loads((setup / "out.json").read_text())
    assert written["essence_output"] == 1
    assert written["preprocessing"] == DIGITS_RECIPE
    assert written["classes"] == CARD["class_names"]  # the card was read


def test_an_output_written_as_w_json_is_never_read_as_the_card(setup, capsys) -> None:
    """``--json W.json`` beside ``W.safetensors``: the next run neither fails nor takes the output for a card.

    A diagnosis output holds a ``preprocessing`` object with a description: read as a card, it broke every later
    run ("unknown preprocessing keys").
    """
    diagnosis = ["diagnose", *model(setup), "--data", "digits", "--layer", "fc1", "--no-cache"]
    first = run(capsys, *diagnosis, "--json", str(setup / "w.json"))
    assert first[0] == 0, first[2]
    assert "description" in json.loads((setup / "w.json").read_text())["preprocessing"]
    code, out, err = run(capsys, *profile(setup, "--json", str(setup / "again.json")))
    assert code == 0, err
    assert "card" not in err and "values / 16" in out
    assert json.loads((setup / "again.json").read_text())["classes"] == [str(i) for i in range(10)]


def test_an_output_from_before_the_marker_is_passed_over_with_one_line(setup, capsys) -> None:
    old_output = {"layer": "fc1", "classes": ["a"], "preprocessing": "L, no blur", "cached": False}
    (setup / "w.json").write_text(json.dumps(old_output))
    code, out, err = run(capsys, *profile(setup))
    assert code == 0, err
    warned = [line for line in err.splitlines() if "w.card.json" in line]
    assert len(warned) == 1 and "not read as the model card" in warned[0]
    assert "values / 16" in out  # the digits' recipe, not the old output's


def test_an_older_w_json_that_is_a_valid_card_is_still_read(setup, capsys) -> None:
    (setup / "w.json").write_text(json.dumps(CARD))
    code, out, err = run(capsys, *profile(setup, "--json", str(setup / "out.json")))
    assert code == 0, err
    assert json.loads((setup / "out.json").read_text())["classes"] == CARD["class_names"]


@pytest.mark.parametrize(
    "card,message",
    [
        ({**CARD, "essence_output": 1}, "is an Essence output"),
        ({**CARD, "essence_card": 7}, "schema 7"),
        ({**CARD, "preprocessing": "RGB"}, "preprocessing recipe is a mapping"),
        (["not", "a", "card"], "JSON object"),
    ],
    ids=["output", "schema", "recipe", "list"],
)
def test_a_card_file_that_is_no_card_is_refused_in_one_line(setup, capsys, card, message) -> None:
    (setup / "w.card.json").write_text(json.dumps(card))
    code, _, err = run(capsys, *profile(setup))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_the_store_run_record_carries_the_recipe(setup, capsys) -> None:
    from essence.storage import Store

    store = setup / "s.sqlite"
    code, _, err = run(
        capsys, "precompute", *model(setup), "--data", "digits", "--layer", "fc1", "--store", str(store)
    )
    assert code == 0, err
    with Store.open(str(store)) as opened:
        (record,) = opened.runs()
    assert record.preprocessing == DIGITS_RECIPE
    code, out, _ = run(capsys, "store", "info", "--store", str(store), "--json", "-")
    facts = json.loads(out[out.index("{") :])
    assert facts["recent_runs"][0]["preprocessing"] == DIGITS_RECIPE and facts["essence_output"] == 1


@pytest.mark.parametrize("command", ["triage", "experts", "diagnose", "layers", "explain", "compare"])
def test_every_analysis_json_carries_the_recipe_as_applied(setup, capsys, command) -> None:
    out_path = setup / f"{command}.json"
    tail = ["--json", str(out_path)]
    args = {
        "triage": ["triage", *model(setup), "--data", "digits", "--layer", "fc1", "--no-cache", *tail],
        "experts": ["experts", *model(setup), "--data", "digits", "--layer", "fc1", "--class", "3", *tail],
        "diagnose": ["diagnose", *model(setup), "--data", "digits", "--layer", "fc1", "--no-cache", *tail],
        "layers": ["layers", *model(setup), "--data", "digits", "--max-instances", "64", *tail],
        "explain": ["explain", *model(setup), "--image", str(setup / "three.png"), "--class", "3", "--layer", "fc1", *tail],
        "compare": [
            "compare", *model(setup), "--against", "essence_recipe_net:build", "--against-weights",
            str(setup / "w.safetensors"), "--data", "digits", "--layer", "fc1", "--no-diagnose", *tail,
        ],
    }[command]  # fmt: skip
    if command in ("explain", "compare"):  # one image, or two models: the recipe comes from the card
        (setup / "w.card.json").write_text(json.dumps(CARD))
    code, out, err = run(capsys, *args)
    assert code == 0, err
    assert "preprocessing" in out and "values / 16" in out
    written = json.loads(out_path.read_text())
    assert written["essence_output"] == 1
    recipe = written["preprocessing"]
    if command == "compare":
        assert recipe == {"a": DIGITS_RECIPE, "b": DIGITS_RECIPE}
    else:
        assert {k: recipe[k] for k in DIGITS_RECIPE} == DIGITS_RECIPE  # diagnose adds a description
