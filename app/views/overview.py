"""Overview (recipe step 1, look): accuracy, per-class recall and precision, the confusion matrix."""

import numpy as np
import pandas as pd
import streamlit as st

from essence.app import charts
from essence.app.components import longwork
from essence.app.components.boundary import run_page
from essence.app.components.prereq import PROFILES_PAGE, current_inputs
from essence.app.components.sidebar import recipe_box
from essence.app.components.text import plain
from essence.app.evaluation import evaluated, evaluation

UNDEFINED = "—"  # a rate with nothing to count (a class never predicted has no precision)


def render() -> None:
    st.title("Overview")
    inputs = current_inputs()
    k = len(inputs.names)
    ev = longwork.run(
        "the predictions",
        "overview",
        f"evaluation-{inputs.model.fingerprint}-{inputs.data.fingerprint}",
        lambda progress, cancel: evaluation(inputs.model, inputs.data, k),
        detail=f"Running **{plain(inputs.model_label)}** on the {len(inputs.data)} images of "
        f"**{plain(inputs.data_label)}**…",
        new=not evaluated(inputs.model, inputs.data),
    )
    st.caption(
        f"{plain(inputs.model_label)} on {plain(inputs.data_label)}: {len(inputs.data)} images, {k} classes"
    )
    recipe_box(inputs.model)
    never = ev.never_predicted
    for c in never:
        support = int(ev.confusion[c].sum())
        st.error(
            f"The model never predicts **{plain(inputs.names[c])}** ({support} of the images are "
            f"{plain(inputs.names[c])}). "
            "Follow the recipe to find out why.",
            icon=":material/flag:",
        )
    cols = st.columns(3)
    cols[0].metric("Accuracy", f"{ev.accuracy:.1%}")
    cols[1].metric("Images", f"{len(inputs.data)}")
    cols[2].metric("Classes never predicted", f"{len(never)}")
    table = pd.DataFrame(
        {
            "class": inputs.names,
            "images": ev.confusion.sum(1),
            "predicted as it": ev.confusion.sum(0),
            "recall": _rates(ev.recall),
            "precision": _rates(ev.precision),
        }
    )
    left, right = st.columns(2)
    with left:
        st.altair_chart(charts.class_bars(inputs.names, ev.recall, ev.precision), width="stretch")
        st.dataframe(table, hide_index=True)
        _undefined(inputs.names, ev)
    with right:
        st.altair_chart(charts.confusion_chart(ev.confusion, inputs.names))
    if inputs.data.skipped:
        st.warning(f"{len(inputs.data.skipped)} unreadable images were left out.")
    st.page_link(
        PROFILES_PAGE,
        label="Next: the class profiles — what each class's decision rests on",
        icon=":material/arrow_forward:",
    )


def _rates(values) -> list[str]:
    """Recall or precision as the table shows them: two decimals, or "—" where undefined (never "None")."""
    return [f"{v:.2f}" if np.isfinite(v) else UNDEFINED for v in np.asarray(values, dtype=float)]


def _undefined(names: list[str], ev) -> None:
    """Say what a "—" in the table means."""
    never = [plain(names[c]) for c in range(len(names)) if not np.isfinite(ev.precision[c])]
    empty = [plain(names[c]) for c in range(len(names)) if not np.isfinite(ev.recall[c])]
    said = []
    if never:
        said.append(
            f"{UNDEFINED} as precision: the model never predicts {', '.join(never)}, so the share of its "
            "predictions of it that are right is undefined"
        )
    if empty:
        said.append(f"{UNDEFINED} as recall: no image here is labelled {', '.join(empty)}")
    if said:
        st.caption("; ".join(said) + ".")


run_page(render)
