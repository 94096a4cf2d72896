"""What a page needs before it can draw: a model, a dataset and a slice that fit; else say what is missing."""

from __future__ import annotations

from dataclasses import dataclass

import streamlit as st

from essence.app import cache, loading, services
from essence.app.components.boundary import said
from essence.app.components.session import recipe
from essence.app.components.text import plain, printable
from essence.core.base.errors import EssenceError
from essence.core.inputs.data import ImageData
from essence.core.inputs.models import LoadedModel

UPLOAD_PAGE = "views/upload.py"
OVERVIEW_PAGE = "views/overview.py"
PROFILES_PAGE = "views/profiles.py"
TRIAGE_PAGE = "views/triage.py"
EXPERTS_PAGE = "views/experts.py"
COMPARE_PAGE = "views/compare.py"
EXPLAIN_PAGE = "views/explain.py"
STORE_PAGE = "views/store.py"


@dataclass(frozen=True)
class Inputs:
    """The current model, dataset and slice, checked to fit each other.

    Attributes:
        model: the loaded model; data: its dataset with the model's preprocessing; layer: the slice.
        names: the class names (the model's, else the data's), control characters dropped.
        model_label, data_label: what the sidebar calls them (never a path on the server).
    """

    model: LoadedModel
    data: ImageData
    layer: str
    names: list[str]
    model_label: str = ""
    data_label: str = ""


def missing(what: str, page: str, label: str) -> None:
    """Say what is missing, link to the page that provides it, and stop drawing this page."""
    st.warning(what, icon=":material/explore:")
    st.page_link(page, label=label, icon=":material/arrow_forward:")
    st.stop()


def current_inputs() -> Inputs:
    """The sidebar's model, dataset and slice, or a message and a link (the page stops there)."""
    state = recipe()
    try:
        model = cache.model_of(state.model_choice)
    except EssenceError as exc:
        st.error(f"The model {plain(state.model)} cannot be loaded: {said(exc)}", icon=":material/warning:")
        missing("Choose another model in the sidebar, or upload it again.", UPLOAD_PAGE, "Upload a model")
    try:
        data = cache.data_for(state.data_choice, model)
    except EssenceError as exc:
        st.error(
            f"The dataset {plain(state.data)} does not fit {plain(state.model)}: {said(exc)}",
            icon=":material/warning:",
        )
        missing("Choose another dataset in the sidebar, or upload one.", UPLOAD_PAGE, "Upload a dataset")
    layer = state.layer or model.default_layer
    if not layer:
        missing(
            f"{plain(state.model)} has no default layer (slice) to look at: pick one in the sidebar (the sidebar's "
            "“Suggest a layer” scores every candidate).",
            OVERVIEW_PAGE,
            "Overview",
        )
    try:
        loading.check_layer(model, layer)
    except EssenceError as exc:
        st.error(said(exc), icon=":material/warning:")
        st.stop()
    names = [printable(n) for n in services.class_names(model, data)]
    return Inputs(model, data, layer, names, state.model, state.data)
