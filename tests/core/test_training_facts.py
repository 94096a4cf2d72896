"""The training data in the diagnosis: "not learned" told from "not read out" by what the head was taught.

- the rule itself on small feature tensors (alike, unlike, absent, rare, too few to test);
- on digits (a small CNN, trained in about a second): a class absent from the training data, a class whose
  training images are noise (the model trained on them), and a present, alike class whose read-out row is
  zeroed — "not learned" (collect images), "not learned" (check them) and "not read out" (fix the head).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch import nn

from essence.core.analyses.diagnosis.results import NOT_LEARNED, NOT_READ_OUT
from essence.core.analyses.diagnosis.training import TrainingSettings, training_facts
from essence.core.analyses.diagnosis.verdict import diagnose
from essence.core.base.errors import LabelMismatchError, SpecError
from essence.core.inputs.data import ImageData
from essence.core.inputs.preprocessing import Preprocessing

TRAIN = 900  # digits 0..899 train, the other 897 are diagnosed
CLS = 6


def test_the_rule_on_small_tensors() -> None:
    rng = np.random.default_rng(0)
    centres = np.array([[0.0] * 4, [6.0] * 4, [-6.0] * 4, [0.0, 6.0, 0.0, -6.0]])
    labels = np.repeat(np.arange(4), 40)
    features = centres[labels] + rng.normal(size=(160, 4))
    # Training: class 0 drawn like its evaluated images; class 1's images far from anything evaluated; class 2
    # absent; class 3 alike but 3 images against 40 evaluated (rare).
    train_labels = np.r_[np.zeros(40), np.ones(40), np.full(3, 3)].astype(int)
    train = centres[train_labels] + rng.normal(size=(83, 4))
    train[train_labels == 1] += 40.0
    facts = training_facts(features, labels, train, train_labels, 4)
    assert facts[0].resembles and facts[0].unlike <= 6 and facts[0].cause is None and not facts[0].rare
    assert facts[1].resembles is False and facts[1].unlike == 40 and facts[1].cause == "unlike"
    assert facts[2].count == 0 and facts[2].rare and facts[2].cause == "absent" and facts[2].resembles is None
    assert facts[3].rare and facts[3].cause == "rare" and facts[3].share == pytest.approx(3 / 83)
    assert facts[1].others_unlike == pytest.approx(np.median([facts[0].unlike / 40, facts[3].unlike / 3]))
    row = facts[1].to_json()
    assert row["unlike_share"] == 1.0 and row["resembles"] is False and row["cause"] == "unlike"
    assert "40 of them unlike its evaluated images at the slice" in facts[1].describe("b")
    # Fewer evaluated images of a class than the 5 % level needs (19): resemblance is not tested.
    few = training_facts(features[:18], labels[:18], train[:40], train_labels[:40], 4)
    assert few[0].resembles is None and few[0].unlike is None and few[0].cause is None


def test_settings_are_checked() -> None:
    with pytest.raises(SpecError, match="level=1.5"):
        TrainingSettings(level=1.5)
    assert TrainingSettings().min_evaluated == 19 and TrainingSettings(level=0.1).min_evaluated == 9


def net() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(8 * 4 * 4, 32), nn.ReLU(), nn.Linear(32, 10),
    )  # fmt: skip


def fit(x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    torch.manual_seed(0)
    model = net()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        idx = torch.randint(0, len(y), (64,), generator=g)
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    d = load_digits()
    return torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0, torch.tensor(d.target)


@pytest.fixture(scope="module")
def trained(digits) -> nn.Module:
    """Trained on the first 900 digits."""
    x, y = digits
    return fit(x[:TRAIN], y[:TRAIN])


@pytest.fixture(scope="module")
def zeroed(trained) -> nn.Module:
    """Class 6's read-out row zeroed (the slice still carries 6)."""
    model = copy.deepcopy(trained)
    with torch.no_grad():
        model[6].weight[CLS] = 0
        model[6].bias[CLS] = model[6].bias.min() - 20
    return model


def test_present_and_alike_the_head_zeroed_is_not_read_out(digits, zeroed) -> None:
    x, y = digits
    alone = diagnose(zeroed, (x[TRAIN:], y[TRAIN:]), "5", device="cpu").classes[CLS]
    assert alone.diagnosis == NOT_READ_OUT and alone.training is None and alone.to_json()["training"] is None
    # Without the training data the remedy does not claim what it cannot know.
    assert "the training data would tell this from a class never seen in training" in alone.remedy
    d = diagnose(zeroed, (x[TRAIN:], y[TRAIN:]), "5", device="cpu", train_data=(x[:TRAIN], y[:TRAIN]))
    c = d.classes[CLS]
    assert c.diagnosis == NOT_READ_OUT, c.advice
    assert c.training.count == int((y[:TRAIN] == CLS).sum()) and c.training.resembles and not c.training.rare
    assert "retrain or rebalance the head" in c.remedy and "look like these at the slice" in c.remedy
    assert f"training data: {c.training.count} training images labelled class 6" in c.advice
    js = d.to_json()
    assert js["training_instances"] == TRAIN and js["classes"][CLS]["training"]["resembles"] is True
    assert js["settings"]["training_unlike_share"] == 0.5


