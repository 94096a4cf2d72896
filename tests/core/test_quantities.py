"""Quantities of interest: values, names and bad classes."""

from __future__ import annotations

import pytest
import torch

from essence.core.base.errors import ClassNotFoundError, SpecError
from essence.core.engine.quantities import (
    ClassScore,
    Comparative,
    CustomQuantity,
    OwnLabel,
    PredictedClass,
    as_quantity,
    quantity_name,
)

LOGITS = torch.tensor([[1.0, 3.0, -1.0], [0.5, -2.0, 4.0]])
LABELS = torch.tensor([0, 2])


def test_values():
    probs = torch.softmax(LOGITS, 1)
    assert ClassScore(1)(LOGITS, LABELS).tolist() == [3.0, -2.0]
    torch.testing.assert_close(ClassScore(1, "prob")(LOGITS, LABELS), probs[:, 1])
    assert Comparative(1, 2)(LOGITS, LABELS).tolist() == [4.0, -6.0]
    assert PredictedClass()(LOGITS, LABELS).tolist() == [3.0, 4.0]
    assert OwnLabel()(LOGITS, LABELS).tolist() == [1.0, 4.0]
    torch.testing.assert_close(OwnLabel("prob")(LOGITS, LABELS), probs[[0, 1], [0, 2]])


def test_names_are_stable_and_distinct():
    qs = [
        ClassScore(1),
        ClassScore(1, "prob"),
        Comparative(0, 1),
        PredictedClass(),
        OwnLabel(),
        OwnLabel("prob"),
    ]
    names = [quantity_name(q) for q in qs]
    assert len(set(names)) == len(names)
    assert quantity_name(as_quantity("logit")) == "logit[label]"

    def margin(logits, labels):
        return logits[:, 0]

    assert quantity_name(as_quantity(margin)) == "margin"
    assert isinstance(as_quantity(margin), CustomQuantity)


@pytest.mark.parametrize("q", [ClassScore(3), ClassScore(-1), Comparative(0, 3), Comparative(5, 0)])
def test_classes_out_of_range(q):
    with pytest.raises(ClassNotFoundError, match="out of range"):
        q(LOGITS, LABELS)


def test_labels_out_of_range_and_bad_specs():
    with pytest.raises(ClassNotFoundError, match="label 7"):
        OwnLabel()(LOGITS, torch.tensor([0, 7]))
    with pytest.raises(SpecError, match="logits"):
        as_quantity("logits")
    with pytest.raises(SpecError):
        as_quantity(3)  # type: ignore[arg-type]
    with pytest.raises(SpecError, match="kind"):
        ClassScore(0, "softmax")(LOGITS, LABELS)  # type: ignore[arg-type]
