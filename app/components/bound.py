"""Widgets bound to the recipe state: a stable key, seeded from the state, the choice written back on change.

A widget without a key is identified by its label, options and default; when the default follows the recipe,
every choice makes a new widget and the user's next choice is silently dropped (a real browser shows it, AppTest
does not). So every interactive widget of the app has a stable ``key``; before it is drawn, its value in
``st.session_state`` is set from the recipe when the two differ (first draw, a page that did not draw it, or
another page that changed the recipe — an upload made current); the widget's ``on_change`` writes the user's
choice back into the recipe, before the script runs again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import streamlit as st


def seed(key: str, value: Any) -> None:
    """Give the widget ``key`` the recipe's ``value`` unless it already holds it (call before drawing it)."""
    if key not in st.session_state or st.session_state[key] != value:
        st.session_state[key] = value


def writer(key: str, write: Callable[[Any], None]) -> Callable[[], None]:
    """An ``on_change`` callback that hands the widget's new value to ``write`` (which updates the recipe)."""

    def on_change() -> None:
        write(st.session_state[key])

    return on_change
