"""The Triage page's shortcut finder: flagged images that share why-flagged units, each group in one sentence
(where its evidence lies, and how many predictions covering it changes against a random region of the same
size), with the group's aggregated saliency drawn over one of its images.

Computed when asked (a button: it runs the model again on the flagged images), then remembered by the services
for the model, data and slice, so later runs of the page show it at once. Self-contained: its widgets own their
keys, and the page only calls :func:`shortcuts_panel`.
"""

from __future__ import annotations

import streamlit as st

from essence.app import services
from essence.app.components.images import enlarge
from essence.app.components.prereq import Inputs

FIND_KEY = "triage-shortcuts-find"
EXPLAINED = (
    "Groups of flagged images of one class whose reasons share the same units more often than chance allows. "
    "The map is those units' saliency on the group's images, averaged; the outlined rectangle holds its peak. "
    "Covering that rectangle (with the image's mean) and counting the predictions that change tests whether "
    "the model needs it; a random rectangle of the same size is covered too, for comparison."
)


def shortcuts_panel(inputs: Inputs, result: object) -> None:
    """An expander: a button that looks for shared evidence among the triage's flagged images, then each group's
    sentence and map (shown at once when the services already hold them)."""
    found = services.shortcuts(inputs.model, inputs.data, inputs.layer)
    with st.expander("Shortcuts: do flagged images share their reasons?", expanded=found is not None):
        st.caption(EXPLAINED)
        if found is None:
            if not st.button("Look for shared reasons among the flagged", key=FIND_KEY):
                return
            with st.spinner("Looking for shared reasons and covering their evidence…"):
                found = services.shortcuts(inputs.model, inputs.data, inputs.layer, result)  # type: ignore[arg-type]
        if not found:
            st.info("No group of flagged images shares its why-flagged units more often than chance allows.")
        for group in found or []:
            _group(inputs, group)


def _group(inputs: Inputs, group: object) -> None:
    """One group: its sentence (plain text: it holds a class name) and its map over the group's first image."""
    from essence.core.analyses.interpret import display_image
    from essence.core.analyses.shortcuts import evidence_image

    st.text(group.sentence)  # type: ignore[attr-defined]
    index = int(group.indices[0])  # type: ignore[attr-defined]
    recipe = inputs.data.preprocessing
    image = display_image(inputs.data.tensors([index])[0], recipe.mean, recipe.std)
    picture = evidence_image(group, image)  # type: ignore[arg-type]
    st.image(
        enlarge(picture),
        caption=f"image {index}: the shared units' saliency, averaged over the group (left: on the image, the "
        "region outlined; right: as a heat map)",
    )
