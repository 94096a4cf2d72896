"""Uploads registered in the store, so every later session (and a restarted server) offers them again.

Plain Python: no Streamlit here. A :class:`~essence.app.state.ModelChoice` or
:class:`~essence.app.state.DataChoice` is stored as its spec and plain JSON details; an upload whose files
are gone from disk is not offered (its row stays until it is removed).
"""

from __future__ import annotations

from pathlib import Path

from essence.app.shared import store
from essence.app.state import DataChoice, ModelChoice
from essence.storage.records import Upload


def register_model(choice: ModelChoice) -> None:
    """Keep an uploaded model in the store (the same label again replaces it)."""
    details = {
        "weights": choice.weights,
        "class_names": list(choice.class_names) if choice.class_names else None,
        "preprocessing": dict(choice.preprocessing) if choice.preprocessing else None,
        "default_layer": choice.default_layer,
        "trust_pickle": choice.trust_pickle,
    }
    store().register_upload("model", choice.label, choice.spec, details)


def register_dataset(choice: DataChoice) -> None:
    """Keep an uploaded dataset in the store (the same label again replaces it)."""
    store().register_upload("dataset", choice.label, choice.spec, {})


def forget(kind: str, label: str) -> bool:
    """Remove an upload from the store's list (its files stay, named by their hash). Whether it was there."""
    return store().remove_upload(kind, label)


def saved_models() -> list[ModelChoice]:
    """The uploaded models whose files are still on disk, oldest first."""
    return [c for u in store().uploads("model") if (c := _model_of(u)) is not None]


def saved_datasets() -> list[DataChoice]:
    """The uploaded datasets whose files are still on disk, oldest first."""
    return [DataChoice(label=u.label, spec=u.spec) for u in store().uploads("dataset") if _present(u.spec)]


def _model_of(u: Upload) -> ModelChoice | None:
    d = u.details
    weights = d.get("weights")
    if weights and not Path(weights).exists():
        return None
    if not weights and not _present(u.spec):
        return None
    recipe = d.get("preprocessing")
    names = d.get("class_names")
    return ModelChoice(
        label=u.label,
        spec=u.spec,
        weights=weights,
        class_names=tuple(names) if names else None,
        preprocessing=tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(recipe.items()))
        if recipe
        else None,
        default_layer=d.get("default_layer"),
        trust_pickle=bool(d.get("trust_pickle", False)),
    )


def _present(spec: str) -> bool:
    """Whether the file or folder a spec names exists (a spec naming no file, as ``torchvision:X``, does)."""
    kind, _, rest = spec.partition(":")
    if kind in ("folder", "csv", "npz"):
        return Path(rest).exists()
    if kind in ("demo", "digits", "torchvision") or not rest and not spec.endswith((".pt", ".ts", ".pth")):
        return True
    return Path(spec).exists()
