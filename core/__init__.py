"""Essence's influence engine and analyses (pure PyTorch + NumPy: no Streamlit, no SQL)."""

from typing import TYPE_CHECKING

from essence.core.errors import (
    Cancelled,
    ClassNotFoundError,
    DataLoadError,
    EmptyClassError,
    EssenceError,
    LabelMismatchError,
    LayerNotFoundError,
    ModelLoadError,
    NonFiniteOutputError,
    SpecError,
    StoreError,
)

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers and editors
    from essence.core.cards import ClassOrder, ClassOrderError, class_order, read_card, write_card
    from essence.core.comparison import Comparison, compare_models
    from essence.core.data import ImageData
    from essence.core.datasets import load_dataset
    from essence.core.diagnosis import Diagnosis, diagnose
    from essence.core.distributions import ClassConditional, GaussianNoise, Instance, LinearPath, WholeDataset
    from essence.core.engine import Influence, influence
    from essence.core.experts import ExpertSweep, expert_sweep
    from essence.core.explanation import Explanation, explain
    from essence.core.layers import LayerSuggestion, suggest_layer
    from essence.core.models import LoadedModel, check_compatible, load_model
    from essence.core.preprocessing import Preprocessing
    from essence.core.profiles import ClassProfiles, class_profiles
    from essence.core.quantities import ClassScore, Comparative, CustomQuantity, OwnLabel, PredictedClass
    from essence.core.slices import capture, layer_names, resolve_layer
    from essence.core.sums import InfluenceSums
    from essence.core.triage import Triage, deviation_scores

# Everything but the error types is imported on first use: the engine pulls in PyTorch and NumPy, the analyses
# SciPy and scikit-learn too, and ``essence --help`` (or ``from essence.core.errors import ...``) needs none.
_ENGINE = {
    "essence.core.cards": ("ClassOrder", "ClassOrderError", "class_order", "read_card", "write_card"),
    "essence.core.data": ("ImageData",),
    "essence.core.datasets": ("load_dataset",),
    "essence.core.distributions": (
        "ClassConditional",
        "GaussianNoise",
        "Instance",
        "LinearPath",
        "WholeDataset",
    ),
    "essence.core.engine": ("Influence", "influence"),
    "essence.core.models": ("LoadedModel", "check_compatible", "load_model"),
    "essence.core.preprocessing": ("Preprocessing",),
    "essence.core.profiles": ("ClassProfiles", "class_profiles"),
    "essence.core.quantities": ("ClassScore", "Comparative", "CustomQuantity", "OwnLabel", "PredictedClass"),
    "essence.core.slices": ("capture", "layer_names", "resolve_layer"),
    "essence.core.sums": ("InfluenceSums",),
}

# The analyses (they pull in SciPy and scikit-learn too).
_LAZY = {
    "deviation_scores": "essence.core.triage",
    "Triage": "essence.core.triage",
    "expert_sweep": "essence.core.experts",
    "ExpertSweep": "essence.core.experts",
    "diagnose": "essence.core.diagnosis",
    "Diagnosis": "essence.core.diagnosis",
    "compare_models": "essence.core.comparison",
    "Comparison": "essence.core.comparison",
    "explain": "essence.core.explanation",
    "Explanation": "essence.core.explanation",
    "suggest_layer": "essence.core.layers",
    "LayerSuggestion": "essence.core.layers",
}


_MODULE_OF = {**{name: module for module, names in _ENGINE.items() for name in names}, **_LAZY}


def __getattr__(name: str) -> object:
    if name in _MODULE_OF:
        import importlib

        value = getattr(importlib.import_module(_MODULE_OF[name]), name)
        globals()[name] = value  # later accesses are plain attribute lookups
        return value
    raise AttributeError(f"module 'essence.core' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_MODULE_OF})


__all__ = [
    "Comparison",
    "Diagnosis",
    "ExpertSweep",
    "Explanation",
    "LayerSuggestion",
    "Triage",
    "compare_models",
    "deviation_scores",
    "diagnose",
    "expert_sweep",
    "explain",
    "suggest_layer",
    "Cancelled",
    "ClassConditional",
    "ClassOrder",
    "ClassOrderError",
    "ClassNotFoundError",
    "ClassProfiles",
    "ClassScore",
    "Comparative",
    "CustomQuantity",
    "DataLoadError",
    "EmptyClassError",
    "EssenceError",
    "GaussianNoise",
    "ImageData",
    "Influence",
    "InfluenceSums",
    "Instance",
    "LabelMismatchError",
    "LayerNotFoundError",
    "LinearPath",
    "ModelLoadError",
    "NonFiniteOutputError",
    "OwnLabel",
    "PredictedClass",
    "Preprocessing",
    "SpecError",
    "StoreError",
    "WholeDataset",
    "LoadedModel",
    "load_dataset",
    "load_model",
    "capture",
    "check_compatible",
    "class_order",
    "class_profiles",
    "influence",
    "layer_names",
    "read_card",
    "resolve_layer",
    "write_card",
]
