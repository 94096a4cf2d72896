"""Running per-group sums of influence vectors: streamed, mergeable across shards, finalised into profiles.

Each instance adds its vector v, v² and 1 to its group's float64 sums. Sums of disjoint shards add up to the
sums of the whole data, so a profile can be computed in pieces (batches, processes, machines) and merged; the
mean and its standard error come out of the three sums alone.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from essence.core.base.errors import SpecError


@dataclass
class InfluenceSums:
    """Running per-group sums of influence vectors: what is streamed, merged across shards and stored.

    Mutable on purpose: :meth:`add` accumulates batch after batch in place (no copy of ``[G, U]`` per batch).

    Attributes:
        sum: float64 ``[G, U]`` Σ of instance vectors per group.
        sumsq: float64 ``[G, U]`` Σ of their squares.
        count: int64 ``[G]`` instances per group.

    Examples:
        >>> import torch
        >>> first, second = InfluenceSums.zeros(2, 3), InfluenceSums.zeros(2, 3)  # G=2 groups of U=3 units
        >>> first.add(torch.ones(2, 3), torch.tensor([0, 1]))  # one instance in each group
        >>> second.add(torch.full((2, 3), 3.0), torch.tensor([0, 0]))  # another shard: two in group 0
        >>> merged = first.merge(second)
        >>> merged.count.tolist(), merged.mean()[0].tolist()  # group 0: (1 + 3 + 3) / 3
        ([3, 1], [2.3333333333333335, 2.3333333333333335, 2.3333333333333335])
    """

    sum: torch.Tensor
    sumsq: torch.Tensor
    count: torch.Tensor

    @classmethod
    def zeros(cls, groups: int, units: int, device: torch.device | str = "cpu") -> InfluenceSums:
        """Empty sums for ``groups`` groups of ``units`` units each.

        Args:
            groups: G, the number of groups (classes, instances, or 1).
            units: U, the number of units per vector.
            device: where the sums live (the device the vectors are computed on).

        Returns:
            Zero sums ``[G, U]`` and counts ``[G]``.
        """
        z = torch.zeros(groups, units, dtype=torch.float64, device=device)
        return cls(z, z.clone(), torch.zeros(groups, dtype=torch.int64, device=device))

    def add(self, vectors: torch.Tensor, groups: torch.Tensor) -> None:
        """Add instance vectors to their groups, in place.

        Args:
            vectors: ``[B, U]`` one vector per instance (any float dtype; summed in float64).
            groups: int64 ``[B]`` each instance's group id in ``0..G-1``.
        """
        v = vectors.to(torch.float64)
        self.sum.index_add_(0, groups, v)
        self.sumsq.index_add_(0, groups, v * v)
        self.count.index_add_(0, groups, torch.ones_like(groups, dtype=torch.int64))

    def merge(self, other: InfluenceSums) -> InfluenceSums:
        """The sums of two disjoint shards (order does not matter).

        Args:
            other: sums of the same shape, possibly on another device.

        Returns:
            New sums on this one's device.

        Raises:
            SpecError: the two shapes differ (different layer, granularity or number of groups).
        """
        if self.sum.shape != other.sum.shape:
            raise SpecError(
                f"cannot merge sums of shapes {tuple(self.sum.shape)} and {tuple(other.sum.shape)}"
            )
        return InfluenceSums(
            self.sum + other.sum.to(self.sum.device),
            self.sumsq + other.sumsq.to(self.sum.device),
            self.count + other.count.to(self.sum.device),
        )

    def mean(self) -> torch.Tensor:
        """Mean vector per group ``[G, U]`` (NaN for an empty group)."""
        n = self.count.to(torch.float64).unsqueeze(1)
        return torch.where(n > 0, self.sum / n.clamp(min=1), torch.full_like(self.sum, float("nan")))

    def stderr(self) -> torch.Tensor:
        """Standard error of each group's mean ``[G, U]``: sqrt(s² / n), s² the unbiased variance (NaN if n < 2)."""
        n = self.count.to(torch.float64).unsqueeze(1)
        var = (self.sumsq - self.sum * self.sum / n.clamp(min=1)) / (n - 1).clamp(min=1)
        se = torch.sqrt(var.clamp(min=0) / n.clamp(min=1))
        return torch.where(n > 1, se, torch.full_like(se, float("nan")))

    def select(self, groups: torch.Tensor) -> InfluenceSums:
        """The sums of the chosen groups only.

        Args:
            groups: int64 ``[G']`` group ids to keep, in that order.

        Returns:
            Sums ``[G', U]``.
        """
        return InfluenceSums(self.sum[groups], self.sumsq[groups], self.count[groups])

    def cpu(self) -> InfluenceSums:
        """The same sums in host memory."""
        return InfluenceSums(self.sum.cpu(), self.sumsq.cpu(), self.count.cpu())
