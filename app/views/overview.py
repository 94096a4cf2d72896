"""Overview (recipe step 1, look): accuracy, per-class recall and precision, the confusion matrix."""

import pandas as pd
import streamlit as st

from essence.app import charts
from essence.app.components import longwork
from essence.app.components.boundary import run_page
from essence.app.components.prereq import PROFILES_PAGE, current_inputs
from essence.app.components.sidebar import recipe_box
from essence.app.components.text import plain
from essence.app.evaluation import evaluation


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
            "recall": ev.recall,
            "precision": ev.precision,
        }
    )
    left, right = st.columns(2)
    with left:
        st.altair_chart(charts.class_bars(inputs.names, ev.recall, ev.precision), width="stretch")
        st.dataframe(table, hide_index=True, column_config=_percent("recall", "precision"))
    with right:
        st.altair_chart(charts.confusion_chart(ev.confusion, inputs.names))
    if inputs.data.skipped:
        st.warning(f"{len(inputs.data.skipped)} unreadable images were left out.")
    st.page_link(
        PROFILES_PAGE,
        label="Next: the class profiles — what each class's decision rests on",
        icon=":material/arrow_forward:",
    )


def _percent(*names: str) -> dict:
    return {n: st.column_config.NumberColumn(n, format="%.2f") for n in names}


run_page(render)
