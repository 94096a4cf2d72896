"""A shortcut named and shown: flagged images that share why-flagged units, where that evidence lies, and
whether covering it changes the model's mind (docs/analyses.md, "Shortcuts").

Triage gives each instance its *why* units (:mod:`~essence.core.analyses.reasoning`), each with its departure z
in its class's standard deviations. A shortcut (a mark, a frame, a scanner's label) shows as units that fire on
some images of a class and not on its ordinary ones: the same units recur among those images' reasons.

**Reasons.** Unit u is a reason of instance i when it is one of i's why units with z ≥ ``min_z`` (2: two
standard deviations *above* the class's mean): a shortcut is evidence that is there; missing evidence cannot be
covered up. **Recurrence.** Among the ``top`` instances at the head of the queue (50: the app's first page of
it), take class c's flagged instances that have reasons, i holding R_i. Outside the head, unit u takes a share
q_u of all reasons (add-one smoothed over the slice's U units). Were the flagged reasons drawn like everyone
else's, i would hold u with probability p_i = min(1, R_i q_u) (exactly R_i/U when all units are equally common)
and the count k holding u would follow the Poisson-binomial law of the p_i. Unit u *recurs* in c when
U·C'·P(K ≥ k) ≤ ``alpha`` (0.05: Bonferroni over every unit of the C' classes looked at) and k ≥ ``min_group``
(3). **Groups.** Recurring units of a class that fire on the same images detect one thing: two are linked when
at least half the holders of the rarer hold the other, each connected set is a group, and each flagged instance
joins the group whose units it holds most of; groups under ``min_group`` members are dropped.

**Where.** Each shared unit's input gradient on each member becomes a map in [0, 1]
(:func:`~essence.core.analyses.interpret.saliency_map`); a member's unit maps are averaged and normalised to sum
1 (every image weighs the same), then averaged over the group. The *region* is the smallest rectangle holding
every pixel at or above ``level`` (½) of the peak: the full width at half maximum, which a gradient's diffuse
background cannot inflate as it would a share of the total mass. **The cover test.** The region is replaced in
each member (in the model's input space) by the image's per-channel mean outside it, and the predictions that
change are counted; the control covers a rectangle of the same size at random places that do not overlap the
region (``draws``, seeded; the mean is reported): covering anything that large changes some predictions by
itself, and only the difference speaks for the region.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.sparse.csgraph import connected_components
from torch import nn

from essence.core.analyses.interpret import heatmap, overlay, saliency_map, unit_input_gradients
from essence.core.analyses.triage import Triage
from essence.core.base.errors import SpecError
from essence.core.base.model_state import inference_state
from essence.core.engine.slices import Granularity, capture, unit_shape
from essence.core.inputs.data import as_batches

FLAGGED = 50  # the head of the queue searched: the first page of the app's review queue
ALPHA = 0.05  # family-wise error over every unit of every class looked at (Bonferroni)
MIN_Z = 2.0  # a reason: a unit's contribution two of the class's standard deviations above its mean
MIN_GROUP = 3  # fewer images than this are an anecdote, not a shared reason
LEVEL = 0.5  # the region: pixels at or above half the peak of the aggregated saliency
DRAWS = 5  # random placements of the control region


@dataclass(frozen=True)
class FlaggedGroup:
    """Flagged instances of class ``cls`` sharing recurring ``units`` (held by most members first): int64
    ``rows`` ``[n]`` of the triage, in queue order; each unit's tail probability times the tests (at most 1)."""

    cls: int
    units: tuple[int, ...]
    rows: np.ndarray
    p_values: tuple[float, ...]


@dataclass(frozen=True)
class Region:
    """A rectangle of an ``height × width`` image: rows ``top:bottom``, columns ``left:right`` (half-open)."""

    top: int
    left: int
    bottom: int
    right: int
    height: int
    width: int

    @property
    def share(self) -> float:
        """The rectangle's share of the image's area."""
        return (self.bottom - self.top) * (self.right - self.left) / (self.height * self.width)

    @property
    def where(self) -> str:
        """Where the rectangle lies, in words (``"in the top-left corner"``), by the third its centre is in."""
        if (self.bottom - self.top) > 2 * self.height / 3 and (self.right - self.left) > 2 * self.width / 3:
            return "across most of the image"
        row = _third((self.top + self.bottom) / 2 / self.height, ("top", "middle", "bottom"))
        col = _third((self.left + self.right) / 2 / self.width, ("left", "centre", "right"))
        if row == "middle":
            return "in the centre" if col == "centre" else f"at the {col} edge"
        return f"at the {row} edge" if col == "centre" else f"in the {row}-{col} corner"

    def mask(self) -> np.ndarray:
        """bool ``[height, width]``, True inside the rectangle."""
        rows, cols = np.indices((self.height, self.width))
        return (rows >= self.top) & (rows < self.bottom) & (cols >= self.left) & (cols < self.right)


