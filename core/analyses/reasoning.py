"""The reasoning score: how far an instance's reasons depart from its class's.

An instance's *reasons* are its per-unit contributions c(x) ∈ R^U to its label's logit at the slice
(:mod:`essence.core.analyses.contributions`: each unit's value times its influence). Its class's reasons are the same
vectors over the class's *reference* instances: those of the class the model predicts correctly (how the
model reasons when it gets the class right), or — where fewer than ``MIN_REFERENCE`` are — all instances
labelled with the class (a class the model never predicts still has a spread).

**Distance.** A squared Mahalanobis distance to the reference set, d(x) = (c − μ)ᵀ Σ⁻¹ (c − μ), with a
covariance that can be inverted whatever the class's size: Σ = (1 − δ) S + δ ν I, S the sample covariance,
ν = tr(S)/U, δ the Oracle Approximating Shrinkage intensity (Chen et al. 2010; the same value as
``sklearn.covariance.OAS``), which goes to 1 for a class smaller than its number of units and to 0 for a large
one. Units that vary together count once; a unit that never moves within the class (a shortcut detector that
is silent on the class's ordinary images) still has variance δν, so its firing is measured, not divided by
zero. The covariance-aware distance is invariant to rescaling a unit when δ = 0; with shrinkage, units that
carry more of the score weigh more — which is the point of comparing contributions rather than activations.

**Leave-one-out.** A reference instance is compared with the other n − 1 (else it pulls the mean and the
covariance towards itself and hides). For fixed δ and ν this is exact and cheap: with e = c − μ and
A = (1 − δ) scatter/(n − 1) + δνI, the leave-one-out covariance is A − k e eᵀ with k = (1 − δ) n/(n − 1)², and
Sherman–Morrison gives d₋ᵢ = (n/(n − 1))² m/(1 − k m), m = eᵀA⁻¹e. Everything is computed from one thin SVD
of the centred reference set, so the cost is O(n U min(n, U)) per class and never forms a U×U matrix.

**Scale.** Distances are divided by the median leave-one-out distance of the class's reference instances, so
``reasoning`` reads "times the class's typical departure" and classes of different spread share one queue.

**Profiles for the misclassified** (paper Fig. 3, as a measurement): an instance predicted p ≠ y is also
measured against p's reference set, with its contributions to p's logit. ``reading`` names the outcome: it
follows its own class's reasons (``"own"``: the read-out is at fault), the predicted class's (``"predicted"``:
its own class's distinguishing evidence is missing — or the label is wrong), ``"both"`` or ``"neither"``
(confusion, an unusual image). "Follows" means within the 95th percentile of that class's own reference
instances' leave-one-out distances: the conventional 5 % level, not tuned — one in twenty of the class's own
instances lies beyond it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from essence.core.analyses.contributions import UnitContributions

MIN_REFERENCE = 3  # leave-one-out needs two others to have a spread
SUPPORT = 0.75  # share of a class kept as its reference: the MRCD's default (Boudt et al. 2020)
TYPICAL_QUANTILE = 0.95
WHY_UNITS = 5


@dataclass(frozen=True)
class Spread:
    """A class's reference contributions, summarised for distances (thin SVD of the centred set).

    Attributes:
        mean: float64 ``[U]`` μ.
        count: n, the reference instances.
        shrinkage: δ (OAS).
        target: ν = tr(S)/U.
        basis: float64 ``[k, U]`` right singular vectors of the centred set.
        singular: float64 ``[k]`` its singular values.
        left: float64 ``[n, k]`` its left singular vectors (rows follow the reference instances).
        diagonal: float64 ``[U]`` the shrunk covariance's diagonal (per-unit variance, for "why").
    """

    mean: np.ndarray
    count: int
    shrinkage: float
    target: float
    basis: np.ndarray = field(repr=False)
    singular: np.ndarray = field(repr=False)
    left: np.ndarray = field(repr=False)
    diagonal: np.ndarray = field(repr=False)

    @classmethod
    def of(cls, x: np.ndarray) -> Spread:
        """Summarise the reference vectors ``x`` ``[n, U]`` (n ≥ 2)."""
        n, units = x.shape
        mean = x.mean(0)
        left, singular, basis = np.linalg.svd(x - mean, full_matrices=False)
        eig = singular**2 / n  # eigenvalues of S (maximum likelihood, as sklearn's empirical covariance)
        target = float(eig.sum() / units)
        delta = oas_shrinkage(eig, n, units)
        return cls(
            mean=mean,
            count=n,
            shrinkage=delta,
            target=target,
            basis=basis,
            singular=singular,
            left=left,
            diagonal=(1.0 - delta) * (basis**2 * eig[:, None]).sum(0) + delta * target,
        )

    def _floor(self) -> float:
        # A class whose reference vectors are all identical has no spread: any departure is infinitely far.
        return max(self.shrinkage * self.target, np.finfo(np.float64).tiny)

    def distances(self, x: np.ndarray) -> np.ndarray:
        """d(x) for vectors ``[m, U]`` that are *not* in the reference set ``[m]``."""
        e = x - self.mean
        eig = self.singular**2 / self.count
        proj = e @ self.basis.T
        inside = (proj**2 / ((1.0 - self.shrinkage) * eig + self._floor())).sum(1)
        rest = np.clip((e * e).sum(1) - (proj**2).sum(1), 0.0, None)
        with np.errstate(over="ignore"):
            d: np.ndarray = inside + rest / self._floor()
        return d

    def leave_one_out(self) -> np.ndarray:
        """d₋ᵢ of each reference instance against the other n − 1 ``[n]`` (Sherman–Morrison, exact for fixed δ, ν)."""
        n, d = self.count, self.shrinkage
        s2 = self.singular**2
        m = (self.left**2 * s2 / ((1.0 - d) * s2 / (n - 1) + self._floor())).sum(1)
        k = (1.0 - d) * n / (n - 1) ** 2
        loo: np.ndarray = (n / (n - 1)) ** 2 * m / np.clip(1.0 - k * m, np.finfo(np.float64).eps, None)
        return loo


def concentrated(x: np.ndarray, support: float = SUPPORT, max_steps: int = 20) -> np.ndarray:
    """Row numbers of the ⌈support·n⌉ vectors of ``x`` ``[n, U]`` that are most alike (concentration steps).

    Starting from all rows, repeatedly keep the h rows nearest (shrunk Mahalanobis) to the estimate of the
    rows kept, until the set stops changing (each step cannot increase the kept rows' determinant: Rousseeuw
    and Van Driessen's C-step; with shrinkage, the MRCD of Boudt et al.). Deterministic: the start is every row.
    """
    n = len(x)
    h = min(n, max(MIN_REFERENCE, int(np.ceil(support * n))))
    kept = np.arange(n)
    for _ in range(max_steps):
        spread = Spread.of(x[kept])
        nearest = np.sort(np.argsort(spread.distances(x), kind="stable")[:h])
        if len(nearest) == len(kept) and np.array_equal(nearest, kept):
            break
        kept = nearest
    return kept


def oas_shrinkage(eig: np.ndarray, n: int, units: int) -> float:
    """OAS intensity δ from the eigenvalues of the sample covariance (as ``sklearn.covariance.OAS``)."""
    mu = eig.sum() / units
    alpha = (eig**2).sum() / units**2  # mean of S's squared entries: ‖S‖²_F / U²
    den = (n + 1) * (alpha - mu**2 / units)
    return 1.0 if den <= 0 else float(min((alpha + mu**2) / den, 1.0))


@dataclass(frozen=True)
class Reasoning:
    """How far each instance's reasons depart from its class's, and the misclassified read through profiles.

    Attributes:
        score: float64 ``[N]`` ``reasoning``: distance of the label contributions to the label's class, in
            units of the class's median leave-one-out distance (NaN where the class has too few instances).
        to_predicted: float64 ``[N]`` the same for the predicted class's contributions against the predicted
            class (equal to ``score`` where the prediction is the label).
        reading: ``[N]`` strings: ``""`` where correct, else ``"own"``, ``"predicted"``, ``"both"``,
            ``"neither"`` or ``"unknown"`` (a class without a reference set).
        typical: float64 ``[C]`` each class's 95th percentile of its reference instances' scores.
        shrinkage: float64 ``[C]`` each class's OAS intensity δ (NaN without a reference set).
        reference: int64 ``[C]`` reference instances per class.
        why_units: int64 ``[N, m]`` the units whose contributions depart most from the class's.
        why_z: float64 ``[N, m]`` their departures (c_j − μ_j) / σ_j, σ² the shrunk per-unit variance.
    """

    score: np.ndarray
    to_predicted: np.ndarray
    reading: np.ndarray
    typical: np.ndarray
    shrinkage: np.ndarray
    reference: np.ndarray
    why_units: np.ndarray = field(repr=False)
    why_z: np.ndarray = field(repr=False)


def reasoning_scores(contributions: UnitContributions, num_classes: int, why: int = WHY_UNITS) -> Reasoning:
    """Score every instance's reasons against its class's (see the module docstring).

    Args:
        contributions: the pass of :func:`~essence.core.analyses.contributions.unit_contributions`.
        num_classes: C, the model's outputs.
        why: units listed per instance.

    Returns:
        A :class:`Reasoning`.
    """
    cy = contributions.to_label.double().numpy()
    cp = contributions.to_predicted.double().numpy()
    y, p = contributions.labels, contributions.predicted
    n, units = cy.shape
    score = np.full(n, np.nan)
    to_pred = np.full(n, np.nan)
    typical = np.full(num_classes, np.nan)
    shrinkage = np.full(num_classes, np.nan)
    reference = np.zeros(num_classes, dtype=np.int64)
    m = min(why, units)
    why_units = np.zeros((n, m), dtype=np.int64)
    why_z = np.zeros((n, m))
    for c in range(num_classes):
        members = np.flatnonzero(y == c)
        candidates = members[p[members] == c]
        if len(candidates) < MIN_REFERENCE:
            candidates = members
        if len(candidates) < MIN_REFERENCE:
            continue
        ref = concentrated(cy[candidates])
        spread = Spread.of(cy[candidates[ref]])
        loo = spread.leave_one_out()
        scale = float(np.median(loo))
        scale = scale if scale > 0 else 1.0
        inside = np.zeros(len(y), dtype=bool)
        inside[candidates[ref]] = True
        others = members[~inside[members]]
        score[candidates[ref]] = loo / scale
        score[others] = spread.distances(cy[others]) / scale
        reference[c], shrinkage[c] = spread.count, spread.shrinkage
        typical[c] = float(np.quantile(score[candidates], TYPICAL_QUANTILE))
        predicted_here = np.flatnonzero((p == c) & (y != c))
        to_pred[predicted_here] = spread.distances(cp[predicted_here]) / scale
        # "why": departures from the mean of the *other* reference instances (leave-one-out for members)
        dep = cy[members] - spread.mean
        dep[inside[members]] *= spread.count / (spread.count - 1)
        z = dep / np.sqrt(np.maximum(spread.diagonal, np.finfo(np.float64).tiny))
        top = np.argsort(-np.abs(z), axis=1, kind="stable")[:, :m]
        why_units[members], why_z[members] = top, np.take_along_axis(z, top, axis=1)
    correct = y == p
    to_pred[correct] = score[correct]
    return Reasoning(
        score=score,
        to_predicted=to_pred,
        reading=_readings(score, to_pred, typical, y, p),
        typical=typical,
        shrinkage=shrinkage,
        reference=reference,
        why_units=why_units,
        why_z=why_z,
    )


def _readings(
    score: np.ndarray, to_pred: np.ndarray, typical: np.ndarray, y: np.ndarray, p: np.ndarray
) -> np.ndarray:
    own = score <= typical[y]
    other = to_pred <= typical[p]
    known = np.isfinite(score) & np.isfinite(to_pred) & np.isfinite(typical[y]) & np.isfinite(typical[p])
    out = np.where(own & other, "both", np.where(own, "own", np.where(other, "predicted", "neither")))
    out = np.where(known, out, "unknown")
    return np.where(y == p, "", out).astype(object)
