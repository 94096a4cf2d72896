"""The Overview's training-data choice: none by default (nothing runs); a registered dataset picked, every class
is diagnosed with it, with its training facts and how often its verdict was right on the held-out benchmark;
the review report shows the same when the diagnosis has them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

TRAIN_KEY = "overview-training-data"


def _table(at):
    return next((d.value for d in at.dataframe if "training images" in d.value.columns), None)


@pytest.mark.slow
def test_no_training_data_by_default_then_a_dataset_picked(open_app, clean) -> None:
    from essence.sample_data import CLASS_NAMES

    at = open_app()
    clean(at)
    box = at.selectbox(key=TRAIN_KEY)
    assert box.value == "(none)"
    assert "demo:val" in box.options and "demo:test" not in box.options  # not the data under review
    assert _table(at) is None  # nothing diagnosed until training data is chosen
    box.set_value("demo:val").run()
    clean(at)
    table = _table(at)
    assert table is not None
    row = table[table["class"] == CLASS_NAMES[1]].iloc[0]
    assert row["diagnosis"] == "not learned" and row["training images"] == 43
    assert row["look like the images here"].endswith("of 43")
    assert row["right when given (held-out benchmark)"] != "—"
    flagged = [str(w.value) for w in at.warning if CLASS_NAMES[1] in str(w.value)]
    assert flagged and "How far to trust it: not learned — right in" in flagged[0], flagged
    assert any("planted-defect benchmark" in str(c.value) for c in at.caption)
    # The choice stays when the page is drawn again.
    at.run()
    assert at.selectbox(key=TRAIN_KEY).value == "demo:val"


def test_the_report_shows_the_training_facts_and_the_benchmark() -> None:
    from essence.app.report import _diagnosis_section
    from essence.core import diagnose
    from essence.core.analyses.diagnosis import benchmark

    _ = torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.randn(90, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
        model[2].bias[2] -= 3.0
    names = ["a", "b", "c"]
    without = _diagnosis_section(diagnose(model, (x, y), "1", device="cpu"), names)
    assert "right when given (held-out benchmark)" in without and "<th>training data</th>" not in without
    assert "How far to trust it:" in without and "Training data:" not in without
    html = _diagnosis_section(diagnose(model, (x, y), "1", device="cpu", train_data=(x, y)), names)
    assert (
        "<th>training data</th>" in html and "Training data:</b> 23 training images labelled class 2" in html
    )
    # The shipped benchmark table says whether it was measured with training data; a verdict reached the other
    # way says so beside its precision, and one reached the same way does not.
    table = benchmark.precision_table()
    assert table is not None
    measured_with = table["training_data"]
    assert ("(measured with training data)" in without) is measured_with
    assert ("(measured without training data)" in html) is (not measured_with)
    assert "(measured with training data)" not in html and "(measured without training data)" not in without
