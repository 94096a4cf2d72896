"""Compare models (recipe step 6): the retrained model next to the old one, on the same images."""

import numpy as np
import pandas as pd
import streamlit as st

from essence.app import cache, charts, services
from essence.app.components.boundary import run_page
from essence.app.components.prereq import UPLOAD_PAGE, current_inputs, missing
from essence.app.components.session import recipe
from essence.app.components.sidebar import recipe_box
from essence.app.state import DEMO_MODEL, DEMO_RETRAINED


def render() -> None:
    st.title("Compare models")
    inputs = current_inputs()
    state = recipe()
    others = [label for label in state.models if label != state.model]
    if not others:
        missing("Comparing needs a second model (the retrained one).", UPLOAD_PAGE, "Upload a model")
    default = state.compare_with if state.compare_with in others else None
    if default is None:
        default = DEMO_RETRAINED if state.model == DEMO_MODEL and DEMO_RETRAINED in others else others[0]
    chosen = st.selectbox("Compare with", others, index=others.index(default))
    state.compare_with = chosen
    model_b = cache.model_of(state.models[chosen])
    data_b = cache.data_for(state.data_choice, model_b)
    layer_b = model_b.default_layer or inputs.layer
    services.check_layer(model_b, layer_b)
    with st.spinner(f"Comparing {inputs.model.name} with {model_b.name}…"):
        cmp = services.comparison(inputs.model, model_b, inputs.data, data_b, inputs.layer, layer_b)
    a, b = st.columns(2)
    with a:
        st.subheader(f"A: {inputs.model.name}")
        st.metric("Accuracy", f"{cmp.accuracy_a:.1%}")
        recipe_box(inputs.model)
        st.altair_chart(
            charts.confusion_chart(cmp.confusion_a.numpy(), inputs.names, f"A: {inputs.model.name}")
        )
    with b:
        st.subheader(f"B: {model_b.name}")
        st.metric("Accuracy", f"{cmp.accuracy_b:.1%}", delta=f"{cmp.accuracy_b - cmp.accuracy_a:+.1%}")
        recipe_box(model_b)
        st.altair_chart(charts.confusion_chart(cmp.confusion_b.numpy(), inputs.names, f"B: {model_b.name}"))
    st.altair_chart(
        charts.compare_bars(
            inputs.names, [c.recall_a for c in cmp.classes], [c.recall_b for c in cmp.classes], "A", "B"
        ),
        width="stretch",
    )
    st.dataframe(_table(cmp), hide_index=True)
    st.caption(
        f"{len(cmp.fixed)} images fixed (wrong in A, right in B), {len(cmp.broken)} broken (right in A, wrong "
        f"in B), {len(cmp.changed)} wrong in both with another prediction. {cmp.diagnosis_note}"
    )


def _table(cmp) -> pd.DataFrame:
    def r(x: float) -> float | None:
        return round(float(x), 3) if np.isfinite(x) else None

    return pd.DataFrame(
        [
            {
                "class": c.name,
                "images": c.support,
                "recall A": r(c.recall_a),
                "recall B": r(c.recall_b),
                "precision A": r(c.precision_a),
                "precision B": r(c.precision_b),
                "predicted A": c.predicted_a,
                "predicted B": c.predicted_b,
                "diagnosis A": c.diagnosis_a or "",
                "diagnosis B": c.diagnosis_b or "",
            }
            for c in cmp.classes
        ]
    )


run_page(render)
