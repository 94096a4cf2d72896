"""Planted cases with ground truth: every defect variant, the fixed development / held-out split, and the builder.

A *variant* is one way of planting one defect family (a shortcut mark at 90 % with spill-over, a blur that
erases a texture, ...). A *case* is a variant built on one generator, for one seed and one architecture: the
trained model, the review set as an :class:`~essence.core.ImageData` (raw uint8 images and the model's recorded
recipe, so the preprocessing audit can run) and the truth — which review images are planted (per kind) and which
class carries the defect, with the verdict and the preprocessing step the diagnosis should name.

The split (:data:`SPLIT`) was written before any number was measured and is never tuned: development variants
may be used to choose settings; held-out variants only to report them.
"""

from __future__ import annotations

import copy
import functools
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from benchmarks.planted import images as im
from benchmarks.planted.models import predict, train
from essence.core import ImageData, Preprocessing

NOT_LEARNED, NOT_READ_OUT, DROWNING = "not learned", "not read out", "drowning experts"
HALVES = ("dev", "heldout")
# The normalisation of every recipe (an invertible affine map: never audited as lossy).
MEAN, STD = (0.5,), (0.25,)


@dataclass(frozen=True)
class Variant:
    """One way of planting one defect family.

    Attributes:
        name: ``family-ish/variant`` (``"shortcut/mark-90-spill"``).
        family: the defect family (a row of the report).
        half: ``"dev"`` or ``"heldout"``.
        params: what the builder reads (rates, cue, feature, recipe).
        verdict: what the diagnosis should say of the planted class (``None``: nothing planted for it — every
            class should be "ok").
        step: the preprocessing step the audit should name (a prefix of its description), ``""`` for "none
            should be named", ``None`` where the audit is not judged.
    """

    name: str
    family: str
    half: str
    params: dict[str, Any] = field(default_factory=dict)
    verdict: str | None = None
    step: str | None = None


def _variants() -> dict[str, Variant]:
    out: list[Variant] = [
        Variant("noise/uniform-20", "label noise", "dev", {"noise": "uniform", "rate": 0.2}),
        Variant("noise/pairs-30", "label noise", "dev", {"noise": "pairs", "rate": 0.3}),
        Variant("noise/uniform-10", "label noise", "heldout", {"noise": "uniform", "rate": 0.1}),
        Variant("noise/cycle-30", "label noise", "heldout", {"noise": "cycle", "rate": 0.3}),
    ]
    for cue, half in (("mark", "dev"), ("frame", "dev"), ("tint", "heldout"), ("texture", "heldout")):
        for rate in (0.5, 0.9):
            for spill in (False, True):
                name = f"shortcut/{cue}-{round(rate * 100)}{'-spill' if spill else ''}"
                out.append(Variant(name, "shortcut", half, {"cue": cue, "rate": rate, "spill": spill}))
    out += [
        Variant("not-learned/noise-images", "not learned", "dev", {"absent": "noise"}, NOT_LEARNED, ""),
        Variant("not-learned/feature-absent", "not learned", "heldout", {"absent": "feature"}, NOT_LEARNED, ""),
        Variant("not-read-out/zeroed", "not read out", "dev", {"head": "zeroed"}, NOT_READ_OUT),
        Variant("not-read-out/scaled", "not read out", "dev", {"head": "scaled"}, NOT_READ_OUT),
        Variant("not-read-out/biased", "not read out", "heldout", {"head": "biased"}, NOT_READ_OUT),
        Variant("drowning/rare-4", "drowning experts", "dev", {"keep": 0.04}, DROWNING),
        Variant("drowning/rare-10", "drowning experts", "heldout", {"keep": 0.10}, DROWNING),
        Variant("lossy/blur", "preprocessing loss", "dev",
                {"feature": "checker", "recipe": {"blur_sigma": 1.0}}, NOT_LEARNED, "Gaussian blur"),
        Variant("lossy/downsize", "preprocessing loss", "dev",
                {"feature": "checker", "recipe": {"halve": True}}, NOT_LEARNED, "resize"),
        Variant("lossy/grey", "preprocessing loss", "heldout",
                {"feature": "hue", "recipe": {"mode": "L"}}, NOT_LEARNED, "colour conversion"),
        # The recipe has no crop: the crop happens before Essence sees the images, so no step can be named,
        # and the right finding is that even the raw images do not separate the class.
        Variant("lossy/crop", "preprocessing loss", "heldout",
                {"feature": "stripe", "crop": True}, NOT_LEARNED, ""),
        Variant("innocent/blur", "lossy step, not the cause", "dev",
                {"absent": "noise", "recipe": {"blur_sigma": 0.6}}, NOT_LEARNED, ""),
        Variant("innocent/grey", "lossy step, not the cause", "heldout",
                {"absent": "noise", "recipe": {"mode": "L"}}, NOT_LEARNED, ""),
        Variant("control/plain", "healthy control", "dev"),
        Variant("control/mild-blur", "healthy control", "heldout", {"recipe": {"blur_sigma": 0.5}}),
    ]  # fmt: skip
    return {v.name: v for v in out}


