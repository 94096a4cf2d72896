"""Class profiles (recipe step 2): each class's influence at the slice, as the sorted grid of Fig. 3."""

import numpy as np
import streamlit as st

from essence.app import charts
from essence.app.components import longwork
from essence.app.components.boundary import run_page
from essence.app.components.images import enlarge
from essence.app.components.prereq import TRIAGE_PAGE, current_inputs
from essence.app.components.session import recipe
from essence.app.evaluation import evaluation


def render() -> None:
    st.title("Class profiles")
    st.caption(
        "For each class: the average gradient of the class's score with respect to each unit of the slice, over "
        "the class's images. Squares are sized by |influence| and coloured by sign (blue: towards the class, red: "
        "against), laid out in the class-wide order, most positive first."
    )
    inputs = current_inputs()
    profiles = longwork.profiles(inputs, "logit", key="profiles")
    state = recipe()
    ev = evaluation(inputs.model, inputs.data, len(inputs.names))
    default = state.cls if state.cls is not None else (ev.never_predicted or [0])[0]
    cls = st.selectbox(
        "Class", range(len(inputs.names)), index=default, format_func=lambda c: inputs.names[c]
    )
    if cls != state.cls:
        state.cls = cls
    mean = profiles.mean[cls].numpy()
    count = int(profiles.counts[cls])
    st.write(f"**{inputs.names[cls]}**: {count} images, {profiles.num_units} units at `{profiles.layer}`.")
    if count == 0:
        st.warning(f"{inputs.names[cls]} has no images in {inputs.data.spec}: its profile is undefined.")
        return
    order = np.argsort(-np.nan_to_num(mean), kind="stable")
    top = ", ".join(f"{u} ({mean[u]:+.3g})" for u in order[:5])
    bottom = ", ".join(f"{u} ({mean[u]:+.3g})" for u in order[::-1][:5])
    st.caption(f"Most positive units: {top}. Most negative: {bottom}.")
    _instance(inputs, profiles, cls, mean)
    st.page_link(
        TRIAGE_PAGE,
        label=f"Next: review the {inputs.names[cls]} images that deviate most",
        icon=":material/arrow_forward:",
    )


def _instance(inputs, profiles, cls: int, mean: np.ndarray) -> None:
    inst = profiles.instances
    rows = np.nonzero(inst.instance_labels.numpy() == cls)[0]
    indices = inst.instance_indices.numpy()[rows]
    pick = st.selectbox(
        "Place one image's own influences on the class's grid",
        range(len(rows)),
        format_func=lambda r: f"image {int(indices[r])}",
    )
    row = int(rows[pick])
    vector = inst.instance_vectors[row].numpy()
    index = int(indices[pick])
    predicted = int(inst.outputs[row].argmax())
    left, right = st.columns([1, 3])
    with left:
        st.image(
            enlarge(inputs.data.raw_image(index)),
            caption=f"image {index}: {inputs.names[cls]}, predicted {inputs.names[predicted]}",
        )
    with right:
        title = f"image {index} (its own influences, in the class's order)"
        st.altair_chart(charts.class_and_instance_grids(mean, vector, inputs.names[cls], title))


run_page(render)
