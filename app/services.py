"""What the pages call: models, datasets, the store and the analyses, cached and guarded.

Models, datasets and the store are held with ``st.cache_resource`` (one copy for every browser session).
Results holding tensors are kept in one bounded in-memory table (``st.cache_data`` would copy them on every
hit and hash large arrays from a sample), keyed on explicit fingerprints: model, dataset, recipe, slice,
quantity. Class profiles also land in the store, so a reload of the app is instant.

A forward hook on a shared model would be seen by every session running that model, so every computation
that runs a model holds that model's lock (:func:`model_lock`); two models are always locked in the same
order (by fingerprint), so two sessions comparing A with B and B with A cannot deadlock.
"""

from __future__ import annotations

import contextlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass

import numpy as np
import streamlit as st
import torch

from essence.app.state import DataChoice, ModelChoice
from essence.core.data import ImageData
from essence.core.datasets import environment_data_root, load_dataset
from essence.core.errors import LayerNotFoundError
from essence.core.models import LoadedModel, check_compatible, load_model
from essence.core.preprocessing import Preprocessing
from essence.core.profiles import ClassProfiles, class_profiles
from essence.core.slices import inference_state, layer_names, resolve_layer
from essence.storage import ProfileKey, RunInfo, Store, default_store_path

# Results kept in memory (per process): enough for every page of a few model/dataset pairs.
RESULTS_KEPT = 48
# Batch of the app's passes: small enough for a laptop CPU's cache, large enough to amortise Python overhead.
BATCH = 128

Progress = Callable[[int, int], None]
Cancel = Callable[[], bool] | threading.Event | None


# ----------------------------------------------------------------------------------- shared resources


@st.cache_resource(show_spinner=False)
def _store_at(location: str) -> Store:
    return Store.open(location)


def store() -> Store:
    """The app's store: ``$ESSENCE_HOME/essence.sqlite`` (read at each call, so tests can point it elsewhere)."""
    return _store_at(str(default_store_path()))


@st.cache_resource(show_spinner=False)
def _locks() -> dict[str, threading.RLock]:
    return {}


_LOCKS_GUARD = threading.Lock()


def model_lock(fingerprint: str) -> threading.RLock:
    """The lock every computation running the model ``fingerprint`` holds (shared by all sessions)."""
    locks = _locks()
    with _LOCKS_GUARD:
        return locks.setdefault(fingerprint, threading.RLock())


@contextlib.contextmanager
def holding(*models: LoadedModel) -> Iterator[None]:
    """Hold the locks of ``models`` (in fingerprint order: no deadlock between sessions)."""
    with contextlib.ExitStack() as stack:
        for fp in sorted({m.fingerprint for m in models}):
            stack.enter_context(model_lock(fp))
        yield


class Results:
    """A bounded, thread-safe table of computed results (least recently used out first)."""

    def __init__(self, size: int = RESULTS_KEPT) -> None:
        self._items: OrderedDict[Hashable, object] = OrderedDict()
        self._size = size
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> object | None:
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            return None

    def put(self, key: Hashable, value: object) -> object:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self._size:
                self._items.popitem(last=False)
        return value


@st.cache_resource(show_spinner=False)
def results() -> Results:
    """The process-wide result table (cleared with Streamlit's resource cache)."""
    return Results()


def remembered(key: Hashable, compute: Callable[[], object]) -> object:
    """The result under ``key``, computed once (the computation runs outside the table's lock)."""
    table = results()
    hit = table.get(key)
    if hit is not None:
        return hit
    return table.put(key, compute())


# ----------------------------------------------------------------------------------- models and data


@st.cache_resource(show_spinner="Loading the model…", max_entries=8)
def _load_model(
    spec: str,
    weights: str | None,
    class_names: tuple[str, ...] | None,
    preprocessing: tuple[tuple[str, object], ...] | None,
    default_layer: str | None,
) -> LoadedModel:
    model = load_model(spec, weights)
    if class_names:
        model.class_names = list(class_names)
    if preprocessing:
        model.preprocessing = Preprocessing.from_dict(dict(preprocessing))
    if default_layer:
        model.default_layer = default_layer
    return model


def model_of(choice: ModelChoice) -> LoadedModel:
    """The loaded model of a sidebar choice (cached for every session)."""
    return _load_model(
        choice.spec, choice.weights, choice.class_names, choice.preprocessing, choice.default_layer
    )


