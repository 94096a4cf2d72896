"""What the pages call: models, datasets, class profiles and the analyses, remembered and guarded.

Plain Python: no Streamlit here. The shared resources (the store, the result table, the models' locks) come
from :mod:`essence.app.shared`; how long they live is :mod:`essence.app.cache`'s business, which also caches
the loaded models and datasets. Results holding tensors are kept in the bounded result table (``st.cache_data``
would copy them on every hit and hash large arrays from a sample), keyed on explicit fingerprints: model,
dataset, recipe, slice, quantity. Class profiles also land in the store, so a reload of the app is instant.
"""

from __future__ import annotations

import dataclasses
import hashlib
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import torch

from essence.app.evaluation import BATCH
from essence.app.shared import holding, remembered, shared, store  # also the pages' way to them
from essence.core import (
    ClassProfiles,
    ImageData,
    LoadedModel,
    class_profiles,
)
from essence.core.inputs.cards import output_names
from essence.storage import ProfileKey, RunInfo

if TYPE_CHECKING:
    from essence.core import Comparison, Diagnosis, ExpertSweep, Explanation, LayerSuggestion, Triage
    from essence.core.analyses.shortcuts import SharedEvidence

Progress = Callable[[int, int], None]
Cancel = Callable[[], bool] | threading.Event | None


class ExpertSweeps(NamedTuple):
    """The expert sweep of one class and its control (a tuple, so a page can unpack ``sweep, control``).

    Attributes:
        influence: units ranked by the class's influence profile (the paper's experts).
        activation: units ranked by activation, the baseline that should fail.
    """

    influence: ExpertSweep
    activation: ExpertSweep


# ----------------------------------------------------------------------------------- models and data


def class_names(model: LoadedModel, data: ImageData) -> list[str]:
    """The classes' names: the model's own, else the data's."""
    return output_names(model.class_names, data)


# ----------------------------------------------------------------------------------- class profiles


def profile_key(model: LoadedModel, data: ImageData, layer: str, kind: str) -> ProfileKey:
    """The store's key of the channel-granularity class profiles the app uses."""
    return ProfileKey.for_profiles(model, data, layer, "channel", kind)


def ready_profiles(model: LoadedModel, data: ImageData, layer: str, kind: str) -> ClassProfiles | None:
    """Class profiles with their per-instance vectors if already computed (memory, then store), else ``None``."""
    key = ("profiles", profile_key(model, data, layer, kind).digest())
    table = shared().results
    hit = table.get(key)
    if isinstance(hit, ClassProfiles):
        return hit
    stored = store().get_profiles(profile_key(model, data, layer, kind), with_instances=True)
    if stored is None:
        return None
    return table.put(key, _named(stored, class_names(model, data)))


def compute_profiles(
    model: LoadedModel,
    data: ImageData,
    layer: str,
    kind: str,
    *,
    progress: Progress | None = None,
    cancel: Cancel = None,
) -> ClassProfiles:
    """Class profiles with per-instance vectors: from memory or the store, else computed and stored.

    Args:
        model, data, layer: what to profile, at which slice.
        kind: the quantity (``"logit"`` or ``"prob"``).
        progress: called with (instances done, total).
        cancel: a flag that stops the computation.

    Returns:
        The class profiles, named with :func:`class_names`.

    Raises:
        Cancelled: ``cancel`` was set (nothing is stored).
        EssenceError: the slice, data or store failed (named in the message).
    """
    hit = ready_profiles(model, data, layer, kind)
    if hit is not None:
        return hit
    names = class_names(model, data)
    source = store().slice_source(model, data)  # the first pass at the slice stores its z

    def compute() -> ClassProfiles:
        return class_profiles(
            model.module,
            data,
            layer,
            kind=kind,  # type: ignore[arg-type]
            class_names=names,
            allow_empty=True,
            keep_instances=True,
            batch_size=BATCH,
            progress=progress,
            cancel=cancel,
            activations=source,
        )

    with holding(model):
        profiles = store().cached_profiles(
            model,
            data,
            layer,
            "channel",
            kind,
            compute,
            keep_instances=True,
            run_info=RunInfo(command="essence app", device="auto"),
            activations=source,
        )
    key = ("profiles", profile_key(model, data, layer, kind).digest())
    return shared().results.put(key, _named(profiles, names))


