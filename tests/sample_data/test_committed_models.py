"""The committed demo weights reproduce their cards' test metrics, and the cards' claims hold."""

from __future__ import annotations

import numpy as np
import pytest

from essence.core.inputs.preprocessing import Preprocessing
from essence.sample_data import DEMO_MODELS, MODELS_DIR, build_demo_model, load_split
from essence.sample_data.build import metrics, predict

SEVERITY_2 = 1

pytestmark = pytest.mark.skipif(
    not all((MODELS_DIR / f"{n}.safetensors").is_file() for n in DEMO_MODELS),
    reason="the demo's weights are not built (essence demo build)",
)


def test_committed_weights_are_small() -> None:
    for name in DEMO_MODELS:
        assert (MODELS_DIR / f"{name}.safetensors").stat().st_size < 5_000_000


@pytest.mark.slow
@pytest.mark.parametrize("name", DEMO_MODELS)
def test_committed_weights_reproduce_the_card(name: str) -> None:
    model, card = build_demo_model(name)
    images, labels = load_split("test", seed=card["data"]["seed"])
    assert [int(n) for n in np.bincount(labels)] == card["data"]["sizes"]["test"]
    recipe = Preprocessing.from_dict(card["preprocessing"])
    measured = metrics(labels, predict(model, recipe.apply_array(np.array(images))), len(card["class_names"]))
    claimed = card["metrics"]["test"]
    assert measured["accuracy"] == pytest.approx(claimed["accuracy"], abs=1e-6)
    assert measured["recall"] == pytest.approx(claimed["recall"], abs=1e-6)
    assert measured["predicted_counts"] == claimed["predicted_counts"]
    assert measured["confusion"] == claimed["confusion"]


def test_cards_claim_the_case_study() -> None:
    blurred, sharp = (build_demo_model(n)[1]["metrics"]["test"] for n in DEMO_MODELS)
    assert blurred["predicted_counts"][SEVERITY_2] == 0 and blurred["recall"][SEVERITY_2] == 0
    assert sharp["recall"][SEVERITY_2] >= 0.5
    assert sharp["accuracy"] >= blurred["accuracy"]
