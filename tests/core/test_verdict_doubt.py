"""Diagnosis verdicts that know their doubt: borderline probes, low-recall audits, advice that quotes the decider."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

import numpy as np
import pytest
import torch
from torch import nn

from essence.core import diagnose
from essence.core.analyses.diagnosis.advice import doubt as _doubt
from essence.core.analyses.diagnosis.advice import margin as _margin
from essence.core.analyses.diagnosis.probe import Probe, auc_stderr
from essence.core.analyses.diagnosis.results import ClassDiagnosis
from essence.core.analyses.diagnosis.verdict import _ClassRun
from essence.core.analyses.experts.criterion import ExpertCriterion


def _probe(auc: float, threshold: float, n: int = 30) -> Probe:
    return Probe(auc=auc, threshold=threshold, positives=n, negatives=n, against="b")


def test_hanley_mcneil_standard_error() -> None:
    # Under the null (A = ½) it is the Mann–Whitney sd up to O(1/n): √((n₁ + n₀ + 1) / (12 n₁ n₀)).
    assert auc_stderr(0.5, 200, 200) == pytest.approx(np.sqrt(401 / (12 * 200 * 200)), rel=0.02)
    assert auc_stderr(0.9, 50, 50) < auc_stderr(0.6, 50, 50)  # surer near the ends
    assert np.isnan(auc_stderr(float("nan"), 5, 5)) and np.isnan(auc_stderr(0.7, 0, 5))


def test_borderline_probe_is_said_in_text_and_json() -> None:
    near = _probe(0.613, 0.595)
    assert near.borderline and 0 < near.margin < 1
    text = _doubt(near)
    assert text.startswith("; borderline: the probe AUC 0.613 is within its standard error")
    assert "of the threshold 0.595" in text and f"{near.stderr:.3f}" in text
    row = near.to_json()
    assert row["borderline"] is True and row["stderr"] == pytest.approx(near.stderr)
    assert {"auc", "threshold", "against", "positives", "negatives", "separates"} <= set(row)
    assert _margin(near) == pytest.approx(near.margin) and _margin(None) is None
    # A clear separation (and a clear failure) is not borderline and says nothing.
    for far in (_probe(0.95, 0.595), _probe(0.40, 0.595, n=200)):
        assert not far.borderline and _doubt(far) == "" and far.to_json()["borderline"] is False


def _mlp(classes: int) -> nn.Module:
    """Hand-set: the hidden layer holds each input's positive and negative parts; class k's score is x_k."""
    model = nn.Sequential(nn.Linear(6, 2 * classes), nn.ReLU(), nn.Linear(2 * classes, classes)).eval()
    eye = torch.eye(classes, 6)
    with torch.no_grad():
        model[0].weight.copy_(torch.cat([eye, -eye]))
        model[0].bias.zero_()
        model[2].weight.copy_(torch.cat([torch.eye(classes), -torch.eye(classes)], 1))
        model[2].bias.zero_()
    return model


def test_low_recall_class_predicted_often_is_audited() -> None:
    model = _mlp(5)
    x = torch.randn(600, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pred = model(x).argmax(1)
    healthy = diagnose(model, (x, pred), "1", device="cpu")
    assert all(c.diagnosis == "ok" and c.audit_reason is None for c in healthy.classes)
    assert all(c.to_json()["borderline"] is False for c in healthy.classes)
    # Plant: most of class 2's images are predicted as 0, and most predictions of 2 are images of class 1.
    y = pred.clone()
    as0, as2 = torch.nonzero(pred == 0).view(-1), torch.nonzero(pred == 2).view(-1)
    y[as0[: int(0.6 * len(as0))]] = 2
    y[as2[: int(0.85 * len(as2))]] = 1
    d = diagnose(model, (x, y), "1", device="cpu")
    c = d.classes[2]
    assert c.recall < 0.3 and c.predicted_count >= 0.5 * c.count  # not rarely predicted
    assert c.audit_reason == "low recall" and c.diagnosis != "ok"
    assert c.advice.startswith("low recall (") and c.to_json()["audit_reason"] == "low recall"
    assert d.to_json()["settings"]["low_recall_share"] == 0.5
    assert d.classes[0].audit_reason is None and d.classes[3].diagnosis == "ok"


def _run(labels: list[int]) -> _ClassRun:
    run = _ClassRun.__new__(_ClassRun)
    run.cache = cast(Any, SimpleNamespace(labels=torch.tensor(labels)))
    run.names = ["a", "b"]
    return run


def _evidence(recall: list[float], precision: list[float]) -> Any:
    sweep = SimpleNamespace(
        recall=np.array([recall]),
        precision=np.array([precision]),
        baseline={"recall": 0.1, "precision": 0.9},
        prevalence=0.1,
    )
    return SimpleNamespace(
        sweep=sweep, criterion=ExpertCriterion(), reference=np.full((1, len(recall)), 0.1), gain=0.1
    )


def _base() -> ClassDiagnosis:
    return ClassDiagnosis(
        cls=0, name="a", count=10, recall=0.1, precision=0.9, predicted_count=2, diagnosis="ok", expert=None,
        confused_with=[("b", 8)], drowned_by=[], top_positive=[], top_negative=[], advice="", neighbour="b",
    )  # fmt: skip


def test_advice_names_the_precision_that_failed() -> None:
    run = _run([0] * 10 + [1] * 90)
    text = run.why_no_expert(_base(), _evidence([0.88, 0.5], [0.2, 0.3]))
    assert "no mask" not in text and "fail on precision" in text
    # The most precise lifting mask reaches 0.30 (at recall 0.50); the floor is the model's 0.9 − 0.1.
    assert "reaches 0.30 (recall 0.50), below the 0.80 the criterion asks" in text
    assert "recall up to 0.88" in text


def test_advice_names_the_recall_that_failed() -> None:
    run = _run([0] * 10 + [1] * 90)
    text = run.why_no_expert(_base(), _evidence([0.15, 0.12], [0.95, 0.95]))
    assert text.startswith("no mask of its units makes the head predict it more than its references")
    assert "recall 0.15 against 0.10" in text and "asks 0.10 more" in text
