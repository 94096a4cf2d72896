"""The recipe's state in the browser session: one :class:`~essence.app.state.RecipeState` under one key."""

from __future__ import annotations

import streamlit as st

from essence.app.state import STATE_KEY, RecipeState


def recipe() -> RecipeState:
    """The session's recipe state (created on first use)."""
    if STATE_KEY not in st.session_state:
        st.session_state[STATE_KEY] = RecipeState()
    return st.session_state[STATE_KEY]
