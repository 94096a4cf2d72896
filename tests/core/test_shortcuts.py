"""Shared evidence: the grouping rule and the region on hand-made arrays, the cover test's parts, and a planted
shortcut whose region lands on the mark and whose cover changes more predictions than a random region's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import binom
from torch import nn

from benchmarks.planted import images as planted_images
from benchmarks.planted.cases import build_case
from essence.core import SharedEvidence, SpecError, deviation_scores, shared_evidence
from essence.core.analyses.shortcuts import (
    Region,
    aggregated_saliency,
    control_regions,
    covered,
    evidence_region,
    group_flagged,
    reason_matrix,
    tail,
)

# --------------------------------------------------------------------------------------------- the grouping


def background(
    seed: int = 0, n: int = 400, units: int = 32, classes: int = 5
) -> tuple[np.ndarray, np.ndarray]:
    """Reasons ``[n, units]`` drawn alike for every row (0 to 3 units at random) and labels cycling over classes."""
    rng = np.random.default_rng(seed)
    reasons = np.zeros((n, units), dtype=bool)
    for i in range(n):
        reasons[i, rng.choice(units, size=rng.integers(0, 4), replace=False)] = True
    return reasons, np.arange(n) % classes


def test_tail_is_the_binomial_tail_when_every_probability_is_equal() -> None:
    for n, p, k in ((10, 0.1, 3), (25, 0.3, 12), (5, 0.5, 0), (4, 0.2, 5)):
        assert tail(np.full(n, p), k) == pytest.approx(binom.sf(k - 1, n, p), abs=1e-12)


def test_reasons_are_why_units_above_the_class_by_min_z() -> None:
    why = np.array([[3, 1, 0], [2, 0, 1]])
    z = np.array([[2.5, -4.0, 1.9], [2.0, 3.0, -2.0]])
    r = reason_matrix(why, z, 4)
    assert r.tolist() == [
        [False, False, False, True],
        [True, False, True, False],
    ]  # below the class: no reason
    assert reason_matrix(why, z, 4, min_z=1.5)[0].tolist() == [True, False, False, True]
    with pytest.raises(SpecError, match="granularity"):
        reason_matrix(why, z, 3)  # unit 3 of a slice with 3 units: the why units are of another slice


def test_units_shared_by_flagged_images_of_one_class_make_one_group() -> None:
    reasons, labels = background()
    head = np.arange(60)  # the head of the queue
    marked = np.flatnonzero(labels[:60] == 2)[:10]
    reasons[np.ix_(marked, [7, 11])] = True
    groups = group_flagged(reasons, labels, head)
    assert len(groups) == 1
    g = groups[0]
    assert g.cls == 2 and set(g.units) == {7, 11}
    assert set(marked) <= set(g.rows.tolist())  # every marked image, and only images of the class
    assert (labels[g.rows] == 2).all() and all(p <= 0.05 for p in g.p_values)
    assert list(g.rows) == sorted(g.rows, key=lambda r: list(head).index(r))  # queue order


def test_reasons_drawn_alike_for_everyone_make_no_group() -> None:
    for seed in range(5):
        reasons, labels = background(seed)
        assert group_flagged(reasons, labels, np.arange(60)) == [], seed


def test_a_unit_common_everywhere_does_not_recur() -> None:
    reasons, labels = background()
    reasons[::2, 5] = True  # unit 5 is a reason of half of all images, flagged or not
    assert group_flagged(reasons, labels, np.arange(60)) == []


def test_two_shortcuts_of_one_class_are_two_groups() -> None:
    reasons, labels = background()
    rows = np.flatnonzero(labels[:80] == 1)
    first, second = rows[:6], rows[6:12]
    reasons[np.ix_(first, [3, 4])] = True
    reasons[np.ix_(second, [20, 21])] = True
    groups = group_flagged(reasons, labels, np.arange(80))
    assert sorted(tuple(sorted(g.units)) for g in groups) == [(3, 4), (20, 21)]
    by_units = {tuple(sorted(g.units)): set(g.rows.tolist()) for g in groups}
    assert set(first) <= by_units[(3, 4)] and set(second) <= by_units[(20, 21)]


def test_too_few_images_are_no_group_and_the_thresholds_are_settings() -> None:
    reasons, labels = background()
    six = np.flatnonzero(labels[:60] == 3)[:6]
    reasons[np.ix_(six, [9, 30])] = True
    found = group_flagged(reasons, labels, np.arange(60))
    assert [sorted(g.units) for g in found] == [[9, 30]] and set(six) <= set(found[0].rows.tolist())
    members = len(found[0].rows)  # the six, and any flagged image of the class holding unit 9 or 30 by chance
    assert group_flagged(reasons, labels, np.arange(60), min_group=members + 1) == []  # too few for that
    assert group_flagged(reasons, labels, np.arange(60), alpha=1e-12) == []  # not at a far stricter alpha
    reasons, labels = background()
    reasons[np.ix_(six[:2], [9, 30])] = True
    # Two images sharing two units of 32 is what chance gives among a class's flagged images: no group, even
    # where two would be enough.
    assert group_flagged(reasons, labels, np.arange(60), min_group=2) == []


# ----------------------------------------------------------------------------------------------- the region


def test_the_region_is_the_rectangle_at_half_the_peak() -> None:
    s = np.full((16, 16), 0.01)
    s[0:2, 0:3] = 1.0
    s[10, 10] = 0.4  # below half the peak: outside the region
    r = evidence_region(s)
    assert (r.top, r.left, r.bottom, r.right) == (0, 0, 2, 3)
    assert r.share == pytest.approx(6 / 256) and r.where == "in the top-left corner"
    wide = evidence_region(s, level=0.3)  # a lower level takes the second spot too
    assert (wide.top, wide.left, wide.bottom, wide.right) == (0, 0, 11, 11)


@pytest.mark.parametrize(
    ("box", "where"),
    [
        ((7, 7, 9, 9), "in the centre"),
        ((0, 7, 2, 9), "at the top edge"),
        ((14, 14, 16, 16), "in the bottom-right corner"),
        ((7, 0, 9, 2), "at the left edge"),
        ((0, 0, 16, 16), "across most of the image"),
    ],
)
def test_where_the_region_lies_in_words(box: tuple[int, int, int, int], where: str) -> None:
    assert Region(*box, 16, 16).where == where


def test_a_flat_map_gives_the_whole_image() -> None:
    r = evidence_region(np.zeros((4, 6)))
    assert (r.top, r.left, r.bottom, r.right, r.share) == (0, 0, 4, 6, 1.0)
    assert control_regions(r, 5) == []  # no room for a control of the same size


def test_every_image_weighs_the_same_in_the_aggregate() -> None:
    maps = np.zeros((2, 1, 4, 4))
    maps[0, 0, 0, 0] = 1.0  # a strong spot on the first image
    maps[1, 0, 3, 3] = 0.01  # a faint spot on the second
    agg = aggregated_saliency(maps)
    assert agg.sum() == pytest.approx(1.0)
    assert agg[0, 0] == pytest.approx(0.5) and agg[3, 3] == pytest.approx(0.5)
    assert aggregated_saliency(np.zeros((1, 2, 4, 4))) == pytest.approx(np.full((4, 4), 1 / 16))


def test_covering_fills_the_region_with_the_image_mean_outside_it() -> None:
    x = torch.zeros(2, 3, 4, 4)
    x[:, :, :2, :2] = 9.0  # the mark
    x[1] += torch.arange(3.0)[:, None, None]  # another level per channel
    out = covered(x, Region(0, 0, 2, 2, 4, 4))
    assert torch.equal(out[0, :, :2, :2], torch.zeros(3, 2, 2))
    assert torch.equal(out[1, :, :2, :2], torch.arange(3.0)[:, None, None].expand(3, 2, 2))
    assert torch.equal(out[:, :, 2:], x[:, :, 2:]) and torch.equal(out[:, :, :, 2:], x[:, :, :, 2:])


def test_the_controls_are_the_same_size_elsewhere_and_seeded() -> None:
    region = Region(0, 0, 3, 2, 16, 16)
    draws = control_regions(region, 20, seed=1)
    assert len(draws) == 20 and len({(d.top, d.left) for d in draws}) > 5
    assert all(
        (d.bottom - d.top, d.right - d.left) == (3, 2) and not (d.mask() & region.mask()).any() for d in draws
    )
    assert draws == control_regions(region, 20, seed=1) != control_regions(region, 20, seed=2)


def test_settings_out_of_range_and_inputs_that_are_not_images_are_refused() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3)).eval()
    x, y = torch.randn(30, 1, 8, 8), torch.arange(30) % 3
    t = deviation_scores(model, (x, y), "1", device="cpu")
    for bad in ({"top": 0}, {"alpha": 1.5}, {"min_group": 1}, {"level": 0.0}, {"draws": -1}):
        with pytest.raises(SpecError, match=f"{next(iter(bad))}="):
            shared_evidence(model, (x, y), t, **bad)
    flat = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    v = torch.randn(30, 4)
    with pytest.raises(SpecError, match=r"images \[C, H, W\]"):
        shared_evidence(flat, (v, y), deviation_scores(flat, (v, y), "1", device="cpu"))


# ------------------------------------------------------------------------------------- a planted shortcut


@pytest.fixture(scope="module")
def shortcut():
    """The benchmark's shortcut case: a mark in the top-left corner on a share of class 7's images, and on a few
    other classes' images relabelled 7 (the model learns the mark); its triage at the last hidden layer."""
    case = build_case("shortcut/mark-90-spill", seed=2, steps=200, review_limit=200)
    t = deviation_scores(case.model, case.review, "hidden", device="cpu")
    marked = case.kinds["cue"] | case.kinds["spill"]
    blank = np.zeros((1, 16, 16, 3), dtype=np.uint8)
    mark = planted_images.add_cue(blank, "mark")[0].any(-1)  # where the mark is drawn
    return case, t, marked, mark


