"""The recipe's state in the browser session: one :class:`~essence.app.state.RecipeState` under one key.

The uploads registered in the store are merged into it on every run, so a reload, a new browser session or a
restarted server offers them again, and an upload removed in one session leaves the others' lists too.
"""

from __future__ import annotations

import streamlit as st

from essence.app import registry
from essence.app.state import DEMO_DATA, DEMO_MODEL, STATE_KEY, RecipeState
from essence.core.errors import EssenceError

REVIEWER_KEY = "reviewer"  # the reviewer's name, remembered in the page's address (survives a reload)


def recipe() -> RecipeState:
    """The session's recipe state (created on first use), with the store's uploads offered."""
    if STATE_KEY not in st.session_state:
        state = RecipeState()
        state.reviewer = st.query_params.get(REVIEWER_KEY, "")
        st.session_state[STATE_KEY] = state
    state = st.session_state[STATE_KEY]
    if state.reviewer and st.query_params.get(REVIEWER_KEY) != state.reviewer:
        st.query_params[REVIEWER_KEY] = state.reviewer  # page changes may drop it: put it back
    _sync_uploads(state)
    return state


def remember_reviewer(name: str) -> None:
    """Set the reviewer and keep the name in the page's address, so a reload does not ask again."""
    recipe().reviewer = name
    st.query_params[REVIEWER_KEY] = name


def _sync_uploads(state: RecipeState) -> None:
    try:
        models, datasets = registry.saved_models(), registry.saved_datasets()
    except EssenceError:  # an unreadable store is reported by the pages that need it, not here
        return
    demo_models = {k: v for k, v in state.models.items() if v.spec.startswith("demo:")}
    demo_data = {k: v for k, v in state.datasets.items() if v.spec.startswith("demo:")}
    state.models = {**demo_models, **{c.label: c for c in models}}
    state.datasets = {**demo_data, **{c.label: c for c in datasets}}
    if state.model not in state.models:
        state.model, state.layer, state.cls = DEMO_MODEL, None, None
    if state.data not in state.datasets:
        state.data, state.triage_position, state.explain_index = DEMO_DATA, 0, 0
    if state.compare_with not in state.models:
        state.compare_with = None
