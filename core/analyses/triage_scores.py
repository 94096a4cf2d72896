"""The triage scores of every instance, from its influence vector, its class's profile and the model's outputs.

:func:`score_rows` computes every score of :data:`~essence.core.analyses.triage.SCORES` at once (their
definitions are in :mod:`essence.core.analyses.triage`'s docstring): the rank correlations of an instance's
vector with its class's profile over the class's top units (:func:`spearman_rows`, :func:`kendall_rows`), the
cosine with the profile (:func:`cosine_rows`), the share of influence outside the top units
(:func:`mass_outside`), the output baselines, and the merged queue of doubt and reasoning
(:func:`fractional_rank` puts each on [0, 1]). Every function works on whole ``[N, ...]`` arrays, row by row.
"""

from __future__ import annotations

import numpy as np

__all__ = ["cosine_rows", "fractional_rank", "kendall_rows", "mass_outside", "score_rows", "spearman_rows"]


def score_rows(
    v: np.ndarray, y: np.ndarray, probs: np.ndarray, mean: np.ndarray, k: int, reasoning: np.ndarray
) -> dict[str, np.ndarray]:
    """Every score by name, float64 ``[N]`` each (higher = more suspect).

    Args:
        v: ``[N, U]`` each instance's influence vector. y: int64 ``[N]`` its label. probs: ``[N, K]`` the
            model's softmax. mean: ``[C, U]`` the class profiles. k: units per class the rank scores look at.
            reasoning: ``[N]`` the reasoning score (NaN where a class has no reference set).
    """
    n = len(y)
    profile = mean[y]  # [N, U] each instance's class profile
    top = np.argsort(-np.abs(np.nan_to_num(mean)), axis=1, kind="stable")[:, :k]  # [C, k]
    units = top[y]  # [N, k]
    vt = np.take_along_axis(v, units, axis=1)
    pt = np.take_along_axis(profile, units, axis=1)
    label_p = probs[np.arange(n), y]
    predicted = probs.argmax(1)
    entropy = -(probs * np.log(np.clip(probs, 1e-300, None))).sum(1)
    m = np.where(predicted != y, 1.0, -1.0)
    out = {
        "spearman": 1.0 - spearman_rows(vt, pt),
        "kendall": 1.0 - kendall_rows(vt, pt),
        "cosine": 1.0 - cosine_rows(v, profile),
        "mass": mass_outside(v, units),
        "doubt": 1.0 - probs.max(1),
        "self_confidence": 1.0 - label_p,
        "mistakenness": (m * np.exp(-entropy) + 1.0) / 2.0,
    }
    out["combined"] = (fractional_rank(out["cosine"]) + fractional_rank(1.0 - label_p)) / 2.0
    out["reasoning"] = reasoning
    # The second queue holds only instances predicted as labelled: the ones doubt cannot see. (A misclassified
    # or mislabelled instance departs from its class's reasons too, and would crowd that queue with what the
    # first already finds.) A class too small for a reference set has no reasoning score: it ranks last there.
    unseen = np.where(predicted == y, np.nan_to_num(reasoning, nan=-np.inf), -np.inf)
    out["merged"] = np.maximum(fractional_rank(out["self_confidence"]), fractional_rank(unseen))
    return out


def fractional_rank(x: np.ndarray) -> np.ndarray:
    """Ranks scaled to [0, 1] (ties share their average rank): 0 for the smallest, 1 for the largest."""
    from scipy.stats import rankdata

    if len(x) < 2:
        return np.zeros(len(x))
    ranks: np.ndarray = rankdata(x)  # SciPy ships no types: float64 [N]
    return (ranks - 1.0) / (len(x) - 1.0)


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman's ρ between each row of ``a`` and of ``b`` ``[N, k]`` (0 where a row is constant)."""
    from scipy.stats import rankdata

    return _pearson_rows(rankdata(a, axis=1), rankdata(b, axis=1))


def _pearson_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(1, keepdims=True)
    b = b - b.mean(1, keepdims=True)
    den = np.sqrt((a * a).sum(1) * (b * b).sum(1))
    # A constant row (e.g. a saturated softmax: all gradients zero) has no ordering: treat as uncorrelated.
    return np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1.0), 0.0)


def kendall_rows(a: np.ndarray, b: np.ndarray, chunk: int = 2048) -> np.ndarray:
    """Kendall's τ-b between each row of ``a`` and of ``b`` ``[N, k]`` (0 where a row is constant).

    τ_b = Σ_{i<j} s^a_ij s^b_ij / √(Σ (s^a_ij)² · Σ (s^b_ij)²), s_ij = sign(x_i − x_j): the same value as
    ``scipy.stats.kendalltau`` (variant b), vectorised over rows.
    """
    out = np.empty(len(a))
    iu = np.triu_indices(a.shape[1], k=1)
    for s in range(0, len(a), chunk):
        sa = np.sign(a[s : s + chunk, :, None] - a[s : s + chunk, None, :])[:, iu[0], iu[1]]
        sb = np.sign(b[s : s + chunk, :, None] - b[s : s + chunk, None, :])[:, iu[0], iu[1]]
        den = np.sqrt((sa * sa).sum(1) * (sb * sb).sum(1))
        out[s : s + chunk] = np.where(den > 0, (sa * sb).sum(1) / np.where(den > 0, den, 1.0), 0.0)
    return out


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row pair (0 where either row is zero)."""
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1.0), 0.0)


def mass_outside(v: np.ndarray, units: np.ndarray) -> np.ndarray:
    """Share of each row's absolute influence outside its class's top units (0 for a zero row)."""
    absv = np.abs(v)
    total = absv.sum(1)
    inside = np.take_along_axis(absv, units, axis=1).sum(1)
    return np.where(total > 0, 1.0 - inside / np.where(total > 0, total, 1.0), 0.0)
