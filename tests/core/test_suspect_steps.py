"""Which preprocessing step to suspect, on real digits: a lossy step that erases a class, one that does not."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from essence.core.analyses.diagnosis.probe import chance_auc, probe_auc
from essence.core.analyses.diagnosis.suspect_steps import (
    SuspectSettings,
    audit_steps,
    contrast_description,
    lossy_steps,
)
from essence.core.inputs.data import ImageData
from essence.core.inputs.preprocessing import Preprocessing


def digits(**recipe: object) -> ImageData:
    d = load_digits()
    pre = Preprocessing(mode="L", mean=(0.0,), std=(1.0,), scale=16.0, **recipe)  # type: ignore[arg-type]
    return ImageData("digits", d.target, [str(i) for i in range(10)], pre, "digits", arrays=d.images)


def test_lossy_steps_of_a_recipe() -> None:
    rgb = Preprocessing(mode="L", size=(4, 4), blur_sigma=1.0, mean=(0.0,), std=(1.0,))
    assert [f for f, _ in lossy_steps(rgb, 3, {(8, 8)})] == ["mode", "size", "blur_sigma"]
    # Upsampling, L → RGB, scaling and normalising lose nothing.
    up = Preprocessing(mode="RGB", size=(16, 16), mean=(0.5,), std=(0.2,))
    assert lossy_steps(up, 1, {(8, 8)}) == []
    assert lossy_steps(up, 3, {(8, 8), (32, 32)})[0][1] == "resize to 16×16"


def test_a_resize_to_one_pixel_erases_6_from_5() -> None:
    audit = audit_steps(digits(size=(1, 1)), 6, 5)
    assert audit.raw_separates and audit.raw_auc > 0.99
    (step,) = audit.steps
    assert step.step == "resize to 1×1" and step.suspect, step.evidence
    assert step.survival < 0.5 and "6 vs 5" in step.evidence
    assert audit.suspects == [step]


def test_a_mild_blur_and_a_halving_resize_keep_it() -> None:
    audit = audit_steps(digits(size=(4, 4), blur_sigma=0.5), 6, 5)
    assert [s.step for s in audit.steps] == ["resize to 4×4", "Gaussian blur σ=0.5 px"]
    assert audit.suspects == [] and all(s.survival > 0.9 for s in audit.steps)


def test_no_lossy_step_names_none() -> None:
    audit = audit_steps(digits(), 3, 8, SuspectSettings(per_class=60))
    assert audit.steps == [] and audit.suspects == [] and audit.raw_separates


def test_the_probe_threshold_is_chance_plus_its_uncertainty() -> None:
    # Mann–Whitney: sd = √((n1 + n0 + 1) / (12 n1 n0)); 57 against 570 → 0.0401; z(0.99) = 2.326.
    assert chance_auc(57, 570) == pytest.approx(0.5 + 2.326 * 0.04014, abs=1e-3)
    assert chance_auc(10, 10) > chance_auc(100, 100) > 0.5
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(300, 20))
    label = rng.random(300) < 0.3
    assert probe_auc(noise, label) < chance_auc(int(label.sum()), int((~label).sum()))
    shifted = noise + label[:, None] * 1.0
    assert probe_auc(shifted, label) > 0.9


def test_description_sees_single_pixel_spots() -> None:
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.normal(0.5, 0.02, size=(80, 1, 32, 32)).astype(np.float32))
    spotted = np.arange(80) % 2 == 1
    for i in np.flatnonzero(spotted):
        ys, xs = rng.integers(0, 32, size=(2, 3))
        x[i, 0, ys, xs] -= 0.3  # three dark one-pixel dots somewhere
    assert probe_auc(contrast_description(x), spotted) > 0.95
