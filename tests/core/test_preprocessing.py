"""The preprocessing recipe: round trip, stable fingerprints, normalisation and the Gaussian blur."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from essence.core.base.errors import SpecError
from essence.core.inputs.preprocessing import Preprocessing, gaussian_blur

RECIPES = [
    Preprocessing(),
    Preprocessing(mode="L", mean=(0.5,), std=(0.25,), size=(16, 12)),
    Preprocessing(blur_sigma=2.0, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), scale=16.0),
]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: r.describe())
def test_round_trip_and_stable_fingerprint(recipe):
    again = Preprocessing.from_dict(recipe.to_dict())
    assert again == recipe
    assert again.fingerprint() == recipe.fingerprint()
    assert len(recipe.fingerprint()) == 16


def test_fingerprint_changes_with_every_field():
    base = Preprocessing()
    changed = [
        dataclasses.replace(base, mode="L", mean=(0.0,), std=(1.0,)),
        dataclasses.replace(base, size=(8, 8)),
        dataclasses.replace(base, blur_sigma=0.5),
        dataclasses.replace(base, mean=(0.1, 0.0, 0.0)),
        dataclasses.replace(base, std=(1.0, 2.0, 1.0)),
        dataclasses.replace(base, scale=1.0),
    ]
    prints = {r.fingerprint() for r in changed} | {base.fingerprint()}
    assert len(prints) == len(changed) + 1


@pytest.mark.parametrize(
    "bad",
    [
        {"mode": "CMYK"},
        {"std": (0.0, 1.0, 1.0)},
        {"blur_sigma": -1.0},
        {"size": (0, 4)},
        {"mean": (0.1, 0.2)},
    ],
)
def test_bad_recipes_are_refused(bad):
    with pytest.raises(SpecError):
        Preprocessing(**bad)


def test_unknown_keys_are_refused():
    with pytest.raises(SpecError, match="blur"):
        Preprocessing.from_dict({"blur": 2.0})


def test_normalisation_and_layouts():
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, size=(2, 5, 6, 3)).astype(np.uint8)
    recipe = Preprocessing(mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))
    x = recipe.apply_array(nhwc)
    expected = (
        torch.from_numpy(nhwc).permute(0, 3, 1, 2).float() / 255
        - torch.tensor([0.5, 0.4, 0.3]).view(1, 3, 1, 1)
    ) / torch.tensor([0.2, 0.3, 0.4]).view(1, 3, 1, 1)
    torch.testing.assert_close(x, expected)
    torch.testing.assert_close(recipe.apply_array(nhwc.transpose(0, 3, 1, 2)), expected)
    gray = Preprocessing(mode="L", mean=(0.0,), std=(1.0,)).apply_array(nhwc[..., 0])
    assert gray.shape == (2, 1, 5, 6)
    pil = recipe.apply_pil(Image.fromarray(nhwc[0]))
    torch.testing.assert_close(pil, expected[0])


def test_blur():
    rng = np.random.default_rng(1)
    noise = torch.from_numpy(rng.normal(size=(1, 3, 32, 32)).astype(np.float32))
    blurred = gaussian_blur(noise, 1.5)
    assert blurred.shape == noise.shape
    assert blurred.std() < 0.5 * noise.std()  # white noise loses most of its variance
    constant = torch.full((1, 1, 9, 9), 0.7)
    torch.testing.assert_close(gaussian_blur(constant, 2.0), constant)
    impulse = torch.zeros(1, 1, 21, 21)
    impulse[0, 0, 10, 10] = 1.0
    spread = gaussian_blur(impulse, 1.0)
    torch.testing.assert_close(spread.sum(), torch.tensor(1.0))  # far from the border: mass is kept
    assert spread[0, 0, 10, 10] < 0.2 and torch.allclose(spread[0, 0], spread[0, 0].T)
    # the recipe applies it after scaling and before normalising; σ = 0 changes nothing
    raw = rng.integers(0, 256, size=(1, 16, 16, 3)).astype(np.float32)
    plain = Preprocessing().apply_array(raw)
    torch.testing.assert_close(Preprocessing(blur_sigma=1.0).apply_array(raw), gaussian_blur(plain, 1.0))
    assert "blur σ=1" in Preprocessing(blur_sigma=1.0).describe()
    assert "no blur" in Preprocessing().describe()


def test_16_bit_images_are_scaled_not_clipped() -> None:
    """A 16-bit greyscale image keeps its contrast: PIL's own conversion would clip everything above 255."""
    from PIL import Image

    ramp = (np.arange(32 * 32).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    x = Preprocessing(mode="L", mean=(0.0,), std=(1.0,)).apply_pil(Image.fromarray(ramp))
    assert float(x.max()) == pytest.approx(65472 / 65535, abs=1 / 255)
    assert float((x >= 0.999).float().mean()) < 0.01
    assert float(x.mean()) == pytest.approx(ramp.mean() / 65535, abs=1 / 255)


def test_an_absurd_size_is_refused() -> None:
    with pytest.raises(SpecError, match="8192"):
        Preprocessing(size=(100_000, 100_000))
    assert Preprocessing(size=(8192, 8192)).size == (8192, 8192)


def _blur_reference(x: np.ndarray, sigma: float) -> np.ndarray:
    """The blur by its definition, one output pixel at a time: the kernel (radius ceil(3σ)) cut to what reflect
    padding can reach on each side and renormalised, applied along the width, then the height."""
    radius = max(1, int(np.ceil(3 * sigma)))
    t = np.arange(-radius, radius + 1)
    k = np.exp(-(t**2) / (2 * sigma**2))
    out = x.astype(np.float64)
    for axis in (3, 2):
        n = out.shape[axis]
        pad = min(radius, n - 1)
        kk = k[radius - pad : radius + pad + 1] / k[radius - pad : radius + pad + 1].sum()
        moved = np.moveaxis(out, axis, -1)
        done = np.zeros_like(moved)
        for j in range(n):
            for o, w in zip(range(-pad, pad + 1), kk, strict=True):
                i = j + o
                i = -i if i < 0 else (2 * (n - 1) - i if i >= n else i)
                done[..., j] += w * moved[..., i]
        out = np.moveaxis(done, -1, axis)
    return out


@pytest.mark.parametrize("route", ["matrix", "convolution"])
@pytest.mark.parametrize(
    ("shape", "sigma"),
    [((2, 3, 17, 23), 1.0), ((1, 1, 9, 40), 4.0), ((2, 2, 1, 30), 2.5), ((1, 3, 6, 5), 16.0)],
)
def test_blur_is_its_definition_by_either_route(route, shape, sigma, monkeypatch) -> None:
    """Both ways of computing the blur (a matrix product for small sides, a convolution for long ones) give the
    blur's definition, borders and tiny sides included."""
    from essence.core.inputs import preprocessing

    monkeypatch.setattr(preprocessing, "MATRIX_BLUR_WIDTHS", 10**9 if route == "matrix" else 0)
    x = np.random.default_rng(7).normal(size=shape)
    got = gaussian_blur(torch.from_numpy(x), sigma).numpy()
    np.testing.assert_allclose(got, _blur_reference(x, sigma), rtol=0, atol=1e-12)