def _third(x: float, words: tuple[str, str, str]) -> str:
    return words[0] if x < 1 / 3 else words[2] if x > 2 / 3 else words[1]


@dataclass(frozen=True)
class SharedEvidence:
    """Flagged images of one class that share why-flagged units, where that evidence lies, and the cover test.

    Attributes:
        cls: the class index (the members' label); class_name: its name.
        units: the shared units, held by most members first; p_values: their corrected tail probabilities.
        indices: int64 ``[n]`` the members' dataset positions, in queue order.
        labels, predicted: int64 ``[n]`` their labels and the model's predictions.
        saliency: float64 ``[H, W]`` the shared units' aggregated input-gradient saliency (sums to 1).
        region: the rectangle the saliency picks out.
        changed: members whose prediction changes when the region is covered.
        control: predictions changed by each random rectangle of the same size (empty: no room for one).

    Examples:
        >>> import numpy as np
        >>> e = SharedEvidence(3, "three", (7, 1), (1e-4, 0.01), np.arange(4), np.full(4, 3), np.full(4, 3),
        ...                    np.full((8, 8), 1 / 64), Region(0, 0, 2, 2, 8, 8), 3, (0, 1))
        >>> print(e.sentence)
        4 flagged images of class 'three' share units 7, 1; their evidence lies in the top-left corner (6 % of
        the image); covering it changes 3 of 4 predictions (a random region of the same size: 0.5 of 4).
    """

    cls: int
    class_name: str
    units: tuple[int, ...]
    p_values: tuple[float, ...]
    indices: np.ndarray = field(repr=False)
    labels: np.ndarray = field(repr=False)
    predicted: np.ndarray = field(repr=False)
    saliency: np.ndarray = field(repr=False)
    region: Region
    changed: int
    control: tuple[int, ...]

    @property
    def control_changed(self) -> float:
        """The mean number of predictions the random rectangles change (NaN without one)."""
        return float(np.mean(self.control)) if self.control else float("nan")

    @property
    def sentence(self) -> str:
        """The finding in one sentence, with the count and its control."""
        n, share, mean = len(self.indices), 100 * self.region.share, self.control_changed
        control = f" (a random region of the same size: {mean:.2g} of {n})" if self.control else ""
        return (
            f"{n} flagged images of class {self.class_name!r} share unit{'s' * (len(self.units) > 1)} "
            f"{', '.join(map(str, self.units))}; "
            f"their evidence lies {self.region.where} ({share:.{0 if share >= 1 else 1}f} % of the image); "
            f"covering it changes {self.changed} of {n} predictions{control}."
        )

    def to_json(self) -> dict[str, Any]:
        """The group as an entry of the ``shortcuts`` list of ``essence triage --json``."""
        r = self.region
        return {
            "class": self.class_name,
            "class_index": self.cls,
            "units": list(self.units),
            "p_values": list(self.p_values),
            "instances": [
                {"index": int(i), "label": int(y), "predicted": int(p)}
                for i, y, p in zip(self.indices, self.labels, self.predicted, strict=True)
            ],
            "region": {"bbox": [r.top, r.left, r.bottom, r.right], "share": r.share, "where": r.where},
            "changed": self.changed,
            "control_changed": self.control_changed,
            "control_draws": list(self.control),
            "sentence": self.sentence,
        }


