"""Distributions of interest: quadrature rules and the Gaussian neighbourhood's batch independence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from essence.core.base.errors import SpecError
from essence.core.engine.distributions import PATH_METHODS, GaussianNoise, LinearPath, noise_seed, path_points

METHODS = ["riemann_left", "riemann_right", "riemann_middle", "riemann_trapezoid", "gausslegendre"]


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("steps", [2, 5, 16])
def test_quadrature_weights_sum_to_one_and_integrate(method, steps):
    alphas, weights = path_points(steps, method)
    assert len(alphas) == len(weights) == steps
    assert np.all((alphas >= 0) & (alphas <= 1))
    assert weights.sum() == pytest.approx(1.0, abs=1e-12)
    # every rule integrates a linear function exactly (left/right up to their O(1/n) bias)
    exact = 0.5
    tol = 0.5 / steps + 1e-12 if method in ("riemann_left", "riemann_right") else 1e-12
    assert abs(float((weights * alphas).sum()) - exact) <= tol


def test_gauss_legendre_is_exact_for_polynomials():
    alphas, weights = path_points(4, "gausslegendre")
    assert float((weights * alphas**7).sum()) == pytest.approx(1 / 8, abs=1e-12)


def test_bad_paths():
    with pytest.raises(SpecError):
        path_points(0, "gausslegendre")
    with pytest.raises(SpecError):
        path_points(1, "riemann_trapezoid")
    with pytest.raises(SpecError, match="simpson"):
        path_points(4, "simpson")  # type: ignore[arg-type]
    with pytest.raises(SpecError):
        GaussianNoise(samples=0)


def test_linear_path_points():
    x = torch.ones(2, 3)
    path = LinearPath(steps=3, baseline=0.5)
    torch.testing.assert_close(path.transform(x, 0.0, 0, torch.arange(2)), torch.full_like(x, 0.5))
    torch.testing.assert_close(path.transform(x, 1.0, 0, torch.arange(2)), x)


def test_gaussian_noise_depends_on_the_instance_not_the_batch():
    noise = GaussianNoise(samples=3, sigma=0.5, seed=1)
    x = torch.zeros(4, 2, 3)
    together = noise.transform(x, 1.0, 1, torch.tensor([10, 11, 12, 13]))
    alone = noise.transform(x[2:3], 1.0, 1, torch.tensor([12]))
    torch.testing.assert_close(alone[0], together[2])
    assert not torch.equal(together[0], together[1])
    other_step = noise.transform(x, 2.0, 2, torch.tensor([10, 11, 12, 13]))
    assert not torch.equal(other_step, together)
    assert abs(float(noise.transform(torch.zeros(200, 50), 0, 0, torch.arange(200)).std()) - 0.5) < 0.02


def test_noise_seeds_do_not_collide():
    """A linear mix of (seed, sample, index) gave instance 7919 at sample 0 instance 0's sample 1."""
    noise = GaussianNoise(samples=2, sigma=1.0, seed=0)
    x = torch.zeros(1, 4)
    sample0_of_7919 = noise.transform(x, 0.0, 0, torch.tensor([7919]))
    sample1_of_0 = noise.transform(x, 1.0, 1, torch.tensor([0]))
    assert not torch.equal(sample0_of_7919, sample1_of_0)
    seeds = {noise_seed(s, i, k) for s in range(3) for i in range(200) for k in range(8)}
    assert len(seeds) == 3 * 200 * 8


def test_unknown_quadrature_rules_are_refused_when_the_path_is_made():
    with pytest.raises(SpecError, match="riemann_trapezoid"):
        LinearPath(steps=8, method="trapezoid")  # type: ignore[arg-type]
    with pytest.raises(SpecError):
        LinearPath(steps=1, method="riemann_trapezoid")
    assert tuple(METHODS) == PATH_METHODS


def test_per_row_baselines_follow_the_dataset_positions():
    """One baseline per dataset instance: a batch is any run of rows, indexed by dataset position."""
    baselines = torch.arange(5.0).reshape(5, 1).expand(5, 3)
    path = LinearPath(steps=2, baseline=baselines, method="riemann_trapezoid")
    x = torch.full((2, 3), 10.0)
    at_start = path.transform(x, 0.0, 0, torch.tensor([3, 4]))
    torch.testing.assert_close(at_start, baselines[[3, 4]])
    with pytest.raises(SpecError, match="per-row"):
        path.transform(x, 0.0, 0, torch.tensor([4, 5]))
    with pytest.raises(SpecError, match="does not fit"):
        LinearPath(steps=2, baseline=torch.zeros(4)).transform(x, 0.5, 0, torch.tensor([0, 1]))
