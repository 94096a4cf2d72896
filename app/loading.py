"""Opening what the user chose: a model (with what an upload gave beside it), a dataset under a recipe, and the
checks that they fit each other and that a slice exists. Plain Python: no Streamlit here (the loaded objects are
cached by :mod:`essence.app.cache`)."""

from __future__ import annotations

import json

from essence.app.shared import holding, remembered
from essence.app.state import ModelChoice
from essence.core import (
    ImageData,
    LayerNotFoundError,
    LoadedModel,
    Preprocessing,
    layer_names,
    load_dataset,
    load_model,
    resolve_layer,
)
from essence.core.inputs.cards import with_class_names
from essence.core.inputs.datasets import environment_data_root
from essence.core.inputs.models import check_compatible


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
