"""Agreement between reviewers (plain Python, no Streamlit): Cohen's κ as sklearn gives it, on the images both
judged, with n and the disagreements; no κ for a lone reviewer."""

from __future__ import annotations

import pytest
from sklearn.metrics import cohen_kappa_score

from essence.app.agreement import agreements, kappa
from essence.storage import Store


def test_two_reviewers_get_sklearn_s_kappa_on_the_images_both_judged() -> None:
    a = {1: "fine", 2: "fine", 3: "label error", 4: "ambiguous", 5: "model error", 7: "fine"}
    b = {1: "fine", 2: "label error", 3: "label error", 4: "ambiguous", 5: "fine", 9: "fine"}
    (pair,) = agreements({"B": b, "A": a})
    shared = [1, 2, 3, 4, 5]  # 7 and 9 were judged by one reviewer only
    assert (pair.first, pair.second, pair.n, pair.agreed) == ("A", "B", 5, 3)
    assert pair.kappa == pytest.approx(cohen_kappa_score([a[i] for i in shared], [b[i] for i in shared]))
    assert [(d.instance_id, d.first, d.second) for d in pair.disagreements] == [
        (2, "fine", "label error"),
        (5, "model error", "fine"),
    ]


def test_one_reviewer_or_no_shared_image_gives_no_kappa() -> None:
    assert agreements({"A": {1: "fine", 2: "label error"}}) == []
    assert agreements({}) == []
    assert agreements({"A": {1: "fine"}, "B": {2: "fine"}}) == []  # two reviewers, no image in common


def test_kappa_is_undefined_when_both_give_one_verdict_throughout() -> None:
    (pair,) = agreements({"A": {1: "fine", 2: "fine"}, "B": {1: "fine", 2: "fine"}})
    assert (pair.n, pair.agreed, pair.kappa, pair.disagreements) == (2, 2, None, [])
    assert kappa([], []) is None
    assert kappa(["fine", "label error"], ["label error", "fine"]) == pytest.approx(-1.0)


def test_three_reviewers_give_every_pair_and_each_reviewer_s_latest_counts(tmp_path) -> None:
    with Store.open(tmp_path / "s.sqlite") as store:
        store.record_verdict("ds", 1, "fine", note="clear", reviewer="ana")
        store.record_verdict("ds", 1, "fine", reviewer="ben")
        store.record_verdict("ds", 2, "label error", reviewer="ana")
        store.record_verdict("ds", 2, "fine", reviewer="ben")
        store.record_verdict("ds", 2, "label error", reviewer="ben")  # ben changes his mind: agrees now
        store.record_verdict("ds", 1, "ambiguous", note="not sure", reviewer="cy")
        store.record_verdict(
            "ds", 3, "fine", reviewer="ana"
        )  # newest of anyone on 1 is cy's, ana's still counts
        mine = store.reviewers_latest("ds")
    assert {r: {i: v.verdict for i, v in by.items()} for r, by in mine.items()} == {
        "ana": {1: "fine", 2: "label error", 3: "fine"},
        "ben": {1: "fine", 2: "label error"},
        "cy": {1: "ambiguous"},
    }
    pairs = {(p.first, p.second): p for p in agreements(mine)}
    assert set(pairs) == {("ana", "ben"), ("ana", "cy"), ("ben", "cy")}
    assert (pairs["ana", "ben"].n, pairs["ana", "ben"].disagreements) == (2, [])
    assert pairs["ana", "ben"].kappa == pytest.approx(1.0)
    (d,) = pairs["ana", "cy"].disagreements
    assert (d.instance_id, d.first, d.second, d.first_note, d.second_note) == (
        1,
        "fine",
        "ambiguous",
        "clear",
        "not sure",
    )
