"""Distributions of interest: quadrature rules and the Gaussian neighbourhood's batch independence."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from essence.core.distributions import GaussianNoise, LinearPath, path_points
from essence.core.errors import SpecError

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
