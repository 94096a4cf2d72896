"""Long work (class profiles of a new model or dataset): a progress bar, a cancel button, the store after.

The computation runs in the page's own script run. Pressing *Cancel* asks Streamlit for a new run, which
interrupts this one at its next progress update (the engine calls back once per batch); the interrupted
computation stores nothing, the model's hooks come off (context managers) and its lock is released. The
new run sees the pressed button and records the cancellation, so the work does not restart by itself.
"""

from __future__ import annotations

import streamlit as st

from essence.app import services
from essence.app.components.prereq import Inputs
from essence.app.components.session import recipe
from essence.core.profiles import ClassProfiles

WHAT = {
    "logit": "class profiles",
    "prob": "per-instance influence (for triage)",
}


def profiles(inputs: Inputs, kind: str, key: str) -> ClassProfiles:
    """The class profiles of ``kind`` with per-instance vectors; computed here (with progress) if new.

    Args:
        inputs: the current model, data and slice.
        kind: ``"logit"`` (the recipe's class profiles) or ``"prob"`` (triage's instance vectors).
        key: a prefix for this component's widget keys (unique per page).

    Returns:
        The profiles (the page stops here if the user cancelled them).
    """
    ready = services.ready_profiles(inputs.model, inputs.data, inputs.layer, kind)
    if ready is not None:
        return ready
    state = recipe()
    digest = services.profile_key(inputs.model, inputs.data, inputs.layer, kind).digest()
    what = WHAT.get(kind, "profiles")
    if digest in state.cancelled:
        st.info(f"Computing the {what} was cancelled; nothing was stored.", icon=":material/stop_circle:")
        if st.button(f"Compute the {what}", key=f"{key}-restart", type="primary"):
            state.cancelled.discard(digest)
            st.rerun()
        st.stop()
    slot = st.empty()
    box = slot.container(border=True)
    box.write(
        f"Computing the {what} of **{inputs.model.name}** on **{inputs.data.spec}** ({len(inputs.data)} images) "
        f"at `{inputs.layer}`. They are stored when done, so this happens once."
    )
    # Drawn before the work starts: pressing it interrupts the run below and lands here, pressed.
    if box.button("Cancel", key=f"{key}-cancel", shortcut="Esc"):
        state.cancelled.add(digest)
        st.rerun()
    bar = box.progress(0.0, text="starting…")

    def progress(done: int, total: int) -> None:
        bar.progress(min(done / max(total, 1), 1.0), text=f"{done} of {total} images")

    result = services.compute_profiles(inputs.model, inputs.data, inputs.layer, kind, progress=progress)
    slot.empty()
    return result
