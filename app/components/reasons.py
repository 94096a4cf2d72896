"""The Triage page's view of *reasons*: the queue chosen, label doubt beside reasoning, the misclassified read
through both classes' profiles, and the units that made an image stand out, each shown on the image.

Self-contained (its widgets own their keys) so that the page only calls :func:`queue_order` and
:func:`reasons_panel`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import streamlit as st

from essence.app.components.images import enlarge
from essence.app.components.prereq import Inputs
from essence.app.shared import holding, remembered

QUEUE_CHOICE_KEY = "triage-queue-choice"
# The default queue is the merged one (measured: docs/analyses.md, triage): the two others are one click away.
QUEUES = {
    "merged": "Both, interleaved: doubtful labels and right-for-unusual-reasons",
    "self_confidence": "Label doubt: the model is unsure of the given label",
    "reasoning": "Reasons: how far the image's reasons depart from its class's",
}
WHY_SHOWN = 3  # units drawn on the image for the open row
READINGS = {
    "predicted": "it follows the **predicted** class's reasons: its own class's distinguishing evidence is "
    "missing — or the label is wrong",
    "own": "it follows its **own** class's reasons, yet another class wins: the read-out is at fault",
    "both": "it follows **both** classes' reasons: an ambiguous image",
    "neither": "it follows **neither** class's reasons: confusion, or an unusual image",
    "unknown": "one of the classes has too few correctly predicted images to have a reference",
}


def queue_order(result: object, on_change: Callable[[], None] | None = None) -> np.ndarray:
    """A radio choice of queue; the triage's row numbers in that queue's order (ties: dataset order)."""
    if QUEUE_CHOICE_KEY not in st.session_state:
        st.session_state[QUEUE_CHOICE_KEY] = result.score if result.score in QUEUES else "merged"
    choice = st.radio(
        "Queue",
        list(QUEUES),
        format_func=QUEUES.get,
        key=QUEUE_CHOICE_KEY,
        horizontal=True,
        on_change=on_change,
    )
    if choice == result.score:
        return result.ranking
    values = np.nan_to_num(result.scores[choice], nan=-np.inf)
    return np.lexsort((result.indices, -values)).astype(np.int64)


def reasons_panel(inputs: Inputs, result: object, row: int, granularity: str) -> None:
    """Label doubt and reasoning side by side, the profile reading of a misclassified image, and why it was
    flagged. (The label doubt is 1 − p(label), the ``self_confidence`` score; *doubt* alone is 1 − max p.)"""
    r = result.reasoning
    label, predicted = int(result.labels[row]), int(result.predicted[row])
    label_doubt, reasoning = st.columns(2)
    label_doubt.metric("Label doubt (1 − p(label))", f"{result.scores['self_confidence'][row]:.2f}")
    value = r.score[row]
    reasoning.metric(
        "Reasoning (× class's typical)",
        "—" if not np.isfinite(value) else f"{value:.1f}",
        help="How far the image's per-unit contributions to its label's score depart from those of the class's "
        "correctly predicted images (1 = a typical member; higher = less like them).",
    )
    if label != predicted:
        # Class names are data: they stay out of markdown (the label and prediction are shown beside the image).
        st.markdown(
            f"**Read through the profiles**: against its label's class {_times(r.score[row])}, against the "
            f"predicted class {_times(r.to_predicted[row])} (typical members lie within "
            f"{_times(r.typical[label])} and {_times(r.typical[predicted])}): "
            f"{READINGS.get(r.reading[row], 'no reading')}."
        )
    _why(inputs, result, row, granularity)


def _times(x: float) -> str:
    return "—" if not np.isfinite(x) else f"{x:.1f}×"


def _why(inputs: Inputs, result: object, row: int, granularity: str) -> None:
    units = [int(u) for u in result.why_units[row][:WHY_SHOWN]]
    if not units:
        return
    index = int(result.indices[row])
    maps = why_images(inputs, index, units, granularity)
    st.markdown(
        "**Why flagged**: the features (units) whose contributions depart most from the class's, where they look:"
    )
    cols = st.columns(len(units))
    for col, unit, z, image in zip(cols, units, result.why_z[row][: len(units)], maps, strict=True):
        col.image(image, caption=f"unit {unit}: {z:+.1f} sd")


def why_images(inputs: Inputs, index: int, units: list[int], granularity: str) -> list[np.ndarray]:
    """Each unit's saliency (input gradient of its activation) over the image, uint8 RGB (remembered)."""
    from essence.core.analyses.interpret import display_image, overlay, saliency_map, unit_input_gradients

    model, data = inputs.model, inputs.data
    key = (
        "why-saliency",
        model.fingerprint,
        data.fingerprint,
        inputs.layer,
        granularity,
        index,
        tuple(units),
    )

    def run() -> list[np.ndarray]:
        x = data.tensors([index])[0]
        with holding(model):
            grads = unit_input_gradients(model.module, x, inputs.layer, units, granularity=granularity)  # type: ignore[arg-type]
        image = display_image(x, data.preprocessing.mean, data.preprocessing.std)
        return [enlarge(overlay(image, m)) for m in saliency_map(grads)]

    return remembered(key, run)
