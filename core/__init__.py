"""Essence's influence engine and analyses (pure PyTorch + NumPy: no Streamlit, no SQL)."""

from essence.core.cards import ClassOrder, ClassOrderError, class_order, read_card, write_card
from essence.core.data import ImageData
from essence.core.datasets import load_dataset
from essence.core.distributions import ClassConditional, GaussianNoise, Instance, LinearPath, WholeDataset
from essence.core.engine import Influence, influence
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
from essence.core.models import LoadedModel, check_compatible, load_model
from essence.core.preprocessing import Preprocessing
from essence.core.profiles import ClassProfiles, class_profiles
from essence.core.quantities import ClassScore, Comparative, CustomQuantity, OwnLabel, PredictedClass
from essence.core.slices import capture, layer_names, resolve_layer
from essence.core.sums import InfluenceSums

# The analyses are imported on first use (they pull in SciPy and scikit-learn).
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


def __getattr__(name: str) -> object:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'essence.core' has no attribute {name!r}")


__all__ = [
    *_LAZY,
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
