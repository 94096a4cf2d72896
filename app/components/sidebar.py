"""The sidebar: the current model, dataset and slice, and the model's preprocessing recipe (the blur was the bug).

Widgets here carry no keys: their identity follows their options and default, so when another page changes
the recipe (an upload becomes the current model) the sidebar shows it, and the recipe itself lives in
:class:`~essence.app.state.RecipeState`, never in widget state.
"""

from __future__ import annotations

import streamlit as st

from essence.app import cache, services
from essence.app.components.session import recipe
from essence.app.state import RecipeState
from essence.core.errors import EssenceError
from essence.core.models import LoadedModel


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
            st.error(f"Model not loaded: {exc}", icon=":material/warning:")
            return
        _pick_layer(state, model)
        recipe_box(model)
        if state.reviewer:
            st.caption(f"Reviewer: **{state.reviewer}**")


def _pick_model(state: RecipeState) -> None:
    labels = list(state.models)
    chosen = st.selectbox(
        "Model", labels, index=labels.index(state.model), help="upload your own on “Your model & data”"
    )
    if chosen != state.model:
        state.model = chosen
        state.layer = None
        state.cls = None
        state.triage_position = 0


def _pick_data(state: RecipeState) -> None:
    labels = list(state.datasets)
    chosen = st.selectbox("Dataset", labels, index=labels.index(state.data))
    if chosen != state.data:
        state.data = chosen
        state.triage_position = 0
        state.explain_index = 0


def _pick_layer(state: RecipeState, model: LoadedModel) -> None:
    layers = services.layers_of(model)
    current = state.layer or model.default_layer
    options = layers if current in layers else ["(choose a slice)", *layers]
    index = options.index(current) if current in options else 0
    chosen = st.selectbox(
        "Slice (layer)", options, index=index, help="the layer whose units the influences are measured at"
    )
    if chosen in layers and chosen != current:
        state.layer = chosen
        state.cls = None
    with st.expander("Suggest a layer"):
        st.caption(
            "Scores each candidate layer by how concentrated class influence is there (few units, most influence)."
        )
        if st.button("Score the layers", key="sidebar-suggest"):
            _suggest(state, model)


def _suggest(state: RecipeState, model: LoadedModel) -> None:
    try:
        data = cache.data_for(state.data_choice, model)
        with st.spinner("Scoring layers…"):
            suggestion = services.layer_suggestion(model, data)
    except EssenceError as exc:
        st.error(str(exc), icon=":material/warning:")
        return
    st.success(f"Suggested: `{suggestion.suggested}`")
    st.caption(suggestion.reason)
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


def recipe_box(model: LoadedModel, where: st.delta_generator.DeltaGenerator | None = None) -> None:
    """The model's preprocessing recipe and card, shown wherever a model is shown."""
    box = where or st
    recipe_text = (
        model.preprocessing.describe() if model.preprocessing else "unknown (not recorded with the model)"
    )
    blurred = bool(model.preprocessing and model.preprocessing.blur_sigma > 0)
    box.markdown(f"**Preprocessing of {model.spec}**  \n{recipe_text}")
    if blurred:
        box.caption(
            f"Note: inputs are blurred (σ = {model.preprocessing.blur_sigma:g} px) before the model sees them"
        )
    facts = {
        k: v
        for k, v in model.card.items()
        if k in ("description", "trained_on", "architecture", "default_layer")
    }
    if facts:
        box.caption(" · ".join(f"{k.replace('_', ' ')}: {v}" for k, v in facts.items()))
