"""The sidebar: the current model, dataset and slice, and the model's preprocessing recipe (the blur was the bug).

Every widget here has a stable key, seeded from :class:`~essence.app.state.RecipeState` and written back by its
``on_change`` (:mod:`~essence.app.components.bound`): two choices in a row both stick, and when another page
changes the recipe (an upload made current) the sidebar shows it on the next run.
"""

from __future__ import annotations

import threading
from pathlib import PurePath

import streamlit as st

from essence.app import cache, loading, services
from essence.app.components import bound, longwork
from essence.app.components.session import recipe
from essence.app.components.text import plain, printable
from essence.app.state import RecipeState
from essence.core.base.errors import EssenceError
from essence.core.inputs.models import LoadedModel

MODEL_KEY = "sidebar-model"
DATA_KEY = "sidebar-data"
LAYER_KEY = "sidebar-layer"
NO_LAYER = "(choose a layer)"


def render() -> None:
    """Draw the sidebar and write the user's choices into the recipe state."""
    state = recipe()
    with st.sidebar:
        st.markdown("### Essence")
        _pick_model(state)
        _pick_data(state)
        try:
            model = cache.model_of(state.model_choice)
        except EssenceError as exc:
            st.error(f"Model not loaded: {plain(exc)}", icon=":material/warning:")
            return
        _pick_layer(state, model)
        recipe_box(model)


def _set_model(state: RecipeState, label: str) -> None:
    if label != state.model:
        state.model, state.layer, state.cls, state.triage_position = label, None, None, 0
        state.suggesting = False  # scores of another model's layers: asked for again when wanted


def _set_data(state: RecipeState, label: str) -> None:
    if label != state.data:
        state.data, state.triage_position, state.explain_index = label, 0, 0
        state.suggesting = False


def _pick_model(state: RecipeState) -> None:
    bound.seed(MODEL_KEY, state.model)
    st.selectbox(
        "Model",
        list(state.models),
        key=MODEL_KEY,
        format_func=printable,
        on_change=bound.writer(MODEL_KEY, lambda v: _set_model(state, v)),
        help="upload your own on “Your model & data”",
    )


def _pick_data(state: RecipeState) -> None:
    bound.seed(DATA_KEY, state.data)
    st.selectbox(
        "Dataset",
        list(state.datasets),
        key=DATA_KEY,
        format_func=printable,
        on_change=bound.writer(DATA_KEY, lambda v: _set_data(state, v)),
    )


def _set_layer(state: RecipeState, layer: str) -> None:
    if layer != NO_LAYER:
        state.layer, state.cls = layer, None


def _pick_layer(state: RecipeState, model: LoadedModel) -> None:
    layers = loading.layers_of(model)
    current = state.layer or model.default_layer
    options = layers if current in layers else [NO_LAYER, *layers]
    bound.seed(LAYER_KEY, current if current in layers else NO_LAYER)
    st.selectbox(
        "Layer (slice)",
        options,
        key=LAYER_KEY,
        on_change=bound.writer(LAYER_KEY, lambda v: _set_layer(state, v)),
        help="the layer where Essence looks inside the model: the influences are measured on its features "
        "(its units)",
    )
    with st.expander("Suggest a layer", expanded=state.suggesting):
        st.caption(
            "Scores each candidate layer by how concentrated class influence is there (few features, or units, "
            "carry most of it)."
        )
        if st.button("Score the layers", key="sidebar-suggest"):
            state.suggesting = True
        if state.suggesting:
            _suggest(state, model)


def _suggest(state: RecipeState, model: LoadedModel) -> None:
    try:
        data = cache.data_for(state.data_choice, model)

        def work(progress, cancel: threading.Event):
            return services.layer_suggestion(model, data, progress=progress, cancel=cancel)

        digest = f"layers-{model.fingerprint}-{data.fingerprint}"
        suggestion = longwork.run("the layer scores", "sidebar-suggest", digest, work)
    except EssenceError as exc:
        st.error(plain(exc), icon=":material/warning:")
        return
    st.success(f"Suggested: `{suggestion.suggested}`")
    st.caption(plain(suggestion.reason))
    if suggestion.suggested != (state.layer or model.default_layer):
        st.button(
            f"Use {suggestion.suggested}",
            key="sidebar-use-suggestion",
            on_click=_use_layer,
            args=(state, suggestion.suggested),
        )


def _use_layer(state: RecipeState, layer: str) -> None:
    state.layer = layer
    state.cls = None
    state.suggesting = False


def shown_spec(model: LoadedModel) -> str:
    """The model's spec as a person reads it: an uploaded file by its name, never its path on the server."""
    spec = model.spec
    return PurePath(spec.replace("\\", "/")).name if "/" in spec or "\\" in spec else spec


def recipe_box(model: LoadedModel, where: st.delta_generator.DeltaGenerator | None = None) -> None:
    """The model's preprocessing recipe and card, shown wherever a model is shown."""
    box = where or st
    recipe_text = (
        model.preprocessing.describe() if model.preprocessing else "unknown (not recorded with the model)"
    )
    blurred = bool(model.preprocessing and model.preprocessing.blur_sigma > 0)
    box.markdown(f"**Preprocessing of {plain(shown_spec(model))}**  \n{recipe_text}")
    if blurred:
        box.caption(
            f"Note: inputs are blurred (σ = {model.preprocessing.blur_sigma:g} px) before the model sees them"
        )
    if model.class_names:
        where = {"card": "its card", "option": "the class names given with it"}.get(
            model.class_source or "", "the model itself"
        )
        box.caption(f"Classes, in output order (from {where}): {plain(', '.join(model.class_names))}")
    else:
        box.caption(
            "Classes: the model names none, so its outputs are matched to the data's labels only where those "
            "are class indices; on data that names its classes, give the names in output order when uploading it"
        )
    facts = {
        k: v
        for k, v in model.card.items()
        if k in ("description", "trained_on", "architecture", "default_layer")
    }
    if facts:
        box.caption(" · ".join(f"{k.replace('_', ' ')}: {plain(v)}" for k, v in facts.items()))
