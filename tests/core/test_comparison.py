"""Model comparison: behaviour deltas, changed predictions, profile drift per class, each side's diagnosis."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from digits_models import digits_tensors, permuted_copy, trained_cnn
from torch import nn

import essence.core.analyses.diagnosis.verdict as diagnosis_module
from essence.core.analyses.comparison import compare_models
from essence.core.analyses.diagnosis.verdict import diagnose
from essence.core.analyses.profiles import class_profiles
from essence.core.base.errors import LabelMismatchError, SpecError


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = digits_tensors()
    return x[:600], y[:600]


@pytest.fixture(scope="module")
def trained(digits: tuple[torch.Tensor, torch.Tensor]) -> nn.Sequential:
    return trained_cnn(0, n=len(digits[1]))  # as train_cnn(0, *digits), trained once for every file


def test_a_renumbered_model_changes_nothing_and_its_profiles_do_not_drift(trained, digits) -> None:
    perm = torch.randperm(32, generator=torch.Generator().manual_seed(3))
    result = compare_models(trained, permuted_copy(trained, perm), digits, "6", device="cpu", diagnose=False)
    assert torch.equal(perm[result.matching.pairs_b], result.matching.pairs_a)
    assert len(result.fixed) == len(result.broken) == len(result.changed) == 0
    for c in result.classes:
        assert c.recall_a == c.recall_b
        assert c.drift.cosine == pytest.approx(1.0, abs=1e-5)
        assert c.drift.l2 == pytest.approx(0.0, abs=1e-5)
        assert c.drift.top_overlap == 1.0 and c.drift.k == 5
    assert result.to_json()["classes"][0]["drift"]["cosine"] == pytest.approx(1.0, abs=1e-5)


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
    assert js["diagnosis_a"] is None and result.diagnosis_note == "not asked for"


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


def test_each_sides_diagnosis_reuses_the_comparisons_profiles(trained, digits, monkeypatch) -> None:
    b = copy.deepcopy(trained)
    with torch.no_grad():
        b[8].bias[2] -= 50.0  # B never predicts class 2: a rare class, diagnosed
    alone = diagnose(b, digits, "6", device="cpu")
    passes = []
    recompute = diagnosis_module.class_profiles
    monkeypatch.setattr(
        diagnosis_module, "class_profiles", lambda *a, **k: passes.append(1) or recompute(*a, **k)
    )
    result = compare_models(trained, b, digits, "6", device="cpu")
    assert passes == []  # the comparison's profiles were handed over, not recomputed
    assert result.diagnosis_note == "" and result.diagnosis_b.layer == "6"
    assert result.to_json()["diagnosis_b"] == result.diagnosis_b.to_json()
    two = result.class_delta("2")
    assert two.diagnosis_b == alone.classes[2].diagnosis != "ok"
    assert two.expert_b is (alone.classes[2].expert is not None)
    assert [c.diagnosis_a for c in result.classes] == [c.diagnosis for c in result.diagnosis_a.classes]


def test_a_diagnosis_handed_over_is_used_as_it_is_and_one_of_another_slice_is_refused(
    trained, digits, monkeypatch
) -> None:
    b = copy.deepcopy(trained)
    with torch.no_grad():
        b[8].bias[2] -= 50.0
    names = [f"digit {i}" for i in range(10)]
    held_b = diagnose(
        b, digits, "6", profiles=class_profiles(b, digits, "6", class_names=names), device="cpu"
    )
    computed = compare_models(trained, b, digits, "6", class_names=names, device="cpu")
    import essence.core.analyses.comparison as comparison_module

    calls = []
    original = comparison_module.diagnose_model
    monkeypatch.setattr(
        comparison_module, "diagnose_model", lambda *a, **k: calls.append(a[2]) or original(*a, **k)
    )
    handed = compare_models(
        trained, b, digits, "6", class_names=names, device="cpu", diagnoses=(None, held_b)
    )
    assert len(calls) == 1  # A's only: B's was handed over
    assert handed.diagnosis_b is held_b
    # The same answer as computing it (compared as text: NaN, an undefined precision, equals itself there).
    assert json.dumps(handed.to_json(), sort_keys=True) == json.dumps(computed.to_json(), sort_keys=True)
    with pytest.raises(SpecError, match="slice '2'"):
        compare_models(
            trained, b, digits, "6", device="cpu", diagnoses=(diagnose(trained, digits, "2"), None)
        )
    with pytest.raises(SpecError, match="one per model"):
        compare_models(trained, b, digits, "6", device="cpu", diagnoses=(held_b,))  # type: ignore[arg-type]


DEMO = Path(__file__).resolve().parents[2] / "sample_data" / "models"


@pytest.mark.slow
@pytest.mark.skipif(not any(DEMO.glob("*.safetensors")), reason="the demo's trained weights are not built")
def test_demo_retrained_model_predicts_class_2_again() -> None:
    from essence.core import load_dataset, load_model

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
