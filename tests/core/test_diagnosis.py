"""The drowning-expert diagnosis: healthy, drowning (planted bias shift), not learned (planted and demo)."""

from __future__ import annotations

import copy
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from essence.core.diagnosis import DROWNING, NOT_LEARNED, OK, DiagnosisSettings, diagnose


def net() -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 8, 3, padding=1),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(8 * 4 * 4, 32),
            relu3=nn.ReLU(),
            fc2=nn.Linear(32, 10),
        )
    )


def train() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    torch.manual_seed(0)
    model = net()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        idx = torch.randint(0, 900, (64,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval(), x[900:], y[900:]


@pytest.fixture(scope="module")
def digits() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    return train()


def test_a_healthy_model_is_ok(digits) -> None:
    model, x, y = digits
    d = diagnose(model, (x, y), "fc1", device="cpu")
    assert [c.diagnosis for c in d.classes] == [OK] * 10
    assert d.never_predicted == []
    assert d.accuracy > 0.85
    assert d.confusion.sum() == len(y) and np.trace(d.confusion) == round(d.accuracy * len(y))
    c = d.classes[0]
    assert c.expert is None and c.sweep is None and len(c.top_positive) == 5
    js = d.to_json()
    assert js["layer"] == "fc1" and {
        "name",
        "recall",
        "precision",
        "predicted_count",
        "diagnosis",
        "expert",
    } <= set(js["classes"][0])


def test_planted_drowning_experts(digits) -> None:
    """A learned class whose logit is pushed below every other by a bias shift: its expert still exists."""
    model, x, y = digits
    model = copy.deepcopy(model)
    cls = 0
    with torch.no_grad():
        out = model(x)
        others = out.clone()
        others[:, cls] = -torch.inf
        model.fc2.bias[cls] -= (out[:, cls] - others.max(1).values).max() + 0.5
        assert (model(x).argmax(1) != cls).all()
    d = diagnose(model, (x, y), "fc1", preprocessing="L 8×8, no blur", device="cpu")
    c = d.classes[cls]
    assert c.predicted_count == 0 and np.isnan(c.precision) and c.recall == 0.0
    assert c.diagnosis == DROWNING, c.advice
    assert c.expert["recall"] >= 1 / np.sqrt(c.count)
    assert c.drowned_by and set(c.drowned_by) <= {name for name, _ in c.confused_with}
    assert "rebalance" in c.advice and c.drowned_by[0] in c.advice
    assert d.never_predicted == [f"class {cls}"]
    assert all(o.diagnosis == OK for o in d.classes if o.cls != cls)


def test_planted_not_learned(digits) -> None:
    """A class the head ignores (zero weights, low bias): no mask of its units can bring it back."""
    model, x, y = digits
    model = copy.deepcopy(model)
    cls = 6
    with torch.no_grad():
        model.fc2.weight[cls] = 0
        model.fc2.bias[cls] = model.fc2.bias.min() - 20
    recipe = "L, no blur, scale 1/16"
    d = diagnose(model, (x, y), "fc1", preprocessing=recipe, device="cpu")
    c = d.classes[cls]
    assert c.diagnosis == NOT_LEARNED and c.expert is None
    assert "never predicted; no expert found: not learned — look at the data and preprocessing" in c.advice
    assert recipe in c.advice
    assert c.control is not None and c.to_json()["activation_control"]["expert"] is False


def test_rare_share_setting(digits) -> None:
    model, x, y = digits
    # With share 1 every class predicted less often than it occurs gets the sweep; none is "not learned".
    d = diagnose(model, (x, y), "fc1", settings=DiagnosisSettings(rare_share=1.0), device="cpu")
    swept = [c for c in d.classes if c.sweep is not None]
    assert swept and all(c.predicted_count < c.count for c in swept)


DEMO = Path(__file__).resolve().parents[2] / "sample_data" / "models"


@pytest.mark.slow
@pytest.mark.skipif(not list(DEMO.glob("*.safetensors")), reason="the demo's weights are not built")
def test_demo_blurred_class_2_not_learned_sharp_ok() -> None:
    from essence.core import load_dataset, load_model

    for name, want in (("blurred", NOT_LEARNED), ("sharp", OK)):
        m = load_model(f"demo:{name}")
        data = load_dataset("demo:test", m.preprocessing, class_names=m.class_names)
        d = diagnose(m.module, data, m.default_layer, device="cpu")
        two = d.classes[data.class_index("severity 2")]
        assert two.diagnosis == want, (name, two.advice)
        if name == "sharp":
            assert two.predicted_count > 0
        else:
            assert "blur" in two.advice