def shared_evidence(
    model: nn.Module,
    data: object,
    triage: Triage,
    *,
    granularity: Granularity = "channel",
    top: int = FLAGGED,
    alpha: float = ALPHA,
    min_z: float = MIN_Z,
    min_group: int = MIN_GROUP,
    level: float = LEVEL,
    draws: int = DRAWS,
    seed: int = 0,
    batch_size: int = 64,
) -> list[SharedEvidence]:
    """Find flagged images that share why-flagged units, show where that evidence lies, and cover it (the rule
    and every setting are argued in the module docstring).

    Args:
        model: the classifier the triage ranked for (run where its parameters are).
        data: the same data, images ``[C, H, W]`` (an :class:`~essence.core.inputs.data.ImageData`, ``(x, y)``).
        triage: the :class:`~essence.core.analyses.triage.Triage` of ``model`` on ``data``; its slice is used.
        granularity: the triage's granularity (what its why units are).
        top, alpha, min_z, min_group: the head searched; the family-wise error of the recurrence tests; the
            departure a reason needs; the fewest instances a unit recurs in and a group holds.
        level: the region holds every pixel at or above this share of the saliency's peak.
        draws, seed, batch_size: the control's random placements and their seed; images per forward pass.

    Returns:
        One :class:`SharedEvidence` per group, largest first (empty when no reason recurs).

    Raises:
        SpecError: a setting out of range, or inputs that are not images ``[C, H, W]``.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from essence.core import deviation_scores, shared_evidence
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(144, 3)).eval()
        >>> x, y = torch.randn(30, 1, 8, 8), torch.arange(30) % 3
        >>> t = deviation_scores(model, (x, y), "1", device="cpu")
        >>> shared_evidence(model, (x, y), t, top=10)  # noise images: no reason recurs
        []
    """
    _check_settings(top, alpha, min_z, min_group, level, draws)
    if not len(triage):
        return []
    units = _unit_count(model, data, triage, granularity)
    reasons = reason_matrix(triage.why_units, triage.why_z, units, min_z)
    groups = group_flagged(reasons, triage.labels, triage.ranking[:top], alpha=alpha, min_group=min_group)
    return [_evidence(model, data, triage, g, granularity, (level, draws, seed, batch_size)) for g in groups]


def _check_settings(top: int, alpha: float, min_z: float, min_group: int, level: float, draws: int) -> None:
    """Refuse settings that cannot mean anything, naming the parameter and its range."""
    checks = (
        (top >= 1, f"top={top}: search at least the first instance of the queue (top ≥ 1)"),
        (0 < alpha < 1, f"alpha={alpha}: the family-wise error is a probability in (0, 1), e.g. 0.05"),
        (bool(np.isfinite(min_z)), f"min_z={min_z}: give a finite departure, e.g. 2.0"),
        (min_group >= 2, f"min_group={min_group}: a shared reason needs at least 2 images"),
        (0 < level <= 1, f"level={level}: give a share of the saliency's peak in (0, 1], e.g. 0.5"),
        (draws >= 0, f"draws={draws}: give 0 or more random placements of the control"),
    )
    for ok, message in checks:
        if not ok:
            raise SpecError(message)


def _unit_count(model: nn.Module, data: object, triage: Triage, granularity: Granularity) -> int:
    """U, the slice's units at ``granularity`` (one forward of one image, which must be an image)."""
    x = _images(data, triage.indices[:1])
    with inference_state(model), torch.no_grad(), capture(model, triage.layer) as cap:
        model(x.to(_device(model)))
    if cap.leaf is None:
        raise SpecError(f"the forward pass never reaches layer {triage.layer!r}: pick one the model uses")
    return int(np.prod(unit_shape(tuple(cap.leaf.shape[1:]), granularity)))


def _device(model: nn.Module) -> torch.device:
    return next(iter(model.parameters()), torch.empty(0)).device


def _images(data: object, indices: np.ndarray) -> torch.Tensor:
    """The preprocessed inputs of ``indices`` ``[n, C, H, W]`` (refused when they are not images)."""
    x = next(as_batches(data, max(1, len(indices)), indices)[0])[0].float()
    if x.ndim != 4:
        raise SpecError(f"shared evidence lies on images [C, H, W], not on inputs {tuple(x.shape[1:])}")
    return x


def reason_matrix(why_units: np.ndarray, why_z: np.ndarray, units: int, min_z: float = MIN_Z) -> np.ndarray:
    """bool ``[N, U]``: unit u is a reason of row i (one of its why units, with departure z ≥ ``min_z``).

    Raises:
        SpecError: a why unit at or beyond ``units`` (the triage was of another granularity).
    """
    if why_units.size and int(why_units.max()) >= units:
        raise SpecError(
            f"why unit {why_units.max()} is beyond the slice's {units}: give the triage's granularity"
        )
    out = np.zeros((len(why_units), units), dtype=bool)
    rows, cols = np.nonzero(why_z >= min_z)
    out[rows, why_units[rows, cols]] = True
    return out