def test_a_class_absent_from_training_is_not_learned(digits, zeroed) -> None:
    x, y = digits
    keep = y[:TRAIN] != CLS
    d = diagnose(
        zeroed, (x[TRAIN:], y[TRAIN:]), "5", device="cpu", train_data=(x[:TRAIN][keep], y[:TRAIN][keep])
    )
    c = d.classes[CLS]
    assert c.diagnosis == NOT_LEARNED and c.training.count == 0 and c.training.cause == "absent", c.advice
    assert c.remedy == "collect and label training images of class 6: the training data holds none"
    # The cause is the training data: no preprocessing step is audited or blamed.
    assert c.audit is None and c.suspect_steps == []
    assert all(k.diagnosis == "ok" for k in d.classes if k.cls != CLS)


def test_a_class_whose_training_images_are_noise_is_not_learned(digits) -> None:
    """The issue's case: trained on noise labelled 6, called "not read out" without the training data."""
    x, y = digits
    noisy = x[:TRAIN].clone()
    sixes = torch.nonzero(y[:TRAIN] == CLS).view(-1)
    noisy[sixes] = torch.rand(len(sixes), *x.shape[1:], generator=torch.Generator().manual_seed(0))
    model = fit(noisy, y[:TRAIN])
    alone = diagnose(model, (x[TRAIN:], y[TRAIN:]), "5", device="cpu").classes[CLS]
    assert alone.diagnosis == NOT_READ_OUT, alone.advice  # what the issue reports
    c = diagnose(model, (x[TRAIN:], y[TRAIN:]), "5", device="cpu", train_data=(noisy, y[:TRAIN])).classes[CLS]
    assert c.diagnosis == NOT_LEARNED and c.training.cause == "unlike", c.advice
    assert c.training.unlike == c.training.count == len(sixes) and not c.training.rare
    assert c.remedy.startswith("the training images labelled class 6 do not show what the evaluation images")
    assert "check them" in c.remedy and c.training.others_unlike < 0.5


def test_training_data_of_other_classes_is_refused(digits, zeroed) -> None:
    x, y = digits
    with pytest.raises(LabelMismatchError, match="outside the model's 10 classes"):
        diagnose(zeroed, (x[TRAIN:], y[TRAIN:]), "5", device="cpu", train_data=(x[:20], y[:20] + 10))
    pre = Preprocessing(mode="L", mean=(0.0,), std=(1.0,), scale=16.0)
    images = load_digits().images.astype(np.float32)
    names = [str(i) for i in range(10)]
    evaluated = ImageData("digits", y[TRAIN:].numpy(), names, pre, "eval", arrays=images[TRAIN:])
    other = ImageData("other", y[:TRAIN].numpy(), names[::-1], pre, "train", arrays=images[:TRAIN])
    with pytest.raises(LabelMismatchError, match="not the evaluated data's"):
        diagnose(zeroed, evaluated, "5", device="cpu", train_data=other)


def test_a_class_never_taught_is_not_learned_whatever_a_mask_finds(digits, trained) -> None:
    """Class 0's bias lowered below every image: an expert exists ("drowning experts" on the evaluated data). Its
    training images replaced by noise: what the mask finds was not learned from them — "not learned". Rare in
    training instead: the expert stands, and "drowning experts" (rebalance) fits a rare class."""
    x, y = digits
    model = copy.deepcopy(trained)
    with torch.no_grad():
        out = model(x[TRAIN:])
        others = out.clone()
        others[:, 0] = -torch.inf
        model[6].bias[0] -= (out[:, 0] - others.max(1).values).max() + 0.5
    noisy = x[:TRAIN].clone()
    zeros = torch.nonzero(y[:TRAIN] == 0).view(-1)
    noisy[zeros] = torch.rand(len(zeros), *x.shape[1:], generator=torch.Generator().manual_seed(1))
    c = diagnose(model, (x[TRAIN:], y[TRAIN:]), "5", device="cpu", train_data=(noisy, y[:TRAIN])).classes[0]
    assert c.diagnosis == NOT_LEARNED and c.training.cause == "unlike", c.advice
    assert c.evidence.best is not None and "a mask passes the expert test" in c.advice
    keep = (y[:TRAIN] != 0) | (torch.arange(TRAIN) == zeros[0]) | (torch.arange(TRAIN) == zeros[1])
    c = diagnose(
        model, (x[TRAIN:], y[TRAIN:]), "5", device="cpu", train_data=(x[:TRAIN][keep], y[:TRAIN][keep])
    ).classes[0]
    assert c.training.count == 2 and c.training.cause == "rare"
    assert c.diagnosis == "drowning experts" and "rebalance" in c.remedy, c.advice
