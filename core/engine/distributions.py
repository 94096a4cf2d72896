"""Distributions of interest: which inputs the influence is averaged over.

Two parts make a distribution:

* its **support and grouping** — one vector per instance (``Instance``), per class (``ClassConditional``)
  or for the whole dataset (``WholeDataset``);
* an optional **neighbourhood** of each instance — the straight path from a baseline (``LinearPath``,
  integrated-gradients style) or Gaussian noise (``GaussianNoise``); its points carry weights that sum to 1.

χ = E_{x~P}[∂q/∂z at h(x)]: for a neighbourhood, each instance's vector is the weighted average gradient over
its points; a group's vector is the average of its instances' vectors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import torch

from essence.core.base.errors import SpecError

GroupBy = Literal["instance", "class", "dataset"]
PathMethod = Literal["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"]
PATH_METHODS: tuple[str, ...] = get_args(PathMethod)


@dataclass(frozen=True)
class Instance:
    """The point distribution of each instance (or of the one at ``index``): influence = its gradient.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from essence.core.engine.influence import influence
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
        >>> data = (torch.randn(5, 4), torch.tensor([0, 1, 0, 1, 1]))
        >>> influence(model, data, "1", "logit", Instance(), device="cpu").groups.tolist()  # a row per instance
        [0, 1, 2, 3, 4]
        >>> influence(model, data, "1", "logit", Instance(index=3), device="cpu").mean.shape  # only instance 3
        torch.Size([1, 3])
    """

    index: int | None = None
    group_by: GroupBy = "instance"

    @property
    def name(self) -> str:
        return "instance" if self.index is None else f"instance[{self.index}]"


@dataclass(frozen=True)
class ClassConditional:
    """The instances of each class (or of class ``cls`` only), one vector per class.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from essence.core.engine.influence import influence
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
        >>> data = (torch.randn(5, 4), torch.tensor([0, 1, 0, 1, 1]))
        >>> influence(model, data, "1", "logit", ClassConditional(), device="cpu").counts.tolist()
        [2, 3]
        >>> influence(model, data, "1", "logit", ClassConditional(cls=1), device="cpu").counts.tolist()
        [0, 3]
    """

    cls: int | None = None
    group_by: GroupBy = "class"

    @property
    def name(self) -> str:
        return "class" if self.cls is None else f"class[{self.cls}]"


@dataclass(frozen=True)
class WholeDataset:
    """Every instance of the data, one vector.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from essence.core.engine.influence import influence
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
        >>> data = (torch.randn(5, 4), torch.tensor([0, 1, 0, 1, 1]))
        >>> chi = influence(model, data, "1", "logit", WholeDataset(), device="cpu")
        >>> chi.groups.tolist(), chi.counts.tolist(), chi.distribution
        ([0], [5], 'dataset')
    """

    group_by: GroupBy = "dataset"

    @property
    def name(self) -> str:
        return "dataset"


def path_points(steps: int, method: PathMethod) -> tuple[np.ndarray, np.ndarray]:
    """Points α ∈ [0, 1] and weights (summing to 1) of a quadrature of ∫₀¹ f(α) dα.

    The same rules as integrated gradients' implementations (left/right/middle/trapezoid Riemann sums,
    Gauss–Legendre), so results compare one to one.
    """
    if steps < 1:
        raise SpecError(f"a path needs at least 1 step, got {steps}")
    if method == "riemann_left":
        alphas = np.arange(steps) / steps
        weights = np.full(steps, 1 / steps)
    elif method == "riemann_right":
        alphas = np.arange(1, steps + 1) / steps
        weights = np.full(steps, 1 / steps)
    elif method == "riemann_middle":
        alphas = (np.arange(steps) + 0.5) / steps
        weights = np.full(steps, 1 / steps)
    elif method == "riemann_trapezoid":
        if steps < 2:
            raise SpecError("the trapezoid rule needs at least 2 steps")
        alphas = np.linspace(0, 1, steps)
        weights = np.full(steps, 1 / (steps - 1))
        weights[[0, -1]] /= 2
    elif method == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(steps)
        alphas, weights = (nodes + 1) / 2, w / 2
    else:
        raise SpecError(f"unknown path method {method!r}: use one of {', '.join(PATH_METHODS)}")
    return alphas.astype(np.float64), weights.astype(np.float64)


@dataclass(frozen=True)
class LinearPath:
    """The straight path from ``baseline`` to each instance, sampled at ``steps`` quadrature points.

    With the input as the slice and the instance's own point distribution this is integrated gradients'
    average gradient (IG = (x − baseline) · that average).

    Attributes:
        steps: number of points on the path.
        baseline: a constant (in the preprocessed input space); a tensor broadcastable to one input
            (``[*x_shape]`` or ``[1, *x_shape]``); or per-row baselines ``[N, *x_shape]``, one per dataset
            instance, picked by each instance's dataset position (so batches may cut the data anywhere).
        method: quadrature rule, one of ``riemann_left``, ``riemann_right``, ``riemann_middle``,
            ``riemann_trapezoid``, ``gausslegendre`` (see :func:`path_points`).
        group_by: one vector per instance, per class, or for the dataset.

    Raises:
        SpecError: an unknown quadrature rule or too few steps for it (when the object is made).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from essence.core.engine.influence import influence
        >>> path = LinearPath(steps=8)
        >>> round(sum(w for _, w in path.points()), 12)  # the weights of the quadrature sum to 1
        1.0
        >>> path.transform(torch.ones(1, 3), 0.5, 0, torch.tensor([0]))  # halfway from the baseline 0
        tensor([[0.5000, 0.5000, 0.5000]])
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(3, 2)).eval()
        >>> x = torch.randn(1, 3)
        >>> avg = influence(model, (x, torch.tensor([1])), "", "logit", path, "neuron", device="cpu").mean
        >>> ig = (x * avg).sum()  # integrated gradients: they sum to logit(x) − logit(baseline)
        >>> bool(torch.allclose(ig, model(x)[0, 1] - model(torch.zeros(1, 3))[0, 1]))
        True
    """

    steps: int = 50
    baseline: float | torch.Tensor = 0.0
    method: PathMethod = "gausslegendre"
    group_by: GroupBy = "instance"

    def __post_init__(self) -> None:
        path_points(self.steps, self.method)  # an unknown rule or too few steps fails here, not mid-run

    def points(self) -> list[tuple[float, float]]:
        alphas, weights = path_points(self.steps, self.method)
        return list(zip(alphas.tolist(), weights.tolist(), strict=True))

    def transform(self, x: torch.Tensor, alpha: float, step: int, indices: torch.Tensor) -> torch.Tensor:
        """The path point ``baseline + α (x − baseline)`` of each row of ``x`` ``[B, ...]``.

        Raises:
            SpecError: per-row baselines that do not cover an instance's position, or a baseline that does
                not broadcast to the inputs.
        """
        base = torch.as_tensor(self.baseline, dtype=x.dtype, device=x.device)
        if base.ndim == x.ndim and base.shape[0] > 1:  # per-row baselines: each instance's own
            rows = indices.to(device=base.device, dtype=torch.long)
            if rows.numel() and int(rows.max()) >= base.shape[0]:
                raise SpecError(
                    f"per-row baselines hold {base.shape[0]} rows but instance {int(rows.max())} was asked "
                    "for: give one baseline per dataset instance, or one baseline for all"
                )
            base = base[rows]
        try:
            np.broadcast_shapes(tuple(base.shape), tuple(x.shape))
        except ValueError as exc:
            raise SpecError(
                f"a baseline of shape {tuple(base.shape)} does not fit inputs {tuple(x.shape[1:])}: give a "
                "constant, one input-shaped tensor, or one per dataset instance"
            ) from exc
        return base + alpha * (x - base)

    @property
    def name(self) -> str:
        b = self.baseline if isinstance(self.baseline, float | int) else "tensor"
        return f"path(steps={self.steps},baseline={b},method={self.method})/{self.group_by}"


@dataclass(frozen=True)
class GaussianNoise:
    """A Gaussian neighbourhood of each instance: ``samples`` draws of x + σ·ε, equally weighted.

    The noise of an instance depends only on ``seed``, the sample number and the instance's index in the
    dataset, so an instance's influence does not depend on the batch it is computed in. The three are mixed
    by NumPy's ``SeedSequence`` (a hash), so no two (instance, sample) pairs share a stream (a linear
    combination of them would: instance 7919's first sample was instance 0's second).

    Examples:
        >>> import torch
        >>> noise = GaussianNoise(samples=4, sigma=0.1, seed=0)
        >>> len(noise.points()), noise.name
        (4, 'noise(samples=4,sigma=0.1,seed=0)/instance')
        >>> x = torch.zeros(2, 3)
        >>> in_a_batch = noise.transform(x, 0.0, 0, torch.tensor([5, 6]))
        >>> alone = noise.transform(x[1:], 0.0, 0, torch.tensor([6]))
        >>> torch.equal(in_a_batch[1:], alone)  # an instance's noise depends on its index, not on its batch
        True
    """

    samples: int = 16
    sigma: float = 0.1
    seed: int = 0
    group_by: GroupBy = "instance"

    def __post_init__(self) -> None:
        if self.samples < 1 or not self.sigma >= 0:
            raise SpecError(f"Gaussian noise needs samples ≥ 1 and σ ≥ 0, got {self.samples}, {self.sigma}")

    def points(self) -> list[tuple[float, float]]:
        return [(float(k), 1.0 / self.samples) for k in range(self.samples)]

    def transform(self, x: torch.Tensor, alpha: float, step: int, indices: torch.Tensor) -> torch.Tensor:
        noise = torch.empty_like(x, device="cpu")
        gen = torch.Generator()
        for row, idx in enumerate(indices.tolist()):
            # one generator per instance keeps the draw independent of batching (a seeding loop, no model call)
            gen.manual_seed(noise_seed(self.seed, int(idx), step))
            noise[row] = torch.randn(x.shape[1:], generator=gen, dtype=x.dtype)
        return x + self.sigma * noise.to(x.device)

    @property
    def name(self) -> str:
        return f"noise(samples={self.samples},sigma={self.sigma:g},seed={self.seed})/{self.group_by}"


def noise_seed(seed: int, index: int, sample: int) -> int:
    """The generator seed of one instance's one noise sample: a hash of the three (``SeedSequence``).

    Args:
        seed: the distribution's seed (any integer).
        index: the instance's dataset position.
        sample: the sample number.

    Returns:
        A 64-bit seed for ``torch.Generator.manual_seed``.
    """
    entropy = [seed % 2**64, index, sample]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0])


Distribution = Instance | ClassConditional | WholeDataset | LinearPath | GaussianNoise


def distribution_name(d: Distribution) -> str:
    return d.name
