"""Model comparison: behaviour deltas, changed predictions, unit matching, profile drift, diagnosis."""

from __future__ import annotations

import copy
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from essence.core.compare import _Moments, compare_models, match_units
from essence.core.errors import LabelMismatchError, SpecError


def digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    return x, torch.tensor(d.target, dtype=torch.long)


def train_cnn(seed: int, x: torch.Tensor, y: torch.Tensor, steps: int = 60) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 32),
        nn.ReLU(),
        nn.Linear(32, 10),
    )
    opt = torch.optim.Adam(model.parameters(), lr=0.02)
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = digits_tensors()
    return x[:600], y[:600]


@pytest.fixture(scope="module")
def trained(digits: tuple[torch.Tensor, torch.Tensor]) -> nn.Sequential:
    return train_cnn(0, *digits)


def permuted_copy(model: nn.Sequential, perm: torch.Tensor) -> nn.Sequential:
    """The same function with fc1's units renumbered: unit perm[i] of the copy is unit i... of the original."""
    b = copy.deepcopy(model)
    with torch.no_grad():
        b[6].weight.copy_(model[6].weight[perm])
        b[6].bias.copy_(model[6].bias[perm])
        b[8].weight.copy_(model[8].weight[:, perm])
    return b


def test_matching_recovers_a_permutation_and_profiles_do_not_drift(trained, digits) -> None:
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(3))
    b = permuted_copy(trained, perm)
    result = compare_models(trained, b, digits, "6", device="cpu", diagnose=False)
    m = result.matching
    # unit j of B is unit perm[j] of A
    assert torch.equal(perm[m.pairs_b][m.pairs_a.argsort()], m.pairs_a.sort().values) or torch.equal(
        perm[m.pairs_b], m.pairs_a
    )
    live = [i for i in range(32) if i not in m.constant_a]
    assert m.mean_corr > 0.99 * len(live) / 32
    assert len(result.fixed) == len(result.broken) == len(result.changed) == 0
    for c in result.classes:
        assert c.recall_a == c.recall_b
        assert c.drift["cosine"] == pytest.approx(1.0, abs=1e-5)
        assert c.drift["l2"] == pytest.approx(0.0, abs=1e-5)
        assert c.drift["top_overlap"] == 1.0


def test_behaviour_deltas_match_a_direct_count(trained, digits) -> None:
    x, y = digits
    b = copy.deepcopy(trained)
    with torch.no_grad():
        b[8].bias[2] -= 50.0  # B never predicts class 2
        b[8].bias[5] += 1.0
    result = compare_models(trained, b, digits, "2", device="cpu", diagnose=False)
    with torch.no_grad():
        pa, pb = trained(x).argmax(1), b(x).argmax(1)
    assert torch.equal(result.predictions_a, pa) and torch.equal(result.predictions_b, pb)
    assert torch.equal(result.fixed, torch.nonzero((pa != y) & (pb == y)).view(-1))
    assert torch.equal(result.broken, torch.nonzero((pa == y) & (pb != y)).view(-1))
    assert len(result.broken) > 0
    from sklearn.metrics import precision_score, recall_score

    ra = recall_score(y, pa, average=None, labels=range(10), zero_division=np.nan)
    prb = precision_score(y, pb, average=None, labels=range(10), zero_division=np.nan)
    for c, delta in enumerate(result.classes):
        assert delta.recall_a == pytest.approx(ra[c])
        assert (np.isnan(delta.precision_b) and np.isnan(prb[c])) or delta.precision_b == pytest.approx(
            prb[c]
        )
    two = result.class_delta("2")
    assert two.recall_b == 0 and two.predicted_b == 0 and np.isnan(two.precision_b)
    assert int(result.confusion_b[:, 2].sum()) == 0
    js = result.to_json()
    assert {"a", "b", "classes", "changed", "matching"} <= set(js)
    assert (
        js["classes"][2]["precision_b"] != js["classes"][2]["precision_b"]
        or js["classes"][2]["precision_b"] is None
    )
    assert js["changed"]["broken"] == result.broken.tolist()


def test_two_separately_trained_models_match_better_than_chance(trained, digits) -> None:
    other = train_cnn(1, *digits)
    result = compare_models(trained, other, digits, "6", device="cpu", diagnose=False)
    m = result.matching
    assert sorted(m.pairs_a.tolist()) == list(range(32)) and sorted(m.pairs_b.tolist()) == list(range(32))
    # the assignment is optimal: no other permutation of B gives a larger total correlation (check random ones)
    total = float(m.correlation[m.pairs_a, m.pairs_b].sum())
    gen = torch.Generator().manual_seed(0)
    for _ in range(50):
        assert float(m.correlation[torch.arange(32), torch.randperm(32, generator=gen)].sum()) <= total + 1e-6
    assert m.mean_corr > 0.3