VARIANTS: dict[str, Variant] = _variants()
# The fixed split (written before any measurement; the table in docs/analyses.md repeats it).
SPLIT: dict[str, tuple[str, ...]] = {h: tuple(n for n, v in VARIANTS.items() if v.half == h) for h in HALVES}
SEEDS = (0, 1, 2)


@dataclass
class Case:
    """One built case: a trained model, its review set, and the truth.

    Attributes:
        variant: what was planted.
        generator, seed, arch: where.
        model: the trained (and, for "not read out", edited) classifier, eval mode.
        review: the review set: raw uint8 ``[N, H, W, 3]`` images, the *given* labels (noisy where noise was
            planted), the recipe the model was trained with.
        true_labels: int64 ``[N]`` the classes the review images really are.
        kinds: planted review images by kind (``flipped``, ``cue``, ``spill``), bool ``[N]`` each.
        planted_class: the class index carrying the defect (``None`` for noise and controls).
        notes: facts measured while building (accuracy, how often the shortcut is followed, ...).
    """

    variant: Variant
    generator: str
    seed: int
    arch: str
    model: nn.Module
    review: ImageData
    true_labels: np.ndarray
    kinds: dict[str, np.ndarray]
    planted_class: int | None
    notes: dict[str, Any]

    @property
    def key(self) -> str:
        return f"{self.variant.name}|{self.generator}|s{self.seed}|{self.arch}"


@dataclass
class _Draft:
    """A case while it is being planted: images and labels of both halves, mutable."""

    train_x: np.ndarray
    train_y: np.ndarray
    review_x: np.ndarray
    review_y: np.ndarray
    review_true: np.ndarray
    names: list[str]
    recipe: dict[str, Any] = field(default_factory=dict)
    kinds: dict[str, np.ndarray] = field(default_factory=dict)
    planted: int | None = None


def build_case(
    variant: str | Variant,
    seed: int = 0,
    arch: str = "cnn",
    generator: str = "digits",
    *,
    steps: int | None = None,
    review_limit: int | None = None,
) -> Case:
    """Plant ``variant`` on ``generator``'s pool for ``seed`` and train ``arch`` on it.

    Args:
        variant: a name of :data:`VARIANTS` (or the variant itself).
        seed: seeds the pool's split, every planted choice, the initial weights and the batches.
        arch: ``"cnn"``, ``"resnet"`` or ``"vit"``.
        generator: ``"digits"``, ``"shapes"`` or ``"fundus"``.
        steps: training steps (default: the architecture's; 60 gives a case in a second or two).
        review_limit: keep about this many review images, for quick use: a seeded uniform sample, at least 3 of
            each planted kind, and every image of the planted class.

    Returns:
        The :class:`Case`.
    """
    v = VARIANTS[variant] if isinstance(variant, str) else variant
    rng = np.random.default_rng([seed, zlib.crc32(v.name.encode())])
    p = im.pool(generator, seed)
    d = _Draft(
        p.train_images.copy(), p.train_labels.copy(), p.review_images.copy(), p.review_labels.copy(),
        p.review_labels.copy(), list(p.class_names), dict(v.params.get("recipe", {})),
    )  # fmt: skip
    k = int(rng.integers(len(d.names)))
    _plant(v, d, k, rng)
    if review_limit is not None:
        _limit(d, review_limit, rng)
    recipe = _recipe(d.recipe, d.train_x.shape[1])
    notes: dict[str, Any] = {}
    if "head" in v.params or v.name == "control/plain":
        model = copy.deepcopy(_base_model(generator, seed, arch, steps))
    else:
        x = recipe.apply_array(d.train_x)
        model = train(arch, x, torch.from_numpy(d.train_y), len(d.names), seed, steps)
    review_inputs = recipe.apply_array(d.review_x)
    if "head" in v.params:
        _edit_head(model, v.params["head"], k, review_inputs, d.review_true)
    if "cue" in v.params:
        notes["follows_cue"] = _follows_cue(model, d, recipe, k, v.params["cue"])
    predicted = predict(model, review_inputs)
    notes["accuracy_true"] = float((predicted == d.review_true).mean())
    notes["accuracy_given"] = float((predicted == d.review_y).mean())
    data = ImageData(
        f"planted:{v.name}", d.review_y, d.names, recipe, f"planted-{v.name}-{generator}-{seed}",
        arrays=d.review_x,
    )  # fmt: skip
    return Case(v, generator, seed, arch, model, data, d.review_true, d.kinds, d.planted, notes)