def group_flagged(
    reasons: np.ndarray,
    labels: np.ndarray,
    head: np.ndarray,
    *,
    alpha: float = ALPHA,
    min_group: int = MIN_GROUP,
) -> list[FlaggedGroup]:
    """The flagged instances that share recurring reasons, grouped (the rule: the module docstring).

    Args:
        reasons, labels: bool ``[N, U]`` each row's reasons (:func:`reason_matrix`); int ``[N]`` its class.
        head: int ``[n]`` the flagged rows (the head of the queue), in queue order.
        alpha, min_group: family-wise error; the fewest holders of a recurring unit, and members of a group.

    Returns:
        The groups, largest first (ties: the smaller class first).
    """
    background = np.ones(len(reasons), dtype=bool)
    background[head] = False
    rate = (reasons[background].sum(0) + 1.0) / (reasons[background].sum() + reasons.shape[1])
    flagged = head[reasons[head].any(1)]
    tests = reasons.shape[1] * max(1, len(np.unique(labels[flagged])))
    groups: list[FlaggedGroup] = []
    for c in np.unique(labels[flagged]):
        members = flagged[labels[flagged] == c]
        held, each = reasons[members].sum(0), reasons[members].sum(1)
        tails = [tail(np.minimum(1.0, each * q), int(k)) for q, k in zip(rate, held, strict=True)]
        p = np.minimum(1.0, tests * np.array(tails))
        recurring = np.flatnonzero((p <= alpha) & (held >= min_group))
        recurring = recurring[np.argsort(p[recurring], kind="stable")]
        groups += _class_groups(int(c), members, reasons, recurring, p)
    return sorted((g for g in groups if len(g.rows) >= min_group), key=lambda g: (-len(g.rows), g.cls))


def tail(p: np.ndarray, k: int) -> float:
    """P(K ≥ k) for K a sum of independent Bernoulli(p_i) (the Poisson-binomial law), computed exactly.

    Examples:
        >>> round(tail(np.full(3, 0.5), 2), 3)  # two or more heads in three fair tosses
        0.5
    """
    dist = np.zeros(len(p) + 1)
    dist[0] = 1.0
    for pi in p:
        dist[1:] = dist[1:] * (1 - pi) + dist[:-1] * pi
        dist[0] *= 1 - pi
    return float(dist[max(k, 0) :].sum())


def _class_groups(
    cls: int, members: np.ndarray, reasons: np.ndarray, recurring: np.ndarray, p: np.ndarray
) -> list[FlaggedGroup]:
    """One class's recurring units (most significant first) split into linked sets, its flagged instances
    shared among them: each joins the set whose units it holds most of (ties: the earlier set)."""
    if not len(recurring):
        return []
    holders = reasons[np.ix_(members, recurring)].astype(np.int64)  # [m, r]
    together = holders.T @ holders  # instances holding both units of each pair
    counts = np.diag(together)
    _, label = connected_components(2 * together >= np.minimum.outer(counts, counts), directed=False)
    order = np.unique(label, return_index=True)[1]  # sets in the order of their most significant unit
    sets = [np.flatnonzero(label == label[i]) for i in np.sort(order)]
    overlap = np.stack([holders[:, s].sum(1) for s in sets], axis=1)  # [m, sets]
    choice = np.where(overlap.max(1) > 0, overlap.argmax(1), -1)
    out = []
    for g, s in enumerate(sets):
        rows = members[choice == g]
        units = recurring[s][np.argsort(-reasons[np.ix_(rows, recurring[s])].sum(0), kind="stable")]
        out.append(FlaggedGroup(cls, tuple(int(u) for u in units), rows, tuple(float(p[u]) for u in units)))
    return out


def aggregated_saliency(per_unit: np.ndarray) -> np.ndarray:
    """Maps ``[n, k, H, W]`` (member × unit, each in [0, 1]) → one map ``[H, W]`` summing to 1: each member's
    unit maps averaged and normalised to sum 1 (all-zero: uniform), then averaged over the members."""
    per_image = per_unit.astype(np.float64).mean(1)
    total = per_image.sum((1, 2), keepdims=True)
    flat = np.full_like(per_image, 1.0 / per_image[0].size)
    out: np.ndarray = np.where(total > 0, per_image / np.maximum(total, 1e-300), flat).mean(0)
    return out