def moments_of(a: torch.Tensor, b: torch.Tensor) -> _Moments:
    mo = _Moments()
    mo.add(a[:50], b[:50])
    mo.add(a[50:], b[50:])
    return mo


def test_signed_and_absolute_matching_and_constant_units() -> None:
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(120, 3, generator=gen)
    b = torch.stack([-a[:, 0], a[:, 2] + 0.1 * torch.randn(120, generator=gen), a[:, 1]], 1)
    corr, _, _ = moments_of(a, b).correlation()
    torch.testing.assert_close(
        corr.float(), torch.tensor(np.corrcoef(a.T, b.T)[:3, 3:], dtype=torch.float32), atol=1e-5, rtol=1e-5
    )
    signed = match_units(moments_of(a, b), mode="signed")
    absolute = match_units(moments_of(a, b), mode="abs")
    assert absolute.partner_of(0) == 0 and absolute.partner_of(1) == 2 and absolute.partner_of(2) == 1
    # maximising the signed correlation never pairs a unit with its mirror image, even at a cost elsewhere
    assert signed.partner_of(1) == 2 and signed.partner_of(0) != 0
    assert float(signed.corr.sum()) >= float(absolute.corr.sum())
    assert signed.share_above == pytest.approx(1 / 3)
    assert absolute.share_above == 1.0
    constant = torch.cat([a[:, :2], torch.ones(120, 1)], 1)
    m = match_units(moments_of(a, constant))
    assert m.constant_b == [2] and float(m.correlation[:, 2].abs().max()) == 0.0


def test_different_widths_are_refused_unless_partial(trained, digits) -> None:
    with pytest.raises(SpecError, match="different widths.*16 units.*32"):
        compare_models(trained, trained, digits, "2", "6", device="cpu", diagnose=False)
    result = compare_models(
        trained, trained, digits, "2", "6", device="cpu", diagnose=False, allow_partial=True
    )
    m = result.matching
    assert len(m.pairs_a) == 16 and len(m.unmatched_b) == 16 and not m.unmatched_a


def test_data_for_b_must_be_the_same_images(trained, digits) -> None:
    x, y = digits
    with pytest.raises(LabelMismatchError, match="other labels"):
        compare_models(trained, trained, digits, "6", data_b=(x, y.roll(1)), device="cpu", diagnose=False)


def test_diagnosis_of_each_side_and_the_fallback(trained, digits, monkeypatch) -> None:
    calls = []

    class Verdict:
        def __init__(self, layer: str) -> None:
            self.classes = [types.SimpleNamespace(diagnosis="ok", expert=None) for _ in range(10)]
            self.layer = layer

        def to_json(self) -> dict:
            return {"layer": self.layer}

    class Settings:
        kind, granularity = "logit", "channel"

    def diagnose(model, data, layer, *, profiles=None, batch_size=64, device="cpu"):  # noqa: ANN001, ANN202
        calls.append(profiles is not None)
        return Verdict(layer)

    fake = types.ModuleType("essence.core.diagnosis")
    fake.diagnose = diagnose
    fake.DiagnosisSettings = Settings
    monkeypatch.setitem(sys.modules, "essence.core.diagnosis", fake)
    result = compare_models(trained, trained, digits, "6", device="cpu")
    assert calls == [True, True]  # the comparison's profiles were handed over, not recomputed
    assert result.diagnosis_note == "" and result.to_json()["diagnosis_b"] == {"layer": "6"}
    assert result.classes[0].diagnosis_a == "ok" and result.classes[0].expert_b is False
    monkeypatch.setitem(sys.modules, "essence.core.diagnosis", None)  # import fails
    result = compare_models(trained, trained, digits, "6", device="cpu")
    assert result.diagnosis_a is None and "not available" in result.diagnosis_note
    assert result.classes[0].diagnosis_a is None


DEMO = Path(__file__).resolve().parents[2] / "sample_data" / "models"


@pytest.mark.slow
@pytest.mark.skipif(not any(DEMO.glob("*.safetensors")), reason="the demo's trained weights are not built")
def test_demo_retrained_model_predicts_class_2_again() -> None:
    from essence.core.loading import load_dataset, load_model

    a, b = load_model("demo:blurred"), load_model("demo:sharp")
    data_a = load_dataset("demo:test", a.preprocessing, class_names=a.class_names)
    data_b = load_dataset("demo:test", b.preprocessing, class_names=b.class_names)
    result = compare_models(
        a.module, b.module, data_a, a.default_layer, data_b=data_b, device="cpu", diagnose=False
    )
    two = result.classes[data_a.class_index("severity 2")]
    assert two.recall_a == 0.0 and two.predicted_a == 0
    assert two.recall_b >= 0.5
    assert len(result.fixed) > len(result.broken)
