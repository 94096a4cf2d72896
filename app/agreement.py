"""Agreement between reviewers: Cohen's κ on the images two reviewers both judged, and where they differ.

Plain Python (no Streamlit), so the Triage page and the tests share it. Each reviewer's own latest verdict per
image counts (``Store.reviewers_latest``): a change of mind replaces that reviewer's earlier verdict only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import combinations

from sklearn.metrics import cohen_kappa_score

# What κ means, in plain words first (shown before the number).
MEANING = "how often the two reviewers agree beyond chance"


@dataclass(frozen=True)
class Disagreement:
    """One image two reviewers judged differently (their latest verdicts, with notes)."""

    instance_id: int
    first: str  # the first reviewer's verdict
    second: str  # the second reviewer's verdict
    first_note: str = ""
    second_note: str = ""


@dataclass(frozen=True)
class Agreement:
    """Two reviewers' agreement on the images both judged.

    Attributes:
        first, second: the reviewers' names (sorted).
        n: images both judged.
        agreed: of those, the images with the same verdict.
        kappa: Cohen's κ (1: always agree; 0: no more than chance; below 0: less), ``None`` where undefined (every
            verdict of both the same one: chance alone would agree always).
        disagreements: the images they judged differently, in dataset order.
    """

    first: str
    second: str
    n: int
    agreed: int
    kappa: float | None
    disagreements: list[Disagreement] = field(default_factory=list)


def agreements(by_reviewer: dict[str, dict[int, object]]) -> list[Agreement]:
    """Every pair of reviewers who judged at least one image in common (pairs in name order).

    Args:
        by_reviewer: ``{reviewer: {instance id: verdict}}``; a verdict is a string or anything with
            ``.verdict`` (and ``.note``), e.g. the store's ``Verdict``.

    Returns:
        One :class:`Agreement` per pair sharing an image; empty with fewer than two reviewers.
    """
    out = []
    for a, b in combinations(sorted(by_reviewer), 2):
        shared = sorted(set(by_reviewer[a]) & set(by_reviewer[b]))
        if not shared:
            continue
        first = [_verdict(by_reviewer[a][i]) for i in shared]
        second = [_verdict(by_reviewer[b][i]) for i in shared]
        out.append(
            Agreement(
                first=a,
                second=b,
                n=len(shared),
                agreed=sum(x == y for x, y in zip(first, second, strict=True)),
                kappa=kappa(first, second),
                disagreements=[
                    Disagreement(i, x, y, _note(by_reviewer[a][i]), _note(by_reviewer[b][i]))
                    for i, x, y in zip(shared, first, second, strict=True)
                    if x != y
                ],
            )
        )
    return out


def kappa(first: list[str], second: list[str]) -> float | None:
    """Cohen's κ of two reviewers' verdicts on the same images, ``None`` where it is undefined (no image, or one
    verdict throughout for both: the agreement expected by chance is then 1, and κ is 0/0)."""
    if not first or len(set(first) | set(second)) == 1:
        return None
    value = float(cohen_kappa_score(first, second))
    return value if math.isfinite(value) else None


def _verdict(v: object) -> str:
    return v if isinstance(v, str) else str(v.verdict)  # type: ignore[attr-defined]


def _note(v: object) -> str:
    return "" if isinstance(v, str) else str(getattr(v, "note", "") or "")
