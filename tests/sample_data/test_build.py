"""A reduced rebuild of the demo from scratch: deterministic, and the blur's effect on severity 2 shows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from essence.core.base.errors import ModelLoadError
from essence.core.inputs.preprocessing import Preprocessing
from essence.sample_data import DEMO_MODELS, build_demo_model, load_demo_card, load_split
from essence.sample_data.build import build_demo

SEVERITY_2 = 1
# Small enough for about a minute on two busy CPU cores, large enough for the sharp model to find the dots.
REDUCED_SCALE = 0.2
REDUCED_EPOCHS = 8


@pytest.fixture(scope="module")
def reduced(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("demo")
    stages: list[str] = []
    cards = build_demo(
        out, seed=0, epochs=REDUCED_EPOCHS, n_scale=REDUCED_SCALE, progress=lambda s, d, t: stages.append(s)
    )
    assert stages[0] == "data" and {"blurred", "sharp"} <= set(stages)
    return out, cards


def _severity_2_auc(out: Path, name: str) -> float:
    """ROC AUC of the model's severity-2 probability, severity-2 against severity-1 test images."""
    model, card = build_demo_model(name, out)
    images, labels = load_split("test", seed=0, scale=REDUCED_SCALE)
    x = Preprocessing.from_dict(card["preprocessing"]).apply_array(np.array(images))
    with torch.no_grad():
        p = torch.softmax(model(x), dim=1)[:, SEVERITY_2].numpy()
    pos, neg = p[labels == SEVERITY_2][:, None], p[labels == 0][None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


@pytest.mark.slow  # trains both demo models (reduced)
def test_reduced_build_shows_the_blur_effect(reduced: tuple[Path, dict]) -> None:
    # A reduced build is too short for the sharp model's argmax to reach severity 2 (the full build's does, see
    # test_committed_models); how well its severity-2 score ranks severity-2 images above severity-1 ones
    # already shows the direction: the sharp model sees the microaneurysms, the blurred one cannot.
    out, cards = reduced
    blurred, sharp = (cards[n]["metrics"]["test"] for n in ("blurred", "sharp"))
    assert sharp["recall"][SEVERITY_2] >= blurred["recall"][SEVERITY_2]
    auc_blurred, auc_sharp = _severity_2_auc(out, "blurred"), _severity_2_auc(out, "sharp")
    print(f"severity-2 AUC: sharp {auc_sharp:.3f}, blurred {auc_blurred:.3f}")
    assert auc_sharp > auc_blurred + 0.1, (auc_sharp, auc_blurred)


@pytest.mark.slow  # trains both demo models (reduced)
def test_reduced_build_writes_loadable_cards(reduced: tuple[Path, dict]) -> None:
    out, cards = reduced
    for name in DEMO_MODELS:
        card = json.loads((out / f"{name}.json").read_text())
        assert card == load_demo_card(name, out) == json.loads(json.dumps(cards[name]))
        assert card["architecture"] == "essence.sample_data.model:DemoCNN" and card["default_layer"] == "fc1"
        assert len(card["class_names"]) == 5 and len(card["metrics"]["test"]["recall"]) == 5
        model, _ = build_demo_model(name, out)
        assert not model.training
        assert model(torch.zeros(2, 3, 64, 64)).shape == (2, 5)
    assert (
        cards["blurred"]["preprocessing"]["blur_sigma"] > 0 == cards["sharp"]["preprocessing"]["blur_sigma"]
    )


@pytest.mark.slow  # trains both demo models twice
def test_builds_are_deterministic(tmp_path: Path) -> None:
    for run in ("a", "b"):
        build_demo(tmp_path / run, seed=3, epochs=1, n_scale=0.03)
    for name in DEMO_MODELS:
        a = load_file(str(tmp_path / "a" / f"{name}.safetensors"))
        b = load_file(str(tmp_path / "b" / f"{name}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        card_a = json.loads((tmp_path / "a" / f"{name}.json").read_text())
        card_b = json.loads((tmp_path / "b" / f"{name}.json").read_text())
        assert card_a["metrics"] == card_b["metrics"]


def test_unknown_demo_model_names_the_valid_ones() -> None:
    with pytest.raises(ModelLoadError, match="blurred, sharp"):
        build_demo_model("fuzzy")
    with pytest.raises(ModelLoadError, match="blurred, sharp"):
        load_demo_card("fuzzy")


def test_missing_files_say_how_to_rebuild(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="essence demo build"):
        build_demo_model("sharp", tmp_path)


def test_bad_build_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="epochs"):
        build_demo(tmp_path, epochs=0)


def test_cli_quick_refuses_to_overwrite_committed_models(capsys: pytest.CaptureFixture[str]) -> None:
    from essence.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "build", "--quick"])
    assert exit_info.value.code == 2 and "--out" in capsys.readouterr().err