def evidence_region(saliency: np.ndarray, level: float = LEVEL) -> Region:
    """The smallest rectangle holding every pixel of ``saliency`` ``[H, W]`` at or above ``level`` × its peak.

    Examples:
        >>> s = np.zeros((8, 8)); s[1:3, 5:7] = 1.0; s[4, 4] = 0.2
        >>> r = evidence_region(s)
        >>> (r.top, r.left, r.bottom, r.right), r.where
        ((1, 5, 3, 7), 'in the top-right corner')
    """
    if saliency.ndim != 2 or not saliency.size:
        raise SpecError(f"a saliency map is [H, W], not of shape {saliency.shape}")
    peak = float(np.nanmax(saliency))
    rows, cols = np.nonzero(saliency >= level * peak if peak > 0 else np.ones_like(saliency, dtype=bool))
    h, w = saliency.shape
    return Region(int(rows.min()), int(cols.min()), int(rows.max()) + 1, int(cols.max()) + 1, h, w)


def covered(x: torch.Tensor, region: Region) -> torch.Tensor:
    """``x`` ``[n, C, H, W]`` with the region replaced by each image's per-channel mean outside it."""
    inside = torch.from_numpy(region.mask())
    fill = x.mean((2, 3)) if bool(inside.all()) else x[:, :, ~inside].mean(2)
    out = x.clone()
    out[:, :, region.top : region.bottom, region.left : region.right] = fill[:, :, None, None]
    return out


def control_regions(region: Region, draws: int, seed: int = 0) -> list[Region]:
    """``draws`` rectangles of the region's size placed uniformly at random where they do not overlap it
    (where every placement overlaps it: anywhere else; where there is no other placement: none)."""
    h, w = region.bottom - region.top, region.right - region.left
    tops, lefts = (a.ravel() for a in np.indices((region.height - h + 1, region.width - w + 1)))
    apart = ~(
        (tops < region.bottom) & (tops + h > region.top) & (lefts < region.right) & (lefts + w > region.left)
    )
    allowed = np.flatnonzero(apart if apart.any() else (tops != region.top) | (lefts != region.left))
    if not len(allowed) or draws == 0:
        return []
    picks = np.random.default_rng(seed).choice(allowed, size=draws)
    return [Region(tops[i], lefts[i], tops[i] + h, lefts[i] + w, region.height, region.width) for i in picks]


def _evidence(
    model: nn.Module,
    data: object,
    triage: Triage,
    group: FlaggedGroup,
    granularity: Granularity,
    settings: tuple[float, int, int, int],
) -> SharedEvidence:
    """One group's saliency, region and cover test (``settings``: level, draws, seed, batch size)."""
    level, draws, seed, batch_size = settings
    x = _images(data, triage.indices[group.rows])
    grads = (unit_input_gradients(model, xi, triage.layer, group.units, granularity=granularity) for xi in x)
    saliency = aggregated_saliency(np.stack([saliency_map(g) for g in grads]))
    region = evidence_region(saliency, level)
    controls = control_regions(region, draws, seed)
    before, *after = (
        _predictions(model, v, batch_size)
        for v in [x, covered(x, region), *(covered(x, r) for r in controls)]
    )
    rows = group.rows
    return SharedEvidence(
        group.cls, triage.class_names[group.cls], group.units, group.p_values, triage.indices[rows],
        triage.labels[rows], before, saliency, region, int((after[0] != before).sum()),
        tuple(int((a != before).sum()) for a in after[1:]),
    )  # fmt: skip


def _predictions(model: nn.Module, x: torch.Tensor, batch_size: int) -> np.ndarray:
    """The model's predicted class of each image of ``x`` ``[n, C, H, W]``."""
    with inference_state(model), torch.no_grad():
        out = [model(b.to(_device(model))).argmax(1).cpu() for b in torch.split(x, max(1, batch_size))]
    return torch.cat(out).numpy().astype(np.int64)


def evidence_image(evidence: SharedEvidence, image: np.ndarray) -> np.ndarray:
    """A member's image (uint8 ``[H, W, 3]``, as the model sees it) with the aggregated saliency scaled onto it
    and the region outlined just outside, beside the saliency as a heat map: uint8 ``[H, 2W + 1, 3]``."""
    scaled = (evidence.saliency / max(float(evidence.saliency.max()), 1e-300)).astype(np.float32)
    shown = overlay(image, scaled)
    r = evidence.region
    grown = Region(max(r.top - 1, 0), max(r.left - 1, 0), r.bottom + 1, r.right + 1, r.height, r.width)
    shown[grown.mask() & ~r.mask()] = (0, 255, 255)  # around the region: its own pixels stay visible
    return np.concatenate([shown, np.full((len(image), 1, 3), 255, np.uint8), heatmap(scaled)], axis=1)
