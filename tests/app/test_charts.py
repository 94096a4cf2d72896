"""The app's charts as functions: their data and encodings, without a browser."""

from __future__ import annotations

import numpy as np
import pytest

from essence.app import charts


def test_grid_places_units_in_the_class_order_sized_by_magnitude_coloured_by_sign() -> None:
    values = np.array([0.5, -2.0, 1.0, 0.0, -0.25])
    order = np.argsort(-values, kind="stable")  # class-wide order, most positive first
    frame = charts.grid_frame(values, order, columns=2)
    assert frame["unit"].tolist() == [2, 0, 3, 4, 1]
    assert frame["row"].tolist() == [0, 0, 1, 1, 2] and frame["column"].tolist() == [0, 1, 0, 1, 0]
    assert frame["magnitude"].max() == 1.0 and frame.loc[frame.unit == 1, "magnitude"].item() == 1.0
    assert frame.loc[frame.unit == 2, "magnitude"].item() == pytest.approx(0.5)
    assert frame.loc[frame.unit == 1, "sign"].item() == "negative"
    assert frame.loc[frame.unit == 2, "sign"].item() == "positive"
    spec = charts.influence_grid(values, order, "t", columns=2).to_dict()
    assert spec["mark"]["type"] == "square"
    assert spec["encoding"]["size"]["field"] == "magnitude"
    assert spec["encoding"]["color"]["scale"]["range"] == [charts.POSITIVE, charts.NEGATIVE]


def test_an_instance_is_placed_on_its_class_order_not_its_own() -> None:
    profile = np.array([3.0, 1.0, 2.0])
    instance = np.array([-1.0, 5.0, 0.0])
    chart = charts.class_and_instance_grids(profile, instance, "c", "i", columns=3)
    left, right = chart.hconcat
    assert left.data["unit"].tolist() == [0, 2, 1]
    assert right.data["unit"].tolist() == [0, 2, 1]  # the class's order, not the instance's own
    assert right.data["influence"].tolist() == [-1.0, 0.0, 5.0]


def test_grid_of_all_zero_or_nan_influence_draws_without_dividing_by_zero() -> None:
    frame = charts.grid_frame(np.array([0.0, np.nan]), np.array([0, 1]))
    assert frame["magnitude"].tolist() == [0.0, 0.0]


def test_class_bars_leave_undefined_precision_out() -> None:
    chart = charts.class_bars(["a", "b"], np.array([0.5, 0.0]), np.array([0.75, np.nan]))
    data = chart.data
    assert data.loc[(data["class"] == "b") & (data.measure == "precision"), "value"].isna().all()
    assert data.loc[(data["class"] == "a") & (data.measure == "recall"), "value"].item() == 0.5


def test_confusion_chart_holds_every_cell() -> None:
    conf = np.array([[5, 1], [2, 0]])
    chart = charts.confusion_chart(conf, ["x", "y"])
    data = chart.layer[0].data if chart.data is None or chart.data is charts.alt.Undefined else chart.data
    cell = data[(data["true"] == "y") & (data["predicted"] == "x")]["count"].item()
    assert cell == 2 and len(data) == 4


def test_sweep_heatmap_marks_experts_and_keeps_nan_as_missing() -> None:
    alphas, betas = np.array([1, 2]), np.array([0, 1, 3])
    precision = np.array([[0.2, np.nan, 0.9], [0.5, 0.6, 0.7]])
    experts = np.zeros((2, 3), dtype=bool)
    experts[1, 2] = True
    frame = charts.sweep_frame(alphas, betas, precision, experts)
    assert len(frame) == 6
    assert frame[(frame.alpha == 1) & (frame.beta == 1)]["value"].isna().all()
    assert frame[frame.expert][["alpha", "beta"]].values.tolist() == [[2, 3]]
    spec = charts.sweep_heatmap(alphas, betas, precision, "precision", "t", experts).to_dict()
    assert spec["layer"][0]["encoding"]["color"]["scale"]["domain"] == [0, 1]


def test_roc_points_match_a_perfect_and_a_reversed_ranking() -> None:
    y = np.array([0, 0, 1, 1], dtype=bool)
    _, _, auc = charts.roc_points(np.array([0.1, 0.2, 0.8, 0.9]), y)
    assert auc == 1.0
    _, _, auc = charts.roc_points(np.array([0.9, 0.8, 0.2, 0.1]), y)
    assert auc == 0.0
    with pytest.raises(ValueError):
        charts.roc_points(np.array([0.1, 0.2]), np.array([True, True]))
    assert (
        "AUC 1.00" in charts.roc_chart(np.array([0.1, 0.2, 0.8, 0.9]), y, "x").to_dict()["layer"][0]["title"]
    )


def test_compare_bars_put_both_models_side_by_side() -> None:
    chart = charts.compare_bars(["a", "b"], [0.5, 0.0], [0.6, 0.4], "A", "B")
    data = chart.data
    assert data[(data["class"] == "b") & (data.model == "B")]["recall"].item() == 0.4
    assert chart.to_dict()["encoding"]["xOffset"]["field"] == "model"


def test_all_profiles_grid_marks_units_within_two_standard_errors_of_zero() -> None:
    from essence.app import charts

    mean = np.array([[0.5, -0.4, 0.01, 0.0], [0.0, 0.0, 0.0, 0.0]])
    stderr = np.array([[0.1, 0.1, 0.1, 0.0], [0.0, 0.0, 0.0, 0.0]])
    frame = charts.profiles_frame(mean, stderr, ["a", "b"], columns=2)
    a = frame[frame["class"] == "a"].set_index("unit")
    assert a.loc[0, "sign"] == "positive" and a.loc[1, "sign"] == "negative"
    assert a.loc[2, "sign"] == "uncertain"  # 0.01 ± 0.1: its sign is not established
    assert a.loc[3, "sign"] == "uncertain"  # no influence at all is not "negative"
    assert list(a.sort_values("rank").index) == [0, 2, 3, 1]  # the class-wide order, most positive first
    assert set(frame[frame["class"] == "b"]["sign"]) == {"uncertain"}
    spec = charts.all_profiles_grid(mean, stderr, ["a", "b"]).to_dict()
    assert spec["facet"]["field"] == "class"
