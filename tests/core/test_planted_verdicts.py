"""The verdict rules on small planted cases of each defect family (the planted-defect benchmark's, in seconds).

The benchmark itself (``python -m benchmarks.planted``: every variant, generator, seed and architecture at full
training) runs outside the suite; docs/analyses.md, "Planted-defect benchmark", reports it. Here one small case of
each family — a development variant, the CNN, about 200 review images, 60 to 150 training steps
(``benchmarks/planted/small.py``: which case, and why that many steps) — checks what each rule must do. The bounds
on AUCs sit well below the values measured on seeds 0–4 (``python -m benchmarks.planted.small --seeds 0 1 2 3 4``
prints them; quoted beside each bound), and every assertion here held on those five seeds. Each case is built
once; the whole file takes about 15 s of CPU on one thread.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the benchmarks live beside the package, not in it (python -m pytest adds it)
    sys.path.append(str(ROOT))

from benchmarks.planted.cases import Case  # noqa: E402
from benchmarks.planted.small import auc, build_small, training_data  # noqa: E402
from essence.core import Diagnosis, ImageData, Triage, deviation_scores, diagnose  # noqa: E402
from essence.core.analyses.diagnosis.results import (  # noqa: E402
    DROWNING,
    NOT_LEARNED,
    NOT_READ_OUT,
    OK,
    ClassDiagnosis,
)
from essence.core.analyses.diagnosis.suspect_steps import audit_steps  # noqa: E402
from essence.core.analyses.diagnosis.training import UNLIKE  # noqa: E402

# The benchmark's slice: the last hidden layer, [B, 32], which the linear head reads.
LAYER = "hidden"


def triaged(family: str) -> tuple[Case, Triage]:
    case = build_small(family)
    return case, deviation_scores(case.model, case.review, LAYER, device="cpu")


def diagnosed(case: Case, train_data: ImageData | None = None) -> tuple[ClassDiagnosis, Diagnosis]:
    """The planted class's diagnosis, and the whole diagnosis."""
    d = diagnose(case.model, case.review, LAYER, device="cpu", train_data=train_data)
    assert case.planted_class is not None
    return d.classes[case.planted_class], d


def named(c: ClassDiagnosis) -> list[str]:
    """The preprocessing steps the audit names (none where it did not run)."""
    return [s.step for s in c.suspect_steps]


# ------------------------------------------------------------------------------------------------ triage


@pytest.fixture(scope="module")
def noise() -> tuple[Case, Triage]:
    return triaged("label noise")


@pytest.fixture(scope="module")
def shortcut() -> tuple[Case, Triage]:
    return triaged("shortcut")


def test_flipped_labels_rank_high_by_self_confidence_and_in_the_merged_queue(
    noise: tuple[Case, Triage],
) -> None:
    case, t = noise
    assert t.score == "merged"  # the default queue
    # self_confidence = 1 − p(given label): a flipped image of a class the model learned gets a low p(label)
    # unless the model memorised the flip, which 60 steps on 80 % clean labels do not. Measured, seeds 0, 1, 2:
    # 0.95, 0.98, 0.95 (seeds 3, 4: 0.98, 0.99).
    assert auc(case, t, "flipped", "self_confidence") > 0.85
    # merged = max(rank of self_confidence, rank of reasoning among the images predicted as labelled): the
    # flipped images keep their self-confidence rank, but the merged queue gives half its top to correct
    # predictions with unusual reasons by design, so clean images rank high too. Measured: 0.85, 0.84, 0.79
    # (0.90, 0.84); the benchmark at full training, digits: median 0.80, worst 0.67 over both noise variants.
    assert auc(case, t, "flipped", "merged") > 0.70


def test_reasoning_finds_images_right_for_the_wrong_reason(shortcut: tuple[Case, Triage]) -> None:
    """A frame on half of one shape's training images (shapes, frame-50): the score works on this cue.

    The benchmark shows where it does not: on digits its median AUC on the cue images is 0.69 (development:
    marks and frames, worst 0.38) and 0.60 (held out: tints and textures, worst 0.06); a tint, or a shortcut most
    of the class carries, becomes the class's own reasons. Nothing here says the score finds every shortcut.
    """
    case, t = shortcut
    # The plant worked: the frame alone turns clean images of other shapes into the target (0.99, 1.00, 0.96,
    # 0.83, 1.00 on seeds 0–4), and the framed images of the target are predicted right (all, on seeds 0–4).
    assert case.notes["follows_cue"] > 0.5
    cue = case.kinds["cue"][t.indices]
    assert (t.predicted[cue] == t.labels[cue]).mean() >= 0.8
    # Right and confident, they are the least suspect by every output score (self_confidence AUC 0.00 on seeds
    # 0–4) ...
    assert auc(case, t, "cue", "self_confidence") < 0.5
    # ... and the reasoning score, which reads how the units contribute, ranks them first: 1.00 on seeds 0–4
    # (10 framed images among about 260).
    assert auc(case, t, "cue", "reasoning") > 0.8
    # The merged queue keeps them near its top (its reasoning half): 0.98 on seeds 0–4.
    assert auc(case, t, "cue", "merged") > 0.8


# --------------------------------------------------------------------------------------------- diagnosis


