"""Uploads registered in the store, so every later session (and a restarted server) offers them again.

Plain Python: no Streamlit here. A :class:`~essence.app.state.ModelChoice` or
:class:`~essence.app.state.DataChoice` is stored as its spec and plain JSON details; an upload whose files
are gone from disk is not offered (its row stays until it is removed), nor is a row whose details are not of
the types written here (a damaged or hand-edited row: skipped with one warning in the log, never an error for
every later session). Removing an upload deletes its files too (:func:`forget`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from essence.app import uploads
from essence.app.shared import store
from essence.app.state import DataChoice, ModelChoice
from essence.storage.records import Upload

logger = logging.getLogger(__name__)
# The spec kinds whose argument is a file or folder (``dicom:`` may add ``?window=...``), and those naming none.
PATH_KINDS = ("folder", "csv", "npz", "dicom", "onnx")
NAMED_KINDS = ("demo", "digits", "torchvision", "timm", "monai")
_SCALARS = (str, int, float, bool, type(None))
_warned: set[tuple[object, ...]] = set()


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
    """Remove an upload: its row and its files (its folder under the uploads), unless another upload shares them.

    Returns:
        Whether it was registered.

    Raises:
        StoreError: the store cannot be written, or the files cannot be deleted (naming the folder).
    """
    rows = store().uploads()
    mine = [u for u in rows if u.kind == kind and u.label == label]
    removed = store().remove_upload(kind, label)
    kept = {folder for u in rows if u not in mine for folder in _folders(u)}
    for folder in sorted({f for u in mine for f in _folders(u)} - kept):
        uploads.remove_files(folder)
    return removed


def saved_models() -> list[ModelChoice]:
    """The uploaded models whose files are still on disk, oldest first."""
    return [c for u in store().uploads("model") if (c := _model_of(u)) is not None]


def saved_datasets() -> list[DataChoice]:
    """The uploaded datasets whose files are still on disk, oldest first."""
    return [DataChoice(label=u.label, spec=u.spec) for u in store().uploads("dataset") if _present(u.spec)]


def _model_of(u: Upload) -> ModelChoice | None:
    d = u.details
    weights, names, recipe = d.get("weights"), d.get("class_names"), d.get("preprocessing")
    layer, trust = d.get("default_layer"), d.get("trust_pickle", False)
    typed = {
        "weights": isinstance(weights, str | None),
        "class_names": names is None or isinstance(names, list) and all(isinstance(n, str) for n in names),
        "preprocessing": recipe is None or isinstance(recipe, dict) and all(map(_plain, recipe.values())),
        "default_layer": isinstance(layer, str | None),
        "trust_pickle": isinstance(trust, bool),
    }
    problem = next((key for key, ok in typed.items() if not ok), None)
    if problem is not None:
        _warn_once(u, f"its {problem} is a {type(d.get(problem)).__name__}")
        return None
    if weights and not _exists(weights):
        return None
    if not weights and not _present(u.spec):
        return None
    return ModelChoice(
        label=u.label,
        spec=u.spec,
        weights=weights or None,
        class_names=tuple(names) if names else None,
        preprocessing=tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(recipe.items()))
        if recipe
        else None,
        default_layer=layer or None,
        trust_pickle=trust,
    )


def _plain(value: object) -> bool:
    """A recipe value as :func:`register_model` writes it: a JSON scalar, or a list of them."""
    return (
        isinstance(value, _SCALARS) or isinstance(value, list) and all(isinstance(v, _SCALARS) for v in value)
    )


def _warn_once(u: Upload, problem: str) -> None:
    key = (u.kind, u.id, u.label, u.created_at)  # once per row (of any store this process opens)
    if key not in _warned:
        _warned.add(key)
        logger.warning(
            "the registered %s upload %r is not offered: %s, not what the app writes (a damaged row); "
            "register it again or remove it with `essence store`",
            u.kind,
            u.label,
            problem,
        )


def _present(spec: str) -> bool:
    """Whether the file or folder a spec names exists (a spec naming no file, as ``torchvision:X``, does).

    Every kind the upload page gives is known: ``folder:``, ``csv:``, ``dicom:`` datasets; ``onnx:``, exported
    programs (a bare path), and ``torchvision:``/``timm:``/``monai:`` architectures beside a weights file.
    """
    kind, _, rest = spec.partition(":")
    if kind in PATH_KINDS:
        return _exists(rest.partition("?")[0])
    if kind in NAMED_KINDS:
        return True
    return _exists(spec)  # a bare path (an exported program)


def _exists(path: str) -> bool:
    try:
        return bool(path) and Path(path).exists()
    except (OSError, ValueError):  # a name too long, a NUL byte: no such file
        return False


def _folders(u: Upload) -> set[Path]:
    """The upload folders a registered upload's spec and weights lie in."""
    kind, _, rest = u.spec.partition(":")
    paths = [u.spec, rest.partition("?")[0] if kind in PATH_KINDS else "", u.details.get("weights")]
    return {folder for p in paths if isinstance(p, str) and p and (folder := uploads.upload_folder(p))}