@st.cache_resource(show_spinner="Loading the images…", max_entries=8)
def _load_data(spec: str, recipe: str, class_names: tuple[str, ...] | None) -> ImageData:
    import json

    preprocessing = Preprocessing.from_dict(json.loads(recipe)) if recipe else None
    return load_dataset(
        spec,
        preprocessing,
        class_names=list(class_names) if class_names else None,
        on_bad_image="skip",
        data_root=environment_data_root(),
    )


def data_for(choice: DataChoice, model: LoadedModel) -> ImageData:
    """The dataset of a sidebar choice with the model's preprocessing, checked to fit the model.

    Raises:
        DataLoadError, LabelMismatchError, SpecError: the data cannot be read or does not fit the model.
    """
    import json

    recipe = json.dumps(model.preprocessing.to_dict(), sort_keys=True) if model.preprocessing else ""
    names = tuple(model.class_names) if model.class_names else None
    data = _load_data(choice.spec, recipe, names)
    remembered(("compatible", model.fingerprint, data.fingerprint, recipe), lambda: _check(model, data))
    return data


def _check(model: LoadedModel, data: ImageData) -> bool:
    with holding(model):
        check_compatible(model, data)
    return True


def class_names(model: LoadedModel, data: ImageData) -> list[str]:
    """The classes' names: the model's own, else the data's."""
    return list(model.class_names or data.class_names)


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


# ----------------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class Evaluation:
    """The model's use on a dataset (argmax), per class.

    Attributes:
        labels: int64 ``[N]``; predicted: int64 ``[N]``; probabilities: float32 ``[N, K]``.
        confusion: int64 ``[K, K]`` rows = true class, columns = predicted.
        recall, precision: float64 ``[K]`` (NaN: no instances / never predicted).
        accuracy: share of instances predicted right.
    """

    labels: np.ndarray
    predicted: np.ndarray
    probabilities: np.ndarray
    confusion: np.ndarray
    recall: np.ndarray
    precision: np.ndarray
    accuracy: float

    @property
    def never_predicted(self) -> list[int]:
        """Classes with instances that the model never predicts."""
        support = self.confusion.sum(1)
        predicted = self.confusion.sum(0)
        return [int(c) for c in np.nonzero((support > 0) & (predicted == 0))[0]]


def evaluation(model: LoadedModel, data: ImageData, num_classes: int) -> Evaluation:
    """Accuracy, confusion matrix and per-class recall/precision (one forward pass, remembered)."""
    key = ("evaluation", model.fingerprint, data.fingerprint, data.preprocessing.fingerprint())
    return remembered(key, lambda: _evaluate(model, data, num_classes))  # type: ignore[return-value]


def predict(model: LoadedModel, x: torch.Tensor) -> np.ndarray:
    """Softmax probabilities ``[B, K]`` of preprocessed inputs ``x [B, C, H, W]`` (eval mode, model locked)."""
    with holding(model), inference_state(model.module), torch.no_grad():
        return torch.softmax(model.module(x).float(), dim=1).numpy()


def _evaluate(model: LoadedModel, data: ImageData, k: int) -> Evaluation:
    probs = []
    with holding(model), inference_state(model.module), torch.no_grad():
        for x, _, _ in data.batches(BATCH):
            probs.append(torch.softmax(model.module(x).float(), dim=1))
    p = torch.cat(probs).numpy()
    y = data.labels
    pred = p.argmax(1)
    conf = np.zeros((k, k), dtype=np.int64)
    np.add.at(conf, (y, pred), 1)
    tp = np.diag(conf).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(conf.sum(1) > 0, tp / conf.sum(1), np.nan)
        precision = np.where(conf.sum(0) > 0, tp / conf.sum(0), np.nan)
    return Evaluation(y, pred, p, conf, recall, precision, float((pred == y).mean()))


# ----------------------------------------------------------------------------------- class profiles


def profile_key(model: LoadedModel, data: ImageData, layer: str, kind: str) -> ProfileKey:
    """The store's key of the channel-granularity class profiles the app uses."""
    return ProfileKey.for_profiles(model, data, layer, "channel", kind)


