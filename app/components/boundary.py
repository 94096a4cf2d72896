"""The page boundary: a user's mistake is shown as a message that says what to fix, never as a traceback."""

from __future__ import annotations

import logging
from collections.abc import Callable

import streamlit as st

from essence.core.errors import EssenceError

log = logging.getLogger("essence.app")

INTERNAL_ERROR = "Essence hit an internal error"


def run_page(render: Callable[[], None]) -> None:
    """Run a page's ``render``; an :class:`EssenceError` becomes ``st.error`` with its message.

    Any other exception is a bug of Essence, not the user's doing: it is logged with its traceback on the
    server and the page says so in one line (Streamlit's own stop/rerun signals pass through untouched:
    they are not ``Exception``\\ s).
    """
    try:
        render()
    except EssenceError as exc:
        st.error(str(exc), icon=":material/warning:")
    except Exception as exc:  # a bug: keep the traceback in the server log, not in the clinician's face
        log.exception("page failed")
        st.error(
            f"{INTERNAL_ERROR} ({type(exc).__name__}: {exc}). Please report it; the details are in the log."
        )