def _named(profiles: ClassProfiles, names: list[str]) -> ClassProfiles:
    if len(names) == len(profiles.class_names):
        return dataclasses.replace(profiles, class_names=list(names))
    return profiles


# ----------------------------------------------------------------------------------- analyses


def triage(model: LoadedModel, data: ImageData, layer: str, profiles: ClassProfiles) -> Triage:
    """The ranked review queue from the ``prob`` profiles (remembered)."""
    from essence.core import deviation_scores

    key = ("triage", profile_key(model, data, layer, "prob").digest())

    def run() -> Triage:
        source = store().slice_source(model, data)  # z from the store where it holds it
        with holding(model):
            return deviation_scores(model.module, data, layer, profiles=profiles, activations=source)

    return remembered(key, run)


def shortcuts(
    model: LoadedModel, data: ImageData, layer: str, result: Triage | None = None
) -> list[SharedEvidence] | None:
    """The triage ``result``'s flagged images that share why-flagged units, where that evidence lies and the
    cover test (remembered); without ``result``, what was found already for the slice, else ``None``."""
    from essence.core import shared_evidence

    def run() -> list[SharedEvidence]:
        with holding(model):
            return shared_evidence(model.module, data, result, batch_size=BATCH)  # type: ignore[arg-type]

    key = ("shortcuts", profile_key(model, data, layer, "prob").digest())
    return remembered(key, run) if result is not None else shared().results.get(key)  # type: ignore[return-value]


def diagnosis(
    model: LoadedModel,
    data: ImageData,
    layer: str,
    profiles: ClassProfiles,
    *,
    progress: Progress | None = None,
    cancel: Cancel = None,
    train_data: ImageData | None = None,
) -> Diagnosis:
    """The drowning-expert diagnosis from the ``logit`` profiles, recorded as a run (remembered); with
    ``train_data`` (the data the model was trained on), each class's training facts decide "not learned"
    against "not read out".

    Raises:
        Cancelled: ``cancel`` was set (nothing is remembered or recorded).
        LabelMismatchError: ``train_data`` does not name the model's classes.
    """
    from essence.core import diagnose

    key = diagnosis_key(model, data, layer, "" if train_data is None else train_data.fingerprint)

    def run() -> Diagnosis:
        start = time.perf_counter()
        source = store().slice_source(model, data)  # the slice's stored z: g alone runs
        with holding(model):
            result = diagnose(
                model.module,
                data,
                layer,
                profiles=profiles,
                preprocessing=model.preprocessing.describe() if model.preprocessing else None,
                batch_size=BATCH,
                progress=progress,
                cancel=cancel,
                activations=source,
                train_data=train_data,
            )
        trained = "" if train_data is None else f", training data {train_data.spec}"
        info = RunInfo(
            command="essence app",
            device="auto",
            seconds=time.perf_counter() - start,
            description=f"diagnosis of {model.name} on {data.spec} at {layer}{trained}",
            preprocessing=data.preprocessing.to_dict(),
        )
        store().record_run(
            "diagnose", info, model_fp=model.fingerprint, dataset_fp=data.fingerprint, layer=layer
        )
        return result

    return remembered(key, run)


def diagnosis_key(model: LoadedModel, data: ImageData, layer: str, trained: str = "") -> tuple[str, ...]:
    """The result table's key of a diagnosis (``trained``: the training data's fingerprint, ``""``: none)."""
    return ("diagnosis", profile_key(model, data, layer, "logit").digest(), trained)


def known(key: tuple[str, ...]) -> bool:
    """Whether the result table holds ``key`` (a page then shows no progress box for it)."""
    return shared().results.get(key) is not None


