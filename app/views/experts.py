"""Experts & diagnosis (recipe steps 4–5): why is a class rarely predicted, and what to do about it?"""

import numpy as np
import pandas as pd
import streamlit as st

from essence.app import charts, diagnosis_charts, services
from essence.app.components import bound, longwork
from essence.app.components.boundary import run_page
from essence.app.components.prereq import COMPARE_PAGE, current_inputs
from essence.app.components.session import recipe
from essence.app.components.sidebar import recipe_box

ICONS = {
    "ok": ":material/check_circle:",
    "drowning experts": ":material/waves:",
    "not read out": ":material/visibility_off:",
    "not learned": ":material/block:",
}
SWEEP_KEY = "experts-class"
MEANING = {
    "drowning experts": "the model learned it, but other classes' units outweigh it",
    "not read out": "the network's features carry it, but its last layers never use them",
    "not learned": "the network's features do not carry it",
}


def render() -> None:
    st.title("Experts & diagnosis")
    st.caption(
        "An expert is a small part of the layer that recognises a class on its own: the features pushing most "
        "towards the class and most against it (its α most positive and β most negative units), the rest of the "
        "layer set to zero, read as “this class or not” (paper Fig. 5). For a rarely predicted class: an honest "
        "expert (ranked on half the images, scored on the other half, beating parts of the same size chosen by "
        "activation or at random) means its experts are *drowning*; without one, a simple classifier on the "
        "layer (a probe) says whether the class is *not read out* (the layer carries it) or *not learned* (it "
        "does not) — and then each lossy preprocessing step is tested for erasing it. Words: the glossary in "
        "the sidebar."
    )
    inputs = current_inputs()
    profiles = longwork.profiles(inputs, "logit", key="experts")
    diag = longwork.run(
        "the diagnosis",
        "experts-diagnosis",
        "diagnosis-" + services.profile_key(inputs.model, inputs.data, inputs.layer, "logit").digest(),
        lambda progress, cancel: services.diagnosis(
            inputs.model, inputs.data, inputs.layer, profiles, progress=progress, cancel=cancel
        ),
        detail=f"Diagnosing every class of **{plain(inputs.model_label)}**: expert sweeps, probes of the slice "
        "and the preprocessing audit.",
        new=not services.known(services.diagnosis_key(inputs.model, inputs.data, inputs.layer)),
    )
    for c in diag.classes:
        if c.diagnosis != "ok":
            _flagged(c)
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


def _flagged(c) -> None:
    """One flagged class: the verdict, its evidence as a chart, and the remedy in words."""
    st.error(
        f"{plain(c.name)}: {c.diagnosis} — {MEANING[c.diagnosis]}.\n\n{plain(c.advice.split('. Remedy:')[0])}.",
        icon=ICONS[c.diagnosis],
    )
    chart = diagnosis_charts.diagnosis_evidence(c)
    if chart is not None:
        st.altair_chart(chart)
    for step in c.suspect_steps:
        st.warning(f"Suspect step: {plain(step.step)} — {plain(step.evidence)}", icon=":material/blur_on:")
    st.info(f"What to do: {plain(c.remedy)}", icon=":material/build:")


def plain(text: str) -> str:
    """Text from data or analysis shown as it is (markdown's special characters escaped)."""
    return "".join("\\" + ch if ch in "\\`*_{}[]<>()#+-.!|~$" else ch for ch in str(text))


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
                "layer tells it from its neighbour (probe AUC)": round(c.probe.auc, 3)
                if c.probe and np.isfinite(c.probe.auc)
                else None,
                "chance up to": round(c.probe.threshold, 3) if c.probe else None,
                "suspect steps": ", ".join(t.step for t in c.suspect_steps),
                "best expert (units kept: α for, β against)": f"α={e['alpha']}, β={e['beta']}: recall "
                f"{e['recall']:.2f}, precision {e['precision']:.2f}"
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
    bound.seed(SWEEP_KEY, default if 0 <= default < len(inputs.names) else 0)
    cls = st.selectbox(
        "Experts of class (every α × β size tried)",
        range(len(inputs.names)),
        key=SWEEP_KEY,
        format_func=lambda c: inputs.names[c],
        on_change=bound.writer(SWEEP_KEY, lambda c: setattr(state, "cls", c)),
    )
    entry = diag.classes[cls]
    if entry.count == 0:
        st.warning(f"{entry.name} has no images here: no expert can be measured.")
        return
    if entry.sweep is not None:
        sweep, control = entry.sweep, entry.control
    else:
        with st.spinner(f"Trying every expert size (α × β) for {entry.name}…"):
            sweep, control = services.sweep(inputs.model, inputs.data, inputs.layer, cls, profiles)
    honest = entry.evidence
    experts = honest.experts if honest is not None else sweep.experts(diag.settings.criterion)
    st.altair_chart(charts.sweep_heatmaps(sweep, experts))
    if entry.predicted_count == 0:
        st.caption(
            f"The model never predicts {plain(entry.name)}, so precision is undefined where a mask predicts it "
            "nowhere either: those cells of the precision map are empty, not zero."
        )
    best = honest.best if honest is not None else sweep.best(diag.settings.criterion)
    how = (
        "cross-fitted, and must beat the control and random masks of its size"
        if honest is not None
        else "against the model, corrected for choosing the best of the grid"
    )
    if best:
        st.success(
            f"Best expert ({how}): α={best['alpha']}, β={best['beta']} — recall {best['recall']:.2f} at "
            f"precision {best['precision']:.2f} (model: recall {sweep.baseline['recall']:.2f}). Outlined cells "
            "are experts."
        )
    elif entry.diagnosis == "ok":
        st.info(
            f"No cell of the grid beats the model on {plain(entry.name)} ({how}). {plain(entry.name)} is "
            "diagnosed ok: the model already predicts it as well as a mask of its units can, so there is "
            "nothing to fix here.",
            icon=":material/check_circle:",
        )
    else:
        st.warning(f"No cell of the grid is an expert for {plain(entry.name)} ({how}).")
    with st.expander(
        "Control: features picked by how strongly they fire instead of by influence (units ranked by activation; "
        "should fail)"
    ):
        st.altair_chart(charts.sweep_heatmaps(control, control.experts(diag.settings.criterion)))


run_page(render)
