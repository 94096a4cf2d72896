"""The page boundary: a user's mistake is shown as a message that says what to fix, never as a traceback, and
never with a path on the server (an upload is named by its file, the store's folder as such)."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import streamlit as st

from essence.core.base.errors import EssenceError

log = logging.getLogger("essence.app")

INTERNAL_ERROR = "Essence hit an internal error"
# What a widget's callback could not do, said by the page on the run that follows the click (callbacks run
# before the page's script, outside its boundary).
CALLBACK_ERROR_KEY = "essence-callback-error"


def run_page(render: Callable[[], None]) -> None:
    """Run a page's ``render``; an :class:`EssenceError` becomes ``st.error`` with its message.

    Any other exception is a bug of Essence, not the user's doing: it is logged with its traceback on the
    server and the page says so in one line (Streamlit's own stop/rerun signals pass through untouched:
    they are not ``Exception``\\ s).
    """
    try:
        callback_error()
        render()
    except EssenceError as exc:
        st.error(said(exc), icon=":material/warning:")
    except Exception as exc:  # a bug: keep the traceback in the server log, not in the clinician's face
        log.exception("page failed")
        st.error(_internal(exc))


def _internal(exc: Exception) -> str:
    return f"{INTERNAL_ERROR} ({type(exc).__name__}: {exc}). Please report it; the details are in the log."


def guarded(callback: Callable[..., None]) -> Callable[..., None]:
    """A widget callback held to the page's rule: what it cannot do is said (by :func:`callback_error`, on the
    run the click starts), never shown as a traceback."""

    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> None:
        try:
            callback(*args, **kwargs)
        except EssenceError as exc:
            st.session_state[CALLBACK_ERROR_KEY] = said(exc)
        except Exception as exc:  # a bug, as in run_page
            log.exception("callback failed")
            st.session_state[CALLBACK_ERROR_KEY] = _internal(exc)

    return run


def callback_error() -> None:
    """Show, once, what the last guarded callback could not do."""
    message = st.session_state.pop(CALLBACK_ERROR_KEY, None)
    if message:
        st.error(message, icon=":material/warning:")


def said(exc: BaseException) -> str:
    """An error's message as the page shows it: no server path, the app's switches for the CLI's flags, and
    markdown's special characters escaped (messages quote file and class names)."""
    from essence.app.components.session import recipe
    from essence.app.components.text import for_people, plain
    from essence.app.uploads import uploads_root

    return plain(for_people(str(exc), uploads_root(), known_labels(recipe())))


def known_labels(state: object) -> dict[str, str]:
    """Every upload's spec and weights file → what the sidebar calls it (for messages that quote them)."""
    labels: dict[str, str] = {}
    for label, choice in getattr(state, "models", {}).items():
        labels[choice.spec] = label
        if choice.weights:
            labels[choice.weights] = label
    for label, choice in getattr(state, "datasets", {}).items():
        labels[choice.spec] = label
    return labels
