"""The diagnosis of a rarely predicted class: drowning experts, not read out, or not learned — and what to suspect.

For every class: recall, precision and how often the model predicts it. A class predicted for fewer than
``rare_share`` × its true count is *rarely predicted*, and these questions name the cause:

1. **Can the model's own read-out be made to predict it?** The honest expert test
   (:func:`~essence.core.analyses.experts.evidence.expert_evidence`: cross-fitted, corrected for the grid, beating the
   activation-ranked control and random masks), where the slice separates the class from its neighbour (step
   3's probe). Yes → **drowning experts**: the model learned the class, but in the full model other classes'
   units outweigh it. Remedy: rebalance the training data or reweight the loss. A mask that passes where the
   probe does not separate fires on the neighbour's images too (precision near the class's share of the
   pair, the base rate): no expert, and the class goes on to step 4.
2. **Was it taught as it is evaluated?** With ``train_data`` only (:mod:`essence.core.analyses.diagnosis.training`):
   absent from it, or its training images unlike its evaluated ones at the slice → **not learned**, whatever a
   mask finds (it was not learned from the class's images); rare in it and no expert → **not learned** too.
   Remedy: collect training images of the class, or check the ones labelled with it; no step is blamed.
3. **Is its information in the slice?** A held-out linear probe of the class against its *neighbour* — the
   class it is most confused with (:mod:`essence.core.analyses.diagnosis.probe`). Separates beyond chance → **not read out**: the
   slice carries it but the layers above never use it. Remedy: retrain or rebalance the head (a fact only when
   the training data shows the class present and alike; else the remedy says what the training data would tell).
4. Otherwise **not learned**: the information is not at the slice. Each lossy step of the recorded recipe is
   tested on the raw images for erasing what separates the class from its neighbour
   (:mod:`essence.core.analyses.diagnosis.suspect_steps`); the suspects are named with their evidence. Remedy: change that step
   (the paper's case: a Gaussian blur erased the microaneurysms that define class 2), or, with no suspect,
   look at the data itself.

A class predicted often enough is audited all the same when its recall is significantly low (below
``low_recall_share`` × the median per-class recall by a one-sided binomial test; ``audit_reason`` says which).
Everything else is "ok". Every class also gets its probe (and, with the training data, its training facts), so
the JSON is the same shape for all. Every verdict carries its measured precision on the held-out planted-defect
benchmark (:mod:`essence.core.analyses.diagnosis.benchmark`).

The advice quotes the number that decided: the probe's AUC against its threshold (flagged *borderline* when
within one Hanley–McNeil standard error of it), and, when no expert exists, the part of the expert criterion
that failed — the recall gain over the references, or the precision floor with the best precision reached.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from essence.core.analyses.diagnosis import benchmark
from essence.core.analyses.diagnosis.advice import (
    drowned_by,
    expert_words,
    margin,
    not_learned_remedy,
    probe_words,
    rarity,
    read_out_remedy,
    training_words,
)
from essence.core.analyses.diagnosis.probe import Probe, probe_class, probe_features
from essence.core.analyses.diagnosis.results import (
    DROWNING,
    NOT_LEARNED,
    NOT_READ_OUT,
    OK,
    ClassDiagnosis,
    Diagnosis,
    DiagnosisSettings,
)
from essence.core.analyses.diagnosis.suspect_steps import StepAudit, audit_steps
from essence.core.analyses.diagnosis.training import (
    ABSENT,
    RARE,
    UNLIKE,
    TrainingFacts,
    never_taught_remedy,
    training_of,
)
from essence.core.analyses.experts.evidence import ExpertEvidence, expert_evidence
from essence.core.analyses.experts.sweep import Expert
from essence.core.analyses.profiles import ClassProfiles, class_profiles
from essence.core.base.model_state import CancelFlag
from essence.core.engine.activation_cache import SliceCache, cache_slice
from essence.core.engine.activation_source import ActivationSource
from essence.core.engine.influence import Progress
from essence.core.inputs.data import ImageData

__all__ = [
    "DROWNING",
    "NOT_LEARNED",
    "NOT_READ_OUT",
    "OK",
    "ClassDiagnosis",
    "Diagnosis",
    "DiagnosisSettings",
    "diagnose",
]


def diagnose(
    model: nn.Module,
    data: object,
    layer: str,
    *,
    settings: DiagnosisSettings | None = None,
    profiles: ClassProfiles | None = None,
    preprocessing: str | None = None,
    batch_size: int = 256,
    device: str | torch.device = "auto",
    progress: Progress | None = None,
    cancel: CancelFlag = None,
    activations: ActivationSource | None = None,
    train_data: object = None,
) -> Diagnosis:
    """Diagnose every class at ``layer``: ok, drowning experts, not read out, or not learned.

    Args:
        model: the classifier.
        data: an :class:`~essence.core.inputs.data.ImageData` (raw images and recipe: the preprocessing audit runs)
            or ``(x, labels)`` tensors (no audit).
        layer: module path of the slice.
        settings: thresholds and grid (:class:`DiagnosisSettings`).
        profiles: class profiles at ``layer`` (computed if not given; they give each class's top units).
        preprocessing: a description of the inputs' recipe (default: the data's, if it has one).
        batch_size, device, progress, cancel: as elsewhere (progress and cancel cover the profile pass).
        activations: where z may be stored (read instead of running h, for the profiles and the slice's
            cache; :class:`~essence.core.engine.activation_source.ActivationSource`).
        train_data: the data the model was trained on, given like ``data`` (its labels in the model's classes):
            each class's :class:`~essence.core.analyses.diagnosis.training.TrainingFacts` tell "not learned" from
            "not read out" (one more pass of the model, over it, up to the slice). ``None``: not used.

    Returns:
        A :class:`Diagnosis`.

    Raises:
        LayerNotFoundError, LabelMismatchError, SpecError: bad slice, classes or grid (or training data whose
            classes are not the evaluated data's).

    Examples:
        A head whose class 2 is pushed below the others, on labels the healthy model gives:

        >>> import torch
        >>> from torch import nn
        >>> from essence.core import diagnose
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
        >>> x = torch.randn(90, 4)
        >>> with torch.no_grad():
        ...     y = model(x).argmax(1)
        ...     model[2].bias[2] -= 3.0
        >>> d = diagnose(model, (x, y), "1", device="cpu")
        >>> [c.diagnosis for c in d.classes], d.never_predicted
        (['ok', 'ok', 'not read out'], ['class 2'])
        >>> d.classes[2].remedy.startswith("the layers above the slice never read it out")
        True

        Given the training data (here: the same images), the class is present and alike, so the remedy is a fact:

        >>> d = diagnose(model, (x, y), "1", device="cpu", train_data=(x, y))
        >>> c = d.classes[2]
        >>> c.diagnosis, c.training.count, c.training.resembles
        ('not read out', 23, True)
        >>> "though the training data holds 23 images of it that look like these" in c.remedy
        True
    """
    s = settings or DiagnosisSettings()
    if profiles is None:
        profiles = class_profiles(
            model,
            data,
            layer,
            granularity=s.granularity,
            kind=s.kind,
            allow_empty=True,
            batch_size=batch_size,
            device=device,
            progress=progress,
            cancel=cancel,
            activations=activations,
        )
    cache = cache_slice(model, data, layer, batch_size=batch_size, device=device, activations=activations)
    labels = cache.labels.numpy()
    predicted = cache.outputs.argmax(1).numpy()
    num = cache.num_classes
    names = list(getattr(data, "class_names", None) or profiles.class_names)
    confusion = np.zeros((num, num), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    recipe = getattr(data, "preprocessing", None)
    described = preprocessing or (recipe.describe() if recipe is not None else None)
    features = probe_features(cache.z, s.probe.max_features)
    evaluated = (features, labels, bool(getattr(data, "class_names", None)))
    taught = training_of(
        model, train_data, layer, names, evaluated, s.training,
        max_features=s.probe.max_features, batch_size=batch_size, device=device,
    )  # fmt: skip
    run = _ClassRun(
        model,
        data,
        layer,
        names,
        confusion,
        profiles,
        cache,
        features,
        s,
        described,
        batch_size,
        device,
        taught,
    )
    table = benchmark.precision_table()
    return Diagnosis(
        layer=layer,
        classes=[_with_precision(run.diagnose(i), table) for i in range(num)],
        accuracy=float((labels == predicted).mean()),
        confusion=confusion,
        preprocessing=described,
        route=cache.sliced.route,
        settings=s,
        recipe=recipe.to_dict() if recipe is not None else None,
        training_instances=None if train_data is None else (taught[0].total if taught else 0),
        benchmark=benchmark.provenance(table),
    )


def _with_precision(c: ClassDiagnosis, table: dict[str, object] | None) -> ClassDiagnosis:
    """The verdict with its benchmark precision (and the named step's, where the audit names one); a class
    without instances is not judged, so it carries none."""
    if c.count == 0:
        return c
    step = benchmark.precision_of(benchmark.STEP_NAMED, table) if c.suspect_steps else None
    return replace(
        c, benchmark_precision=benchmark.precision_of(c.diagnosis, table), step_benchmark_precision=step
    )


@dataclass
class _ClassRun:
    """What every class's diagnosis shares (one slice cache, one set of probe features)."""

    model: nn.Module
    data: object
    layer: str
    names: list[str]
    confusion: np.ndarray
    profiles: ClassProfiles
    cache: SliceCache
    features: np.ndarray
    s: DiagnosisSettings
    recipe: str | None
    batch_size: int
    device: str | torch.device
    training: list[TrainingFacts] | None = None

    def diagnose(self, i: int) -> ClassDiagnosis:
        """Class ``i``'s verdict: ok unless rarely predicted; then drowning, not learned or not read out."""
        s, base = self.s, self.facts(i)
        if base.count == 0:
            return replace(base, advice="no instances in the data: not judged")
        j = self.neighbour(i)
        labels = self.cache.labels.numpy()
        probe = None if j is None else probe_class(self.features, labels, i, j, self.names, s.probe)
        rest = probe_class(self.features, labels, i, None, self.names, s.probe)
        base = replace(base, neighbour=None if j is None else self.names[j], probe=probe, probe_rest=rest)
        reason = self.audit_reason(base)
        if reason is None:
            return base
        base = replace(base, audit_reason=reason)
        evidence = expert_evidence(
            self.model, self.data, self.layer, i, cache=self.cache, neighbour=j, criterion=s.criterion,
            alphas=s.alphas, betas=s.betas, kind=s.kind, granularity=s.granularity, seed=s.seed,
            batch_size=self.batch_size, device=self.device,
        )  # fmt: skip
        taught = base.training
        if taught is not None and taught.cause in (
            ABSENT,
            UNLIKE,
        ):  # no expert can show what was never taught
            return self.never_taught(base, evidence, taught)
        # An expert shows the class learned only where the slice tells it from its neighbour (module docstring).
        if evidence.best is not None and (probe is None or probe.separates):
            return self.drowning(base, evidence, evidence.best)
        if probe is not None and probe.separates:
            return self.not_read_out(base, evidence, probe)
        return self.not_learned(base, evidence, self.audit(i, j))

    def facts(self, i: int) -> ClassDiagnosis:
        """Class ``i``'s counts, rates, confusions, top units and training facts, judged ok until a question
        says otherwise."""
        cm, names, s = self.confusion, self.names, self.s
        count, pred, tp = int(cm[i].sum()), int(cm[:, i].sum()), int(cm[i, i])
        order = self.profiles.order(i)
        return ClassDiagnosis(
            cls=i,
            name=names[i],
            count=count,
            recall=tp / count if count else float("nan"),
            precision=tp / pred if pred else float("nan"),
            predicted_count=pred,
            confused_with=[
                (names[j], int(cm[i, j])) for j in np.argsort(-cm[i], kind="stable") if j != i and cm[i, j]
            ],
            # A unit at 0 pushes neither way: it is no top unit of either sign (fewer than top_units then).
            top_positive=[int(u) for u in order[: s.top_units] if self.profiles.mean[i, u] > 0],
            top_negative=[int(u) for u in order.flip(0)[: s.top_units] if self.profiles.mean[i, u] < 0],
            diagnosis=OK,
            expert=None,
            drowned_by=[],
            advice="",
            training=None if self.training is None else self.training[i],
        )

    def audit_reason(self, c: ClassDiagnosis) -> str | None:
        """Why class ``c`` is audited: rarely predicted, significantly low recall (DiagnosisSettings), or not."""
        from scipy.stats import binom

        s, cm = self.s, self.confusion
        if c.predicted_count < s.rare_share * c.count:
            return "rarely predicted"
        counts = cm.sum(1)
        median = float(np.median(np.diag(cm)[counts > 0] / counts[counts > 0]))
        expected = s.low_recall_share * median
        hits = int(cm[c.cls, c.cls])
        if hits < expected * c.count and binom.cdf(hits, c.count, expected) < 1.0 - s.low_recall_confidence:
            return "low recall"
        return None

    def drowning(self, base: ClassDiagnosis, evidence: ExpertEvidence, best: Expert) -> ClassDiagnosis:
        """An expert exists: the model learned the class, and other classes' units outweigh it."""
        drowned = drowned_by(best, base.confused_with, self.names, self.profiles)
        culprits = ", ".join(drowned or [c for c, _ in base.confused_with]) or "other classes"
        remedy = f"rebalance the training data or reweight the loss for {base.name}"
        return replace(
            base, diagnosis=DROWNING, expert=best, drowned_by=drowned, evidence=evidence,
            advice=(
                f"{rarity(base)}; an expert exists (α={best['alpha']}, β={best['beta']}: cross-fitted recall "
                f"{best['recall']:.2f} at precision {best['precision']:.2f}, against the model's "
                f"{base.recall:.2f} and {best['reference_recall']:.2f} for the best control or random mask "
                f"of its size) but is drowned by the units of {culprits}{training_words(base)}. Remedy: {remedy}"
            ),
            remedy=remedy,
        )  # fmt: skip

    def never_taught(
        self, base: ClassDiagnosis, evidence: ExpertEvidence, facts: TrainingFacts
    ) -> ClassDiagnosis:
        """Not taught as it is evaluated: not learned, whatever the slice separates or (absent, unlike) a mask
        finds — neither was learned from the class's images. No preprocessing step is blamed."""
        probe, best = base.probe, evidence.best
        remedy = never_taught_remedy(facts, base.name, self.s.training)
        seen = "separates" if probe is not None and probe.separates else "does not separate"
        expert = (
            "no expert"
            if best is None
            else f"a mask passes the expert test (α={best['alpha']}, β={best['beta']}) all the same"
        )
        return replace(
            base, diagnosis=NOT_LEARNED, evidence=evidence,
            advice=(
                f"{rarity(base)}; {expert}{training_words(base)}: not learned — the head was never taught it as it "
                f"is evaluated (the slice {seen} it from {base.neighbour}{probe_words(probe)}). Remedy: {remedy}"
            ),
            remedy=remedy, borderline=probe is not None and probe.borderline, borderline_margin=margin(probe),
        )  # fmt: skip

    def not_read_out(self, base: ClassDiagnosis, evidence: ExpertEvidence, probe: Probe) -> ClassDiagnosis:
        """No expert, but the slice separates the class: the layers above it never read it out."""
        remedy = read_out_remedy(self.layer, base.training)
        return replace(
            base, diagnosis=NOT_READ_OUT, evidence=evidence,
            advice=(
                f"{rarity(base)}; the slice separates it from {base.neighbour}{probe_words(probe)} but "
                f"{self.why_no_expert(base, evidence)}{training_words(base)}. Remedy: {remedy}"
            ),
            remedy=remedy, borderline=probe.borderline, borderline_margin=margin(probe),
        )  # fmt: skip

    def not_learned(
        self, base: ClassDiagnosis, evidence: ExpertEvidence, audit: StepAudit | None
    ) -> ClassDiagnosis:
        """No expert and no separation at the slice: not learned; the preprocessing audit names suspects."""
        probe = base.probe
        remedy = not_learned_remedy(audit, self.recipe, base.neighbour)
        taught = base.training
        if taught is not None and taught.cause == RARE and (audit is None or not audit.suspects):
            # Rare in training and no step to suspect: the few images it was taught from are the lead. (Rarity
            # never pre-empts the audit: a class a third the size of the others is learnable, and a step
            # that erases its difference is the better explanation when the audit finds one.)
            remedy = never_taught_remedy(taught, base.name, self.s.training)
        return replace(
            base, diagnosis=NOT_LEARNED, evidence=evidence, audit=audit,
            advice=(
                f"{rarity(base)}; {expert_words(evidence.best)}, and the slice does not separate it from "
                f"{base.neighbour}"
                f"{probe_words(probe)}{training_words(base)}: not learned. Remedy: {remedy}"
            ),
            remedy=remedy, borderline=probe is not None and probe.borderline, borderline_margin=margin(probe),
        )  # fmt: skip

    def why_no_expert(self, base: ClassDiagnosis, evidence: ExpertEvidence) -> str:
        """Which part of the expert criterion failed, quoting the number that decided it.

        Recall decides when no mask adds the needed gain over the model and every reference mask; otherwise
        every mask that does fell below the precision floor, and the most precise of them is quoted.
        """
        sweep, c = evidence.sweep, evidence.criterion
        reference = np.maximum(evidence.reference, sweep.baseline["recall"])
        lifts = np.asarray(sweep.recall - reference >= evidence.gain - 1e-12)
        if not lifts.any():
            a, b = np.unravel_index(int(np.argmax(sweep.recall - reference)), reference.shape)
            return (
                f"no mask of its units makes the head predict it more than its references (best cross-fitted "
                f"recall {float(sweep.recall[a, b]):.2f} against {float(reference[a, b]):.2f} for the model or "
                f"the best control or random mask of its size; the criterion asks {evidence.gain:.2f} more)"
            )
        labels = self.cache.labels
        j = None if base.neighbour is None else self.names.index(base.neighbour)
        pair = 0.0 if j is None else base.count / (base.count + int((labels == j).sum()))
        floor = c.precision_floor(sweep.baseline["precision"], sweep.prevalence, pair)
        precision = np.where(lifts, np.nan_to_num(sweep.precision, nan=-1.0), -1.0)
        a, b = np.unravel_index(int(np.argmax(precision)), precision.shape)
        return (
            f"the masks that make the head predict it (cross-fitted recall up to "
            f"{float(np.max(sweep.recall[lifts])):.2f}) fail on precision: the most precise reaches "
            f"{max(0.0, float(precision[a, b])):.2f} (recall {float(sweep.recall[a, b]):.2f}), below the "
            f"{floor:.2f} the criterion asks"
        )

    def neighbour(self, i: int) -> int | None:
        """The class most confused with ``i`` (either way); without confusion, the nearest class mean of z."""
        cm = self.confusion
        present = [j for j in range(len(cm)) if j != i and cm[j].sum() > 0]
        if not present:
            return None
        both = {j: int(cm[i, j] + cm[j, i]) for j in present}
        best = max(present, key=lambda j: both[j])
        if both[best] > 0:
            return best
        labels = self.cache.labels.numpy()
        f = self.features
        scale = f.std(0) + 1e-12
        mine = f[labels == i].mean(0) / scale
        return min(present, key=lambda j: float(np.linalg.norm(f[labels == j].mean(0) / scale - mine)))

    def audit(self, i: int, j: int | None) -> StepAudit | None:
        """The preprocessing audit of ``i`` against ``j``, when the data has raw images and a recipe."""
        if j is None or not isinstance(self.data, ImageData):
            return None
        return audit_steps(self.data, i, j, self.s.suspects)
