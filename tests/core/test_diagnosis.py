"""The diagnosis on planted cases of real data (scikit-learn digits), one per verdict, and on the demo.

- ok: a healthy CNN.
- drowning experts: class 0's output bias pushed below every other logit (its read-out row intact).
- not read out: class 6's read-out row zeroed (the slice still carries 6, the head never reads it).
- not learned: class "1b" is a seeded quarter of the 1s under a new label — no image can tell it from "1".
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from essence.core.analyses.diagnosis.verdict import (
    DROWNING,
    NOT_LEARNED,
    NOT_READ_OUT,
    OK,
    DiagnosisSettings,
    diagnose,
)
from essence.core.analyses.experts.criterion import ExpertCriterion
from essence.core.inputs.data import ImageData
from essence.core.inputs.preprocessing import Preprocessing

TRAIN = 900  # digits 0..899 train, the other 897 are diagnosed


def net(num_classes: int = 10) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 8, 3, padding=1),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(8 * 4 * 4, 32),
            relu3=nn.ReLU(),
            fc2=nn.Linear(32, num_classes),
        )
    )


def fit(x: torch.Tensor, y: torch.Tensor, num_classes: int) -> nn.Module:
    torch.manual_seed(0)
    model = net(num_classes)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        idx = torch.randint(0, TRAIN, (64,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


def train() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target)
    return fit(x, y, 10), x[TRAIN:], y[TRAIN:]


def digits_data(images: np.ndarray, labels: np.ndarray, names: list[str], **recipe: object) -> ImageData:
    pre = Preprocessing(mode="L", mean=(0.0,), std=(1.0,), scale=16.0, **recipe)  # type: ignore[arg-type]
    return ImageData("digits", labels, names, pre, "planted", arrays=images.astype(np.float32))


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
    # Every class is probed against its neighbour; a healthy slice separates them all.
    assert all(k.probe.separates and k.probe.auc > 0.9 for k in d.classes)
    assert all(0.5 < k.probe.threshold < 0.7 for k in d.classes)
    js = d.to_json()
    row = js["classes"][0]
    assert js["layer"] == "fc1"
    assert {
        "name",
        "recall",
        "precision",
        "predicted_count",
        "diagnosis",
        "expert",
        "probe",
        "suspect_steps",
    } <= set(row)
    assert set(row["probe"]) >= {"auc", "threshold"} and row["suspect_steps"] == [] and row["expert"] is None


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
    # Honest: cross-fitted, and it beats the control and random masks of its size by the grid-corrected margin.
    assert c.sweep.crossfit and c.control.crossfit and len(c.evidence.random) == 9
    assert c.expert["recall"] - c.expert["reference_recall"] >= c.evidence.gain > 1 / np.sqrt(c.count)
    assert c.drowned_by and set(c.drowned_by) <= {name for name, _ in c.confused_with}
    assert "rebalance" in c.remedy and c.drowned_by[0] in c.advice
    assert d.never_predicted == [f"class {cls}"]
    assert all(o.diagnosis == OK for o in d.classes if o.cls != cls)
    js = d.to_json()["classes"][cls]
    assert {"alpha", "beta", "recall", "precision"} <= set(js["expert"]) and js["suspect_steps"] == []


def test_an_expert_where_the_slice_does_not_separate_is_no_expert(digits, monkeypatch) -> None:
    """The drowning case with the probe made to say the slice does not tell class 0 from its neighbour: the mask
    that passes the expert test could only fire on the neighbour too, so the verdict is not learned (audited),
    and the advice says a mask passed and why it is no expert."""
    from essence.core.analyses.diagnosis import probe as probes
    from essence.core.analyses.diagnosis import verdict

    model, x, y = digits
    model = copy.deepcopy(model)
    with torch.no_grad():
        out = model(x)
        others = out.clone()
        others[:, 0] = -torch.inf
        model.fc2.bias[0] -= (out[:, 0] - others.max(1).values).max() + 0.5
    real = probes.probe_class

    def at_chance(features, labels, i, j, names, settings):
        p = real(features, labels, i, j, names, settings)
        return p if j is None or i != 0 else probes.Probe(0.5, p.threshold, p.positives, p.negatives, p.against)

    monkeypatch.setattr(verdict, "probe_class", at_chance)
    c = diagnose(model, (x, y), "fc1", preprocessing="L 8×8, no blur", device="cpu").classes[0]
    assert c.evidence.best is not None  # the mask still passes the test
    assert c.diagnosis == NOT_LEARNED and c.expert is None, c.advice
    assert "a mask passes the expert test" in c.advice and "but is no expert" in c.advice
    assert "does not separate it from" in c.advice and "rebalance" not in c.remedy


def test_planted_not_read_out(digits) -> None:
    """The head ignores class 6 (zero read-out row, low bias), yet the slice separates it: not read out."""
    model, x, y = digits
    model = copy.deepcopy(model)
    cls = 6
    with torch.no_grad():
        model.fc2.weight[cls] = 0
        model.fc2.bias[cls] = model.fc2.bias.min() - 20
    d = diagnose(model, (x, y), "fc1", preprocessing="L, no blur, scale 1/16", device="cpu")
    c = d.classes[cls]
    assert c.diagnosis == NOT_READ_OUT and c.expert is None, c.advice
    assert c.probe.separates and c.probe.auc > 0.95 and c.probe.against == c.neighbour
    assert "retrain or rebalance the head" in c.remedy and c.suspect_steps == []
    assert c.to_json()["activation_control"]["best_recall"] == 0.0


@pytest.fixture(scope="module")
def split_ones() -> tuple[nn.Module, ImageData]:
    """11 classes: a seeded quarter of the 1s relabelled "1b". Nothing in an image says which 1 it is."""
    d = load_digits()
    labels = d.target.copy()
    ones = np.flatnonzero(labels == 1)
    labels[np.random.default_rng(0).choice(ones, size=len(ones) // 4, replace=False)] = 10
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    model = fit(x, torch.tensor(labels), 11)
    names = [str(i) for i in range(10)] + ["1b"]
    return model, digits_data(d.images[TRAIN:], labels[TRAIN:], names)


def test_planted_not_learned(split_ones) -> None:
    model, data = split_ones
    d = diagnose(model, data, "fc1", device="cpu")
    c = d.classes[10]
    assert c.predicted_count < c.count / 2
    assert c.diagnosis == NOT_LEARNED, c.advice
    assert c.neighbour == "1" and not c.probe.separates
    # The recipe has no lossy step, and the raw images do not separate 1b from 1 either: no step is blamed.
    assert c.audit is not None and c.audit.steps == [] and c.suspect_steps == []
    assert not c.audit.raw_separates and "check the labels" in c.remedy
    assert d.to_json()["preprocessing"]["scale"] == 16.0


def test_rare_share_setting(digits) -> None:
    model, x, y = digits
    # With share 1 every class predicted less often than it occurs gets the sweep (a small grid keeps it quick).
    small = DiagnosisSettings(
        rare_share=1.0, alphas=[1, 4, 16], betas=[0, 4], criterion=ExpertCriterion(random_masks=2)
    )
    d = diagnose(model, (x, y), "fc1", settings=small, device="cpu")
    swept = [c for c in d.classes if c.sweep is not None]
    assert swept and all(c.predicted_count < c.count for c in swept)
    assert all(c.sweep.recall.shape == (3, 2) and len(c.evidence.random) == 2 for c in swept)
    assert d.to_json()["settings"]["random_masks"] == 2


DEMO = Path(__file__).resolve().parents[2] / "sample_data" / "models"


@pytest.mark.slow
@pytest.mark.skipif(not list(DEMO.glob("*.safetensors")), reason="the demo's weights are not built")
def test_demo_blurred_class_2_not_learned_blur_named_sharp_ok() -> None:
    from essence.core import load_dataset, load_model

    for name in ("blurred", "sharp"):
        m = load_model(f"demo:{name}")
        data = load_dataset("demo:test", m.preprocessing, class_names=m.class_names)
        d = diagnose(m.module, data, m.default_layer, device="cpu")
        two = d.classes[data.class_index("severity 2")]
        if name == "sharp":
            assert two.diagnosis == OK and two.predicted_count > 0 and two.suspect_steps == []
            continue
        assert two.diagnosis == NOT_LEARNED, two.advice
        assert two.neighbour == "severity 1" and not two.probe.separates
        assert [s.step for s in two.suspect_steps] == ["Gaussian blur σ=2 px"]
        blur = two.suspect_steps[0]
        assert blur.auc_before > blur.threshold and blur.survival < 0.5 and "blur" in two.advice
