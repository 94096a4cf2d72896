"""Which instances a question is about, and which running sum each of them goes into.

The engine's bookkeeping between a distribution of interest and :class:`~essence.core.engine.sums.InfluenceSums`: the
instances a distribution is restricted to, the points around each (paths, noise), and each instance's group (its
class, its own row, or one group for the dataset) — sized to what is asked, never to the whole dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from essence.core.base.errors import ClassNotFoundError, EmptyClassError, SpecError
from essence.core.engine.distributions import (
    ClassConditional,
    Distribution,
    GaussianNoise,
    Instance,
    LinearPath,
)
from essence.core.engine.sums import InfluenceSums


def instance_slots(
    subset: np.ndarray | None, n_data: int
) -> tuple[int, Callable[[torch.Tensor], torch.Tensor], torch.Tensor]:
    """Running-sum rows for per-instance grouping: one per instance asked about, not one per dataset instance.

    Returns:
        ``(rows, slot, positions)``: the number of rows; a map from dataset positions ``[B]`` to rows ``[B]``;
        int64 ``[rows]`` the dataset position of each row.
    """
    if subset is None:
        return n_data, lambda idx: idx, torch.arange(n_data)
    positions = torch.from_numpy(np.unique(np.asarray(subset, dtype=np.int64)))

    def slot(idx: torch.Tensor) -> torch.Tensor:
        return torch.searchsorted(positions.to(idx.device), idx.long())

    return len(positions), slot, positions


def within(subset: np.ndarray | None, indices: Sequence[int] | np.ndarray, n: int) -> np.ndarray:
    """The positions of ``subset`` (all when ``None``) that are among ``indices``, in ``indices``' order."""
    chosen = np.asarray(indices, dtype=np.int64).reshape(-1)
    if chosen.size and (chosen.min() < 0 or chosen.max() >= n):
        raise SpecError(
            f"instance indices must lie in 0..{n - 1}; got {int(chosen.min())}..{int(chosen.max())}"
        )
    return chosen if subset is None else chosen[np.isin(chosen, subset)]


def neighbourhood_points(distribution: Distribution) -> list[tuple[float, float]]:
    """The (α, weight) points around each instance; one point of weight 1 without a neighbourhood."""
    if isinstance(distribution, LinearPath | GaussianNoise):
        return distribution.points()
    return [(1.0, 1.0)]


def restrict(distribution: Distribution, labels: np.ndarray, names: list[str] | None) -> np.ndarray | None:
    """Instance indices a distribution is restricted to (``None``: all)."""
    if isinstance(distribution, Instance) and distribution.index is not None:
        if not 0 <= distribution.index < len(labels):
            raise SpecError(f"instance index {distribution.index} is out of range 0..{len(labels) - 1}")
        return np.array([distribution.index])
    if isinstance(distribution, ClassConditional) and distribution.cls is not None:
        idx = np.flatnonzero(labels == distribution.cls)
        if idx.size == 0:
            label = names[distribution.cls] if names and distribution.cls < len(names) else distribution.cls
            raise EmptyClassError(
                f"class {label!r} has no instances in the data: choose another class or add data"
            )
        return idx
    return None


def new_sums(
    group_by: str, num_outputs: int, units: int, n_data: int, num_groups: int | None, dev: torch.device
) -> InfluenceSums:
    """Empty sums: one group per class (of the model's outputs unless given), per instance, or one."""
    if group_by == "class":
        return InfluenceSums.zeros(num_groups or num_outputs, units, dev)
    if group_by == "instance":
        return InfluenceSums.zeros(n_data, units, dev)
    return InfluenceSums.zeros(1, units, dev)


def group_ids(
    group_by: str, y: torch.Tensor, idx: torch.Tensor, dev: torch.device, groups: int
) -> torch.Tensor:
    """Each instance's group ``[B]``: its label, its dataset position, or 0."""
    if group_by == "class":
        if y.numel() and int(y.max()) >= groups:
            raise ClassNotFoundError(
                f"label {int(y.max())} has no class among the model's {groups} outputs: "
                "the data's classes must match the model's"
            )
        return y.long()
    if group_by == "instance":
        return idx.to(dev).long()
    return torch.zeros_like(y, dtype=torch.long)