@pytest.fixture(scope="module")
def zeroed() -> Case:
    # The whole review half (about 900 images), not 200: the limit keeps every image of the planted class (a
    # third of the 200), and with the training data given the diagnosis then reads the class as rare in
    # training (9–11 % of it against 32–36 % of the evaluated images, seeds 0–2) and calls it "not learned".
    return build_small("not read out", review_limit=None)


def test_a_zeroed_read_out_row_is_not_read_out(zeroed: Case) -> None:
    c, d = diagnosed(zeroed)
    assert c.diagnosis == NOT_READ_OUT, c.advice
    # The slice still carries the class (probe AUC 1.00 on seeds 0–4).
    assert c.probe is not None and c.probe.separates
    # The row is the only edit of a healthy model (the control below): no other class is flagged (seeds 0–4).
    assert [k.name for k in d.classes if k.diagnosis != OK] == [c.name]


def test_the_training_data_keeps_a_zeroed_row_not_read_out(zeroed: Case) -> None:
    c, _ = diagnosed(zeroed, train_data=training_data(zeroed))
    assert c.training is not None and c.training.resembles and not c.training.rare
    assert c.diagnosis == NOT_READ_OUT, c.advice


def test_a_class_rare_in_training_is_rarely_predicted_and_the_advice_says_why_no_expert() -> None:
    """4 % of one digit's training images kept: the benchmark expects "drowning experts".

    The benchmark measures 0 hits of 4 on digits (development, CNN and ResNet at full training: "ok" twice,
    where the plant did not take — recall 0.69 and 0.52 — and "not read out" twice); a ViT gives the only hit of
    the half. On this small case the rule
    says "not read out" on seeds 0–4 at 60 steps (at 100 steps "drowning experts" on seed 2 of 5): the slice
    separates the class (probe AUC 0.95–1.00) and no mask of its units passes the expert criterion. What holds,
    and is asserted: the class is audited as rarely predicted, and where no expert is found the advice names
    the part of the criterion that failed.
    """
    case = build_small("drowning experts")
    c, _ = diagnosed(case)
    assert c.audit_reason == "rarely predicted"
    if c.expert is None:  # today (seeds 0–4): "not read out"
        assert c.diagnosis in (NOT_READ_OUT, NOT_LEARNED)
        failed = ("no mask of its units makes the head predict it", "fail on precision")
        assert any(words in c.advice for words in failed), c.advice
    else:  # what the benchmark expects
        assert c.diagnosis == DROWNING


def test_a_blur_that_erases_the_only_difference_is_named() -> None:
    """A third of one digit become a new class, told apart only by a one-pixel checkerboard; the recipe's
    σ = 1 px blur erases it. "not learned" and the blur named on seeds 0–4 (150 steps)."""
    case = build_small("preprocessing loss")
    c, _ = diagnosed(case)
    assert c.diagnosis == NOT_LEARNED, c.advice
    assert c.audit is not None and c.audit.raw_separates  # the raw images told the class from its parent
    (step,) = named(c)
    assert case.variant.step and step.startswith(case.variant.step), step  # "Gaussian blur σ=1 px"


def test_a_blur_that_erases_nothing_that_matters_is_not_named() -> None:
    """The innocent twin: a class's training images replaced by noise, under a σ = 0.6 px blur that leaves the
    digits legible. Without the training data the verdict is "not read out" (seeds 0–4), so the diagnosis runs
    no audit; the audit it would run (the class against its neighbour) is run here and clears the blur."""
    case = build_small("lossy step, not the cause")
    c, _ = diagnosed(case)
    assert named(c) == []
    assert c.neighbour is not None
    names = list(case.review.class_names)
    audit = c.audit or audit_steps(case.review, c.cls, names.index(c.neighbour))
    assert audit.raw_separates
    (tested,) = audit.steps
    assert tested.step.startswith("Gaussian blur"), tested.step  # σ = 0.6 px, the recipe's one lossy step
    assert audit.suspects == [], tested.evidence  # cleared on seeds 0–4


def test_a_healthy_model_is_ok_everywhere() -> None:
    case = build_small("healthy control")
    d = diagnose(case.model, case.review, LAYER, device="cpu")
    # Seeds 0–4 at 100 steps (accuracy 0.88–0.95); at 60 steps one class was flagged on seed 3.
    assert [c.name for c in d.classes if c.diagnosis != OK] == []
    assert [s for c in d.classes for s in named(c)] == []


def test_a_class_trained_on_noise_is_not_learned_given_the_training_data() -> None:
    """One digit's training images replaced by uniform noise. Without the training data the rule cannot tell
    this from a head that ignores the class, and says "not read out" (seeds 0–4: the slice separates the real
    digits, probe AUC 0.95–1.00); with it, the training images labelled with the class look nothing like its
    evaluated ones ("not learned", seeds 0–4)."""
    case = build_small("not learned")
    c, _ = diagnosed(case, train_data=training_data(case))
    assert c.diagnosis == NOT_LEARNED, c.advice
    # For that reason, not for rarity (the review limit makes the class look rare in training too: see zeroed).
    assert c.training is not None and c.training.cause == UNLIKE
    assert named(c) == []  # the cause is the training data, no preprocessing step
