"""The recipe's state in the browser session: one :class:`~essence.app.state.RecipeState` under one key.

The uploads registered in the store are merged into it on every run, so a reload, a new browser session or a
restarted server offers them again, and an upload removed in one session leaves the others' lists too.

The reviewer's name is the sidebar's *Reviewer* field, bound to the page's address (``?reviewer=…``): Streamlit
keeps a parameter bound to a widget of the entry file in the address on every page change, so the name survives
a reload of the tab, and no page writes the address itself. (Writing ``st.query_params`` after a page change,
which drops the parameter, added a second entry to the browser's history: Back then took two presses.)
"""

from __future__ import annotations

import streamlit as st

from essence.app import registry
from essence.app.state import DEMO_DATA, DEMO_MODEL, STATE_KEY, RecipeState
from essence.core.base.errors import EssenceError

REVIEWER_KEY = "reviewer"  # the reviewer's name, remembered in the page's address (survives a reload)


def recipe() -> RecipeState:
    """The session's recipe state (created on first use), with the store's uploads offered."""
    if STATE_KEY not in st.session_state:
        state = RecipeState()
        state.reviewer = str(st.query_params.get(REVIEWER_KEY, "")).strip()
        st.session_state[STATE_KEY] = state
    state = st.session_state[STATE_KEY]
    _sync_uploads(state)
    return state


def reviewer_field() -> None:
    """The sidebar's *Reviewer* field (on every page: a bound parameter stays in the address only while its
    widget is drawn); the recipe's reviewer follows it."""
    state = recipe()
    if REVIEWER_KEY not in st.session_state and state.reviewer:
        st.session_state[REVIEWER_KEY] = state.reviewer
    st.sidebar.text_input(
        "Reviewer",
        key=REVIEWER_KEY,
        bind="query-params",
        placeholder="asked on Triage",
        help="Your name, stored with every verdict; kept in this tab's address, so a reload does not ask again.",
    )
    state.reviewer = str(st.session_state.get(REVIEWER_KEY) or "").strip()


def remember_reviewer(name: str) -> None:
    """Set the reviewer, and so the sidebar's field and the page's address (call it from a widget's callback:
    the field is drawn before any page)."""
    recipe().reviewer = name
    st.session_state[REVIEWER_KEY] = name


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