def _held(model: LoadedModel, data: ImageData, layer: str, names: list[str]) -> Diagnosis | None:
    """The diagnosis already made of ``model`` on ``data`` at ``layer``, if its classes are named ``names``."""
    hit = shared().results.get(diagnosis_key(model, data, layer))
    return hit if hit is not None and [c.name for c in hit.classes] == names else None  # type: ignore[attr-defined]


def sweep(model: LoadedModel, data: ImageData, layer: str, cls: int, profiles: ClassProfiles) -> ExpertSweeps:
    """The expert sweep of class ``cls`` and its activation-ranked control, on the slice cached once."""
    from essence.core import expert_sweep
    from essence.core.engine.activation_cache import SliceCache, cache_slice

    base = profile_key(model, data, layer, "logit").digest()

    def cached() -> SliceCache:
        source = store().slice_source(model, data)  # the stored z (memory-mapped) when the store holds it
        return cache_slice(model.module, data, layer, batch_size=BATCH, activations=source)

    def run() -> ExpertSweeps:
        z = remembered(("slice", base), cached)
        with holding(model):
            a = expert_sweep(model.module, data, layer, cls, profiles=profiles, cache=z)
            b = expert_sweep(model.module, data, layer, cls, rank_by="activation", profiles=profiles, cache=z)
        return ExpertSweeps(a, b)

    return remembered(("sweep", base, cls), run)


def comparison_key(
    a: LoadedModel, b: LoadedModel, data: ImageData, layer_a: str, layer_b: str
) -> tuple[str, ...]:
    """The result table's key of a comparison."""
    return ("compare", a.fingerprint, b.fingerprint, data.fingerprint, layer_a, layer_b)


def comparison(
    a: LoadedModel,
    b: LoadedModel,
    data_a: ImageData,
    data_b: ImageData,
    layer_a: str,
    layer_b: str,
    *,
    cancel: Cancel = None,
) -> Comparison:
    """Model A against model B on the same images (remembered).

    Raises:
        Cancelled: ``cancel`` was set (nothing is remembered).
    """
    from essence.core import compare_models

    key = comparison_key(a, b, data_a, layer_a, layer_b)
    names = class_names(a, data_a)
    # A side's diagnosis already made here (Experts & diagnosis, no training data) is handed over, not redone.
    held = tuple(_held(*side, names) for side in ((a, data_a, layer_a), (b, data_b, layer_b)))

    def run() -> Comparison:
        with holding(a, b):
            return compare_models(
                a.module,
                b.module,
                data_a,
                layer_a,
                layer_b,
                data_b=data_b,
                names=(a.name, b.name),
                class_names=names,
                allow_partial=True,
                batch_size=BATCH,
                cancel=cancel,
                diagnoses=held,  # type: ignore[arg-type]  # two, one per side
            )

    return remembered(key, run)


def explanation(
    model: LoadedModel,
    image: torch.Tensor,
    cls: int,
    layer: str,
    vs: int | None,
    names: list[str],
    top_k: int = 4,
) -> Explanation:
    """Why the model gives ``image`` ``[C, H, W]`` class ``cls`` (rather than ``vs``), at ``layer`` (remembered)."""
    from essence.core import explain

    digest = hashlib.sha256(image.detach().float().cpu().numpy().tobytes()).hexdigest()[:16]
    key = ("explain", model.fingerprint, digest, cls, vs, layer, top_k)

    def run() -> Explanation:
        with holding(model):
            return explain(
                model.module,
                image,
                cls,
                layer=layer,
                vs=vs,
                top_k=top_k,
                class_names=names,
                preprocessing=model.preprocessing,
            )

    return remembered(key, run)


def layer_suggestion(
    model: LoadedModel, data: ImageData, *, progress: Progress | None = None, cancel: Cancel = None
) -> LayerSuggestion:
    """The suggested slice: where few units carry most influence (remembered).

    Raises:
        Cancelled: ``cancel`` was set (nothing is remembered).
    """
    from essence.core import suggest_layer

    key = ("layers", model.fingerprint, data.fingerprint)

    def run() -> LayerSuggestion:
        with holding(model):
            return suggest_layer(model.module, data, progress=progress, cancel=cancel)

    return remembered(key, run)
