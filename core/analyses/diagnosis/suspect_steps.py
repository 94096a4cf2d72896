"""Which preprocessing step to suspect: does a lossy step erase what separates a class from its neighbour?

When the slice does not separate class i from the class it is confused with (its neighbour j), the
information was lost somewhere below the slice — possibly before the network ever saw it, in the recipe. Each
*lossy* step of the recorded recipe is tested on the raw images, in the recipe's own order (convert mode →
resize → scale → blur → normalise):

- **colour conversion** RGB → L (a projection: contrast along the two chroma directions is gone);
- **resize** to fewer pixels than an image has (a low-pass filter and resampling);
- **Gaussian blur** σ > 0 (a low-pass filter).

Scaling and normalising are invertible affine maps, and upsampling or L → RGB lose nothing: never suspected.
A recipe without lossy steps names none.

**Between-class contrast.** Measured the same way at every stage: the held-out AUC of the linear probe
(:func:`~essence.core.analyses.diagnosis.probe.probe_auc`) of i against j on a fixed, generic image description —
a coarse ``grid``×``grid`` layout of each channel, plus, for each channel and each of ``bands`` octave bands
(differences of Gaussians at σ = 1, 2, 4, …), the band's mean magnitude, standard deviation and its 0.1, 1,
10, 90, 99, 99.9 % quantiles (the tails see sparse, small structures — a few dark dots — that averages miss),
and each channel's mean and spread. The description does not know the dataset: it is a classical multi-scale
texture summary plus layout, the kind of evidence a low-pass filter, a resampling or a projection can destroy.

**The rule.** For a lossy step with AUC a before it and a′ after it, the share of the separation above chance
that survives is s = (a′ − ½) / (a − ½), clipped to [0, 1]. The step is a **suspect** iff

1. the images before it separate i from j (a above the chance level of the probe for these class sizes,
   :func:`~essence.core.analyses.diagnosis.probe.chance_auc`) — there was something to erase;
2. s < ``max_survival`` (½): the step removes most of the separation it was given — of several lossy steps
   in a row, each is judged on what reached it;
3. the loss a − a′ exceeds the chance margin (threshold − ½): the drop is not sampling noise.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from essence.core.analyses.diagnosis.probe import ProbeSettings, chance_auc, probe_auc
from essence.core.inputs.data import ImageData, open_image
from essence.core.inputs.preprocessing import Preprocessing, gaussian_blur, read_8bit

QUANTILES = (0.001, 0.01, 0.1, 0.9, 0.99, 0.999)


@dataclass(frozen=True)
class SuspectSettings:
    """Settings of the preprocessing audit (each argued in the module docstring).

    Attributes:
        max_survival: a lossy step is a suspect when less than this share of the separation survives it.
        per_class: the most raw images read per class (a seeded sample; bounds the cost on large data).
        grid: side of the coarse layout in the description.
        bands: octave bands of the description (σ = 1, 2, …, 2^(bands−1) px).
        probe: the probe's settings (folds, confidence of the chance level).
    """

    max_survival: float = 0.5
    per_class: int = 200
    grid: int = 8
    bands: int = 5
    probe: ProbeSettings = field(default_factory=ProbeSettings)


@dataclass(frozen=True)
class StepTest:
    """One lossy step's test.

    Attributes:
        step: the step, for people (``"Gaussian blur σ=2 px"``).
        auc_before, auc_after: the probe's held-out AUC of i against j before and after the step.
        threshold: the chance level of that AUC for these class sizes.
        survival: the share of the separation above chance that survives the step (0–1).
        suspect: whether the step erases the separation (the rule in the module docstring).
        evidence: one sentence with the numbers.
    """

    step: str
    auc_before: float
    auc_after: float
    threshold: float
    survival: float
    suspect: bool
    evidence: str

    def to_json(self) -> dict[str, Any]:
        """``{"step", "evidence", "auc_before", "auc_after", "threshold", "survival", "suspect"}``."""
        return {
            "step": self.step,
            "evidence": self.evidence,
            "auc_before": self.auc_before,
            "auc_after": self.auc_after,
            "threshold": self.threshold,
            "survival": self.survival,
            "suspect": self.suspect,
        }


@dataclass(frozen=True)
class StepAudit:
    """Every lossy step of a recipe tested for one class against its neighbour.

    Attributes:
        name, against: the two classes.
        raw_auc: the probe's AUC on the raw images (before any step).
        threshold: its chance level.
        steps: one :class:`StepTest` per lossy step, in the recipe's order (empty: no lossy step).
    """

    name: str
    against: str
    raw_auc: float
    threshold: float
    steps: list[StepTest]

    @property
    def suspects(self) -> list[StepTest]:
        return [s for s in self.steps if s.suspect]

    @property
    def raw_separates(self) -> bool:
        return bool(np.isfinite(self.raw_auc) and self.raw_auc > self.threshold)


def lossy_steps(recipe: Preprocessing, channels: int, shapes: set[tuple[int, int]]) -> list[tuple[str, str]]:
    """The recipe's lossy steps for raw images of ``channels`` channels and sizes ``shapes``.

    Returns:
        ``[(field, description)]`` in the recipe's order; ``field`` is ``"mode"``, ``"size"`` or
        ``"blur_sigma"``.
    """
    steps = []
    if recipe.mode == "L" and channels >= 3:
        steps.append(("mode", "colour conversion RGB → L"))
    if recipe.size is not None and any(h > recipe.size[0] or w > recipe.size[1] for h, w in shapes):
        steps.append(("size", f"resize to {recipe.size[0]}×{recipe.size[1]}"))
    if recipe.blur_sigma > 0:
        steps.append(("blur_sigma", f"Gaussian blur σ={recipe.blur_sigma:g} px"))
    return steps


def contrast_description(x: torch.Tensor, grid: int = 8, bands: int = 5) -> np.ndarray:
    """The generic image description ``[N, D]`` of images ``[N, C, H, W]`` (see the module docstring)."""
    n, c = x.shape[:2]
    feats = [F.adaptive_avg_pool2d(x, (grid, grid)).reshape(n, -1)]
    qs = torch.tensor(QUANTILES, dtype=x.dtype)
    previous = x
    for k in range(bands):
        low = gaussian_blur(x, float(2**k)) if min(x.shape[-2:]) > 1 else x
        band = (previous - low).reshape(n, c, -1)
        feats += [band.abs().mean(-1), band.std(-1, correction=0), *torch.quantile(band, qs, dim=-1)]
        previous = low
    flat = x.reshape(n, c, -1)
    feats += [flat.mean(-1), flat.std(-1, correction=0)]
    return torch.cat(feats, 1).double().numpy()


def audit_steps(
    data: ImageData, cls: int, against: int, settings: SuspectSettings | None = None
) -> StepAudit:
    """Test every lossy step of ``data``'s recipe for erasing what separates ``cls`` from ``against``.

    Args:
        data: the dataset, with its raw images and recipe.
        cls: the class that was not learned.
        against: its neighbour (the class it is confused with).
        settings: the rule's settings.

    Returns:
        A :class:`StepAudit`.

    Raises:
        DataLoadError: a raw image cannot be read.
    """
    s = settings or SuspectSettings()
    rng = np.random.default_rng(s.probe.seed)
    rows = []
    for c in (cls, against):
        idx = np.flatnonzero(data.labels == c)
        rows.append(np.sort(rng.choice(idx, size=min(len(idx), s.per_class), replace=False)))
    idx = np.concatenate(rows)
    positive = data.labels[idx] == cls
    read = [_raw(data, int(i)) for i in idx]
    divisors = {d for _, d in read}
    if len(divisors) == 1:
        raw, scale = [r for r, _ in read], divisors.pop()
    else:  # image files of different ranges: each brought to 0..255 first
        raw, scale = [r * np.float32(255.0 / d) for r, d in read], 255.0
    channels = max(r.shape[-1] for r in raw)
    shapes = {tuple(r.shape[:2]) for r in raw}
    recipe = data.preprocessing
    stage = Preprocessing(mode="RGB" if channels >= 3 else "L", scale=scale, mean=(0.0,), std=(1.0,))
    threshold = chance_auc(int(positive.sum()), int((~positive).sum()), s.probe.confidence)
    before = probe_auc(_describe(raw, stage, s), positive, s.probe)
    raw_auc = before
    tests = []
    for fld, what in lossy_steps(recipe, channels, shapes):
        if fld == "mode":
            stage = replace(stage, mode=recipe.mode, mean=(0.0,), std=(1.0,))
        else:
            stage = replace(stage, **{fld: getattr(recipe, fld)})
        after = probe_auc(_describe(raw, stage, s), positive, s.probe)
        tests.append(
            _judge(what, before, after, threshold, s, data.class_names[cls], data.class_names[against])
        )
        before = after
    return StepAudit(data.class_names[cls], data.class_names[against], raw_auc, threshold, tests)


def _judge(
    what: str, before: float, after: float, threshold: float, s: SuspectSettings, name: str, other: str
) -> StepTest:
    margin = threshold - 0.5
    gap = before - 0.5
    survival = float(np.clip((after - 0.5) / gap, 0.0, 1.0)) if gap > 0 else 1.0
    suspect = bool(before > threshold and survival < s.max_survival and before - after > margin)
    evidence = (
        f"{name} vs {other}: contrast AUC {before:.2f} before the {what}, {after:.2f} after "
        f"(chance up to {threshold:.2f}); {survival:.0%} of the separation survives"
    )
    return StepTest(what, float(before), float(after), float(threshold), survival, suspect, evidence)


def _raw(data: ImageData, index: int) -> tuple[np.ndarray, float]:
    """The raw image ``[H, W, C]`` before any step of the recipe, and what divides it to [0, 1]: an array's
    values and the recipe's scale; a file's values as read at 8 bits (a 16-bit file's range mapped onto 0..255,
    as for the dataset's inputs) and the recipe's divisor of them."""
    if data.arrays is not None:
        a = np.asarray(data.arrays[index], dtype=np.float32)
        if a.ndim == 3 and a.shape[0] in (1, 3, 4) and a.shape[-1] not in (1, 3, 4):
            a = np.moveaxis(a, 0, -1)
        return (a[..., None] if a.ndim == 2 else a), float(data.preprocessing.scale or 1.0)
    assert data.paths is not None, "an ImageData without arrays reads its images from paths"
    image, top = read_8bit(open_image(data.paths[index]))
    if image.mode not in ("L", "RGB", "RGBA"):
        image = image.convert("RGB")
    a = np.asarray(image, dtype=np.float32)
    return (a[..., None] if a.ndim == 2 else a), data.preprocessing.file_divisor(top)


def _describe(raw: list[np.ndarray], stage: Preprocessing, s: SuspectSettings) -> np.ndarray:
    """The description of every raw image after the recipe's steps up to ``stage``."""
    if len({r.shape for r in raw}) == 1:
        return contrast_description(stage.apply_array(np.stack(raw)), s.grid, s.bands)
    return np.concatenate([contrast_description(stage.apply_array(r[None]), s.grid, s.bands) for r in raw])