def ready_profiles(model: LoadedModel, data: ImageData, layer: str, kind: str) -> ClassProfiles | None:
    """Class profiles with their per-instance vectors if already computed (memory, then store), else ``None``."""
    key = ("profiles", profile_key(model, data, layer, kind).digest())
    hit = results().get(key)
    if hit is not None:
        return hit  # type: ignore[return-value]
    stored = store().get_profiles(profile_key(model, data, layer, kind), with_instances=True)
    if stored is None:
        return None
    return results().put(key, _named(stored, class_names(model, data)))  # type: ignore[return-value]


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

    Raises:
        Cancelled: ``cancel`` was set (nothing is stored).
        EssenceError: the slice, data or store failed (named in the message).
    """
    hit = ready_profiles(model, data, layer, kind)
    if hit is not None:
        return hit
    names = class_names(model, data)

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
        )
    key = ("profiles", profile_key(model, data, layer, kind).digest())
    return results().put(key, _named(profiles, names))  # type: ignore[return-value]


def _named(profiles: ClassProfiles, names: list[str]) -> ClassProfiles:
    import dataclasses

    if len(names) == len(profiles.class_names):
        return dataclasses.replace(profiles, class_names=list(names))
    return profiles


# ----------------------------------------------------------------------------------- analyses


def triage(model: LoadedModel, data: ImageData, layer: str, profiles: ClassProfiles) -> object:
    """The ranked review queue (:class:`~essence.core.triage.Triage`) from the ``prob`` profiles."""
    from essence.core.triage import deviation_scores

    key = ("triage", profile_key(model, data, layer, "prob").digest())

    def run() -> object:
        with holding(model):
            return deviation_scores(model.module, data, layer, profiles=profiles)

    return remembered(key, run)


def diagnosis(model: LoadedModel, data: ImageData, layer: str, profiles: ClassProfiles) -> object:
    """The drowning-expert diagnosis (:class:`~essence.core.diagnosis.Diagnosis`), recorded as a run."""
    import time

    from essence.core.diagnosis import diagnose

    key = ("diagnosis", profile_key(model, data, layer, "logit").digest())

    def run() -> object:
        start = time.perf_counter()
        with holding(model):
            result = diagnose(
                model.module,
                data,
                layer,
                profiles=profiles,
                preprocessing=model.preprocessing.describe() if model.preprocessing else None,
                batch_size=BATCH,
            )
        info = RunInfo(
            command="essence app",
            device="auto",
            seconds=time.perf_counter() - start,
            description=f"diagnosis of {model.name} on {data.spec} at {layer}",
        )
        store().record_run(
            "diagnose", info, model_fp=model.fingerprint, dataset_fp=data.fingerprint, layer=layer
        )
        return result

    return remembered(key, run)


def sweep(model: LoadedModel, data: ImageData, layer: str, cls: int, profiles: ClassProfiles) -> tuple:
    """``(influence sweep, activation control)`` :class:`~essence.core.experts.ExpertSweep` for one class."""
    from essence.core.experts import cache_slice, expert_sweep

    base = profile_key(model, data, layer, "logit").digest()

    def run() -> tuple:
        z = remembered(("slice", base), lambda: cache_slice(model.module, data, layer, batch_size=BATCH))
        with holding(model):
            a = expert_sweep(model.module, data, layer, cls, profiles=profiles, cache=z)
            b = expert_sweep(model.module, data, layer, cls, rank_by="activation", profiles=profiles, cache=z)
        return a, b

    return remembered(("sweep", base, cls), run)  # type: ignore[return-value]


def comparison(
    a: LoadedModel, b: LoadedModel, data_a: ImageData, data_b: ImageData, layer_a: str, layer_b: str
) -> object:
    """Model A against model B on the same images (:class:`~essence.core.compare.Comparison`)."""
    from essence.core.compare import compare_models

    key = ("compare", a.fingerprint, b.fingerprint, data_a.fingerprint, layer_a, layer_b)

    def run() -> object:
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
) -> object:
    """Why the model gives ``image`` class ``cls`` (rather than ``vs``): :class:`~essence.core.explain.Explanation`."""
    import hashlib

    from essence.core.explanation import explain

    digest = hashlib.sha256(image.detach().float().cpu().numpy().tobytes()).hexdigest()[:16]
    key = ("explain", model.fingerprint, digest, cls, vs, layer, top_k)

    def run() -> object:
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


def layer_suggestion(model: LoadedModel, data: ImageData) -> object:
    """The suggested slice (:class:`~essence.core.layers.LayerSuggestion`)."""
    from essence.core.layers import suggest_layer

    key = ("layers", model.fingerprint, data.fingerprint)

    def run() -> object:
        with holding(model):
            return suggest_layer(model.module, data)

    return remembered(key, run)


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