def overlap(region: Region, mark: np.ndarray) -> float:
    """The share of the region that the mark covers."""
    return float((region.mask() & mark).sum() / region.mask().sum())


def test_a_planted_shortcut_is_named_shown_on_the_mark_and_covering_it_changes_predictions(shortcut) -> None:
    case, t, marked, mark = shortcut
    assert case.notes["follows_cue"] > 0.9  # the model did learn the mark
    groups = shared_evidence(case.model, case.review, t)
    assert groups and all(isinstance(g, SharedEvidence) for g in groups)
    g = groups[0]
    assert g.cls == case.planted_class and g.class_name == case.review.class_names[g.cls]
    assert marked[g.indices].mean() >= 0.8  # the group is the marked images
    assert g.saliency.shape == mark.shape and g.saliency.sum() == pytest.approx(1.0)
    # The region lands on the mark, far more than a rectangle of its size placed anywhere at random does.
    h, w = g.region.bottom - g.region.top, g.region.right - g.region.left
    anywhere = [
        overlap(Region(top, left, top + h, left + w, 16, 16), mark)
        for top in range(17 - h)
        for left in range(17 - w)
    ]
    assert overlap(g.region, mark) >= 0.5 and overlap(g.region, mark) > 10 * np.mean(anywhere)
    # Covering it changes predictions (the relabelled images go back to their own class); the control does not.
    assert len(g.control) == 5 and g.changed >= 3 and g.changed > g.control_changed + 2
    spilled = case.kinds["spill"][g.indices]
    assert g.changed <= len(g.indices) and g.changed >= spilled.sum() - 1
    assert "in the top-left corner" in g.sentence and f"covering it changes {g.changed} of" in g.sentence


def test_the_json_entry_holds_what_the_sentence_says(shortcut) -> None:
    case, t, _, _ = shortcut
    g = shared_evidence(case.model, case.review, t)[0]
    js = g.to_json()
    assert js["class"] == g.class_name and js["units"] == list(g.units) and js["changed"] == g.changed
    assert [i["index"] for i in js["instances"]] == g.indices.tolist()
    assert js["region"]["bbox"] == [g.region.top, g.region.left, g.region.bottom, g.region.right]
    assert (
        js["control_changed"] == pytest.approx(np.mean(js["control_draws"])) and js["sentence"] == g.sentence
    )