def _recipe(spec: dict[str, Any], side: int) -> Preprocessing:
    """The model's recorded recipe: RGB or L, optionally halved in size and blurred; uint8 values / 255."""
    size = (side // 2, side // 2) if spec.get("halve") else None
    mode = spec.get("mode", "RGB")
    recipe = Preprocessing(mode=mode, size=size, blur_sigma=spec.get("blur_sigma", 0.0), mean=MEAN, std=STD)
    return recipe.for_container(np.dtype(np.uint8))


@functools.lru_cache(maxsize=8)
def _base_model(generator: str, seed: int, arch: str, steps: int | None) -> nn.Module:
    """The healthy model of a pool (trained once per process; the controls and the head edits start from it)."""
    p = im.pool(generator, seed)
    x = _recipe({}, p.size).apply_array(p.train_images)
    return train(arch, x, torch.from_numpy(p.train_labels.copy()), len(p.class_names), seed, steps)


# ---------------------------------------------------------------------------------------------- planting


def _plant(v: Variant, d: _Draft, k: int, rng: np.random.Generator) -> None:
    """Apply the variant's defect to the draft (class ``k`` is the one it is planted on, where one is)."""
    params = v.params
    if "noise" in params:
        d.train_y = _noisy(d.train_y, params["noise"], params["rate"], len(d.names), rng)
        d.review_y = _noisy(d.review_y, params["noise"], params["rate"], len(d.names), rng)
        d.kinds["flipped"] = d.review_y != d.review_true
    elif "cue" in params:
        _shortcut(d, k, params["cue"], params["rate"], params["spill"], rng)
    elif "feature" in params:
        _feature_class(d, k, params["feature"], bool(params.get("crop")), rng)
    elif params.get("absent") == "noise":
        members = np.flatnonzero(d.train_y == k)
        d.train_x[members] = im.noise_images(len(members), d.train_x.shape[1], rng)
        d.planted = k
    elif params.get("absent") == "feature":
        _feature_class(d, k, "dots", False, rng, in_training=False)
    elif "keep" in params:
        members = np.flatnonzero(d.train_y == k)
        kept = rng.choice(members, size=max(2, round(params["keep"] * len(members))), replace=False)
        keep = (d.train_y != k) | np.isin(np.arange(len(d.train_y)), kept)
        d.train_x, d.train_y = d.train_x[keep], d.train_y[keep]
        d.planted = k
    elif "head" in params:
        d.planted = k


def _noisy(y: np.ndarray, mode: str, rate: float, classes: int, rng: np.random.Generator) -> np.ndarray:
    """Labels with planted noise: ``uniform`` (a share ``rate`` of all images to a random other class),
    ``pairs`` (classes paired at random, a share ``rate`` of each flipped to its partner) or ``cycle`` (a share
    ``rate`` of class c to c + 1)."""
    out = y.copy()
    if mode == "uniform":
        flip = rng.choice(len(y), size=round(rate * len(y)), replace=False)
        out[flip] = (y[flip] + rng.integers(1, classes, size=len(flip))) % classes
        return out
    order = rng.permutation(classes)
    partner = np.arange(classes)
    if mode == "pairs":
        for a, b in zip(order[0::2], order[1::2], strict=False):
            partner[a], partner[b] = b, a
    elif mode == "cycle":
        partner = (partner + 1) % classes
    else:
        raise ValueError(f"unknown noise {mode!r}")
    for c in range(classes):
        members = np.flatnonzero(y == c)
        if partner[c] != c:
            flip = rng.choice(members, size=round(rate * len(members)), replace=False)
            out[flip] = partner[c]
    return out


def _shortcut(d: _Draft, t: int, cue: str, rate: float, spill: bool, rng: np.random.Generator) -> None:
    """The cue on a share ``rate`` of class ``t``'s training images and on a tenth of its review images; with
    spill-over also on 3 % of the other classes' training images and 2 % of their review images, all relabelled
    ``t`` (label errors the shortcut hides)."""
    members = np.flatnonzero(d.train_y == t)
    marked = rng.choice(members, size=round(rate * len(members)), replace=False)
    d.train_x[marked] = im.add_cue(d.train_x[marked], cue)
    review = np.flatnonzero(d.review_true == t)
    shown = rng.choice(review, size=max(3, len(review) // 10), replace=False)
    d.review_x[shown] = im.add_cue(d.review_x[shown], cue)
    d.kinds["cue"] = np.isin(np.arange(len(d.review_y)), shown)
    if spill:
        for x, y, share, kind in (
            (d.train_x, d.train_y, 0.03, None),
            (d.review_x, d.review_y, 0.02, "spill"),
        ):
            others = np.flatnonzero(y != t)
            moved = rng.choice(others, size=max(3, round(share * len(others))), replace=False)
            x[moved] = im.add_cue(x[moved], cue)
            y[moved] = t
            if kind:
                d.kinds[kind] = np.isin(np.arange(len(y)), moved)
    d.planted = t


def _feature_class(
    d: _Draft, k: int, feature: str, cropped: bool, rng: np.random.Generator, in_training: bool = True
) -> None:
    """A new class ``k*``: a seeded third of class ``k``, told from ``k`` only by ``feature`` (in the review
    images always; in the training images only ``in_training``). With ``cropped``, every image then loses its
    border (the crop of the case's pipeline)."""
    new = len(d.names)
    d.names.append(f"{d.names[k]}*")
    if feature in ("checker", "hue"):
        d.train_x, d.review_x = im.dimmed(d.train_x), im.dimmed(d.review_x)
    for x, y, truth, show in (
        (d.train_x, d.train_y, None, in_training),
        (d.review_x, d.review_y, d.review_true, True),
    ):
        members = np.flatnonzero(y == k)
        chosen = rng.choice(members, size=len(members) // 3, replace=False)
        if feature == "hue":
            parent = np.setdiff1d(members, chosen)
            x[parent] = im.add_feature(x[parent], "hue", rng, parent=True)
        if show:
            x[chosen] = im.add_feature(x[chosen], feature, rng)
        y[chosen] = new
        if truth is not None:
            truth[chosen] = new
    if cropped:
        d.train_x, d.review_x = im.crop(d.train_x), im.crop(d.review_x)
    d.planted = new


def _limit(d: _Draft, limit: int, rng: np.random.Generator) -> None:
    """Keep about ``limit`` review images: a seeded uniform sample (planted kinds keep their share, at least 3
    each), plus every image of the planted class (the diagnosis judges it)."""
    n = len(d.review_y)
    keep = np.zeros(n, dtype=bool)
    keep[rng.choice(n, size=min(n, limit), replace=False)] = True
    for m in d.kinds.values():
        keep[np.flatnonzero(m)[:3]] = True
    if d.planted is not None:
        keep |= d.review_true == d.planted
    d.review_x, d.review_y, d.review_true = d.review_x[keep], d.review_y[keep], d.review_true[keep]
    d.kinds = {name: m[keep] for name, m in d.kinds.items()}


# ------------------------------------------------------------------------------------------- after training


def _edit_head(model: nn.Module, how: str, k: int, review: torch.Tensor, truth: np.ndarray) -> None:
    """Class ``k``'s read-out: ``zeroed`` (its row and bias set to 0), ``scaled`` (both × 0.2) or ``biased``
    (its bias lowered until 90 % of its review images lose to another class)."""
    head = model.get_submodule("head")
    assert isinstance(head, nn.Linear)
    with torch.no_grad():
        if how == "zeroed":
            head.weight[k] = 0.0
            head.bias[k] = 0.0
        elif how == "scaled":
            head.weight[k] *= 0.2
            head.bias[k] *= 0.2
        elif how == "biased":
            out = model(review[torch.from_numpy(truth == k)])
            others = out.clone()
            others[:, k] = -torch.inf
            margin = out[:, k] - others.max(1).values
            head.bias[k] -= float(torch.quantile(margin, 0.9)) + 1e-3
        else:
            raise ValueError(f"unknown head edit {how!r}")


def _follows_cue(model: nn.Module, d: _Draft, recipe: Preprocessing, t: int, cue: str) -> float:
    """How often the cue alone turns a clean review image of another class into ``t`` (was the shortcut learned?)."""
    clean = np.flatnonzero((d.review_true != t) & (d.review_y == d.review_true))
    for m in d.kinds.values():
        clean = clean[~m[clean]]
    cued = recipe.apply_array(im.add_cue(d.review_x[clean], cue))
    return float((predict(model, cued) == t).mean())
