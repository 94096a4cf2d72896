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
import json
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import torch

from essence.app.evaluation import BATCH
from essence.app.shared import holding, remembered, shared, store  # also the pages' way to them
from essence.app.state import ModelChoice
from essence.core import (
    ClassProfiles,
    ImageData,
    LayerNotFoundError,
    LoadedModel,
    Preprocessing,
    class_profiles,
    layer_names,
    load_dataset,
    load_model,
    resolve_layer,
)
from essence.core.inputs.cards import output_names, with_class_names
from essence.core.inputs.datasets import environment_data_root
from essence.core.inputs.models import check_compatible
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


def open_model(choice: ModelChoice) -> LoadedModel:
    """A chosen model loaded, with what an upload gave beside it (class names, recipe, slice).

    Args:
        choice: the model spec and, for uploads, its weights file, class names, recipe and default slice.

    Returns:
        The loaded model.

    Raises:
        ModelLoadError, SpecError: the model cannot be loaded (named in the message).
    """
    model = load_model(choice.spec, choice.weights, trust_pickle=choice.trust_pickle)  # its card applied
    with_class_names(model, list(choice.class_names) if choice.class_names else None)  # the form's, on top
    if choice.preprocessing:
        model.preprocessing = Preprocessing.from_dict(dict(choice.preprocessing))
    if choice.default_layer:
        model.default_layer = choice.default_layer
    return model


def open_data(spec: str, recipe: str, class_names: tuple[str, ...] | None) -> ImageData:
    """A data spec loaded with a preprocessing recipe (unreadable images skipped).

    Args:
        spec: the data spec (``demo:test``, ``folder:PATH``, ``csv:PATH``).
        recipe: the recipe as sorted JSON (``""``: none).
        class_names: the model's class names, to match labels against (``None``: the data's own).

    Returns:
        The dataset.

    Raises:
        DataLoadError, LabelMismatchError, SpecError: the data cannot be read (named in the message).
    """
    preprocessing = Preprocessing.from_dict(json.loads(recipe)) if recipe else None
    return load_dataset(
        spec,
        preprocessing,
        class_names=list(class_names) if class_names else None,
        on_bad_image="skip",
        data_root=environment_data_root(),
    )


def recipe_of(model: LoadedModel) -> str:
    """The model's preprocessing recipe as sorted JSON (``""``: none): the data cache's key."""
    return json.dumps(model.preprocessing.to_dict(), sort_keys=True) if model.preprocessing else ""


def check_fits(model: LoadedModel, data: ImageData) -> None:
    """Check once (remembered) that ``data`` fits ``model``.

    Raises:
        LabelMismatchError, DataLoadError: the data does not fit the model.
    """
    remembered(
        ("compatible", model.fingerprint, data.fingerprint, recipe_of(model)), lambda: _check(model, data)
    )


def _check(model: LoadedModel, data: ImageData) -> bool:
    with holding(model):
        check_compatible(model, data)
    return True


def class_names(model: LoadedModel, data: ImageData) -> list[str]:
    """The classes' names: the model's own, else the data's."""
    return output_names(model.class_names, data)


def layers_of(model: LoadedModel) -> list[str]:
    """Every module path of the model, the input ('') left out."""
    return [n for n in layer_names(model.module) if n]


def check_layer(model: LoadedModel, layer: str) -> str:
    """``layer`` if the model has it.

    Raises:
        LayerNotFoundError: naming close names.
    """
    resolve_layer(model.module, layer)
    return layer


def default_layer(model: LoadedModel) -> str:
    """The model's default slice.

    Raises:
        LayerNotFoundError: the model has none (the user must pick one).
    """
    if model.default_layer:
        return model.default_layer
    raise LayerNotFoundError(
        f"{model.name} has no default slice: pick a layer in the sidebar (or ask for a suggestion)"
    )


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

    trained_on = "" if train_data is None else train_data.fingerprint
    key = ("diagnosis", profile_key(model, data, layer, "logit").digest(), trained_on)

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

    key = ("compare", a.fingerprint, b.fingerprint, data_a.fingerprint, layer_a, layer_b)

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
                class_names=class_names(a, data_a),
                allow_partial=True,
                batch_size=BATCH,
                cancel=cancel,
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
