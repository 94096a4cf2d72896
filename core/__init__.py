"""Essence's influence engine and analyses (pure PyTorch + NumPy: no Streamlit, no SQL)."""

from typing import TYPE_CHECKING

from essence.core.base.errors import (
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
    from essence.core.analyses.comparison import Comparison, compare_models
    from essence.core.analyses.diagnosis.verdict import Diagnosis, diagnose
    from essence.core.analyses.experts.sweep import ExpertSweep, expert_sweep
    from essence.core.analyses.explanation import Explanation, explain
    from essence.core.analyses.layer_choice import LayerSuggestion, suggest_layer
    from essence.core.analyses.profiles import ClassProfiles, class_profiles
    from essence.core.analyses.shortcuts import SharedEvidence, shared_evidence
    from essence.core.analyses.triage import Triage, deviation_scores
    from essence.core.engine.distributions import (
        ClassConditional,
        GaussianNoise,
        Instance,
        LinearPath,
        WholeDataset,
    )
    from essence.core.engine.influence import Influence, influence
    from essence.core.engine.quantities import (
        ClassScore,
        Comparative,
        CustomQuantity,
        OwnLabel,
        PredictedClass,
    )
    from essence.core.engine.slices import capture, layer_names, resolve_layer
    from essence.core.engine.sums import InfluenceSums
    from essence.core.inputs.cards import ClassOrder, ClassOrderError, class_order, read_card, write_card
    from essence.core.inputs.data import ImageData
    from essence.core.inputs.datasets import load_dataset
    from essence.core.inputs.models import LoadedModel, check_compatible, load_model
    from essence.core.inputs.preprocessing import Preprocessing

# Everything but the error types is imported on first use: the engine pulls in PyTorch and NumPy, the analyses
# SciPy and scikit-learn too, and ``essence --help`` (or ``from essence.core.base.errors import ...``) needs none.
_ENGINE = {
    "essence.core.inputs.cards": ("ClassOrder", "ClassOrderError", "class_order", "read_card", "write_card"),
    "essence.core.inputs.data": ("ImageData",),
    "essence.core.inputs.datasets": ("load_dataset",),
    "essence.core.engine.distributions": (
        "ClassConditional",
        "GaussianNoise",
        "Instance",
        "LinearPath",
        "WholeDataset",
    ),
    "essence.core.engine.influence": ("Influence", "influence"),
    "essence.core.inputs.models": ("LoadedModel", "check_compatible", "load_model"),
    "essence.core.inputs.preprocessing": ("Preprocessing",),
    "essence.core.analyses.profiles": ("ClassProfiles", "class_profiles"),
    "essence.core.engine.quantities": (
        "ClassScore",
        "Comparative",
        "CustomQuantity",
        "OwnLabel",
        "PredictedClass",
    ),
    "essence.core.engine.slices": ("capture", "layer_names", "resolve_layer"),
    "essence.core.engine.sums": ("InfluenceSums",),
}

# The analyses (they pull in SciPy and scikit-learn too).
_LAZY = {
    "deviation_scores": "essence.core.analyses.triage",
    "Triage": "essence.core.analyses.triage",
    "shared_evidence": "essence.core.analyses.shortcuts",
    "SharedEvidence": "essence.core.analyses.shortcuts",
    "expert_sweep": "essence.core.analyses.experts.sweep",
    "ExpertSweep": "essence.core.analyses.experts.sweep",
    "diagnose": "essence.core.analyses.diagnosis.verdict",
    "Diagnosis": "essence.core.analyses.diagnosis.verdict",
    "compare_models": "essence.core.analyses.comparison",
    "Comparison": "essence.core.analyses.comparison",
    "explain": "essence.core.analyses.explanation",
    "Explanation": "essence.core.analyses.explanation",
    "suggest_layer": "essence.core.analyses.layer_choice",
    "LayerSuggestion": "essence.core.analyses.layer_choice",
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
    "SharedEvidence",
    "Triage",
    "compare_models",
    "deviation_scores",
    "diagnose",
    "expert_sweep",
    "explain",
    "shared_evidence",
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
