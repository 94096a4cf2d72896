"""Experts & diagnosis (recipe steps 4–5): is a rarely predicted class drowned by others, or not learned?"""

import numpy as np
import pandas as pd
import streamlit as st

from essence.app import charts, services
from essence.app.components import longwork
from essence.app.components.boundary import run_page
from essence.app.components.prereq import COMPARE_PAGE, current_inputs
from essence.app.components.session import recipe
from essence.app.components.sidebar import recipe_box

ICONS = {
    "ok": ":material/check_circle:",
    "drowning experts": ":material/waves:",
    "not learned": ":material/block:",
}


def render() -> None:
    st.title("Experts & diagnosis")
    st.caption(
        "An expert for class i keeps the α most positive and β most negative units of i's profile, zeroes the "
        "rest of the slice, and reads the model as “i or not i” (paper Fig. 5). A rarely predicted class with an "
        "expert is *drowning* (learned, outweighed by other classes); without one it was *not learned*."
    )
    inputs = current_inputs()
    profiles = longwork.profiles(inputs, "logit", key="experts")
    with st.spinner("Diagnosing every class…"):
        diag = services.diagnosis(inputs.model, inputs.data, inputs.layer, profiles)
    for c in diag.classes:
        if c.diagnosis != "ok":
            st.error(f"**{c.name}: {c.diagnosis}** — {c.advice}", icon=ICONS[c.diagnosis])
    if any(c.diagnosis == "not learned" for c in diag.classes):
        st.markdown(
            "The preprocessing is part of the question: this is what the model's inputs went through."
        )
        recipe_box(inputs.model)
    st.dataframe(_table(diag), hide_index=True)
    _sweep(inputs, profiles, diag)
    st.page_link(
        COMPARE_PAGE, label="Next: compare with the retrained model", icon=":material/arrow_forward:"
    )


def _table(diag) -> pd.DataFrame:
    rows = []
    for c in diag.classes:
        e = c.expert
        rows.append(
            {
                "class": c.name,
                "images": c.count,
                "predicted as it": c.predicted_count,
                "recall": round(c.recall, 3) if np.isfinite(c.recall) else None,
                "precision": round(c.precision, 3) if np.isfinite(c.precision) else None,
                "diagnosis": c.diagnosis,
                "expert": f"α={e['alpha']}, β={e['beta']}: recall {e['recall']:.2f}, precision {e['precision']:.2f}"
                if e
                else "",
                "drowned by": ", ".join(c.drowned_by),
            }
        )
    return pd.DataFrame(rows)


def _sweep(inputs, profiles, diag) -> None:
    state = recipe()
    flagged = [c.cls for c in diag.classes if c.diagnosis != "ok"]
    default = state.cls if state.cls is not None else (flagged or [0])[0]
    cls = st.selectbox(
        "Expert sweep of class",
        range(len(inputs.names)),
        index=default,
        format_func=lambda c: inputs.names[c],
    )
    state.cls = cls
    entry = diag.classes[cls]
    if entry.count == 0:
        st.warning(f"{entry.name} has no images here: no expert can be measured.")
        return
    if entry.sweep is not None:
        sweep, control = entry.sweep, entry.control
    else:
        with st.spinner(f"Sweeping α × β for {entry.name}…"):
            sweep, control = services.sweep(inputs.model, inputs.data, inputs.layer, cls, profiles)
    experts = sweep.experts(diag.settings.criterion)
    st.altair_chart(charts.sweep_heatmaps(sweep, experts))
    best = sweep.best(diag.settings.criterion)
    if best:
        st.success(
            f"Best expert: α={best['alpha']}, β={best['beta']} — recall {best['recall']:.2f} at precision "
            f"{best['precision']:.2f} (model: recall {sweep.baseline['recall']:.2f}). Outlined cells are experts."
        )
    else:
        st.warning(f"No cell of the grid is an expert for {entry.name}.")
    with st.expander("Control: units ranked by activation instead of influence (should fail)"):
        st.altair_chart(charts.sweep_heatmaps(control, control.experts(diag.settings.criterion)))


run_page(render)
