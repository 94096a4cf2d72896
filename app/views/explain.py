"""Explain an image (recipe step 7): why this class (or this class rather than another), unit by unit."""

import numpy as np
import streamlit as st

from essence.app import services
from essence.app.components.boundary import run_page
from essence.app.components.images import READABLE, enlarge
from essence.app.components.prereq import current_inputs
from essence.app.components.session import recipe
from essence.app.evaluation import predict
from essence.app.uploads import check_upload_size
from essence.core.errors import DataLoadError

TOP_UNITS = 4  # units interpreted: each gets a readable overlay, four fit a row


def render() -> None:
    st.title("Explain an image")
    st.caption(
        "The units of the slice with the largest influence on the chosen class's score for this image, each "
        "interpreted by the input pixels it is most sensitive to (bright = sensitive), and integrated gradients "
        "over the whole network as the input-level baseline (red: towards the class, blue: against)."
    )
    inputs = current_inputs()
    image, caption = _pick_image(inputs)
    predicted = int(predict(inputs.model, image[None])[0].argmax())
    k = len(inputs.names)
    left, right = st.columns(2)
    cls = left.selectbox(
        "Why this class",
        range(k),
        index=predicted,
        format_func=lambda c: inputs.names[c],
        key="explain-class",
    )
    rivals = [None, *[c for c in range(k) if c != cls]]
    vs = right.selectbox(
        "… rather than",
        rivals,
        format_func=lambda c: "(any other: plain score)" if c is None else inputs.names[c],
        key="explain-vs",
    )
    with st.spinner("Explaining…"):
        expl = services.explanation(inputs.model, image, cls, inputs.layer, vs, inputs.names, top_k=TOP_UNITS)
    st.markdown(
        f"**{caption}** — predicted **{inputs.names[expl.prediction]}** "
        f"({float(expl.probabilities[expl.prediction]):.0%}); question: {expl.question} at `{expl.layer}`"
    )
    cols = st.columns(2)
    cols[0].image(
        enlarge(expl.image, READABLE), caption="the input as the model sees it (preprocessing applied)"
    )
    cols[1].image(
        enlarge(expl.ig_map, READABLE),
        caption=f"integrated gradients (completeness error {expl.ig_error:.2g})",
    )
    st.markdown("**Top units** (most influential towards the question's answer)")
    cols = st.columns(len(expl.unit_ids))
    for i, col in enumerate(cols):
        unit, value = int(expl.unit_ids[i]), float(expl.unit_influence[i])
        col.image(enlarge(expl.overlays[i], READABLE), caption=f"unit {unit}: influence {value:+.3g}")
        col.image(enlarge(expl.heatmaps[i], READABLE), caption=f"unit {unit}: sensitivity map")
    neg = ", ".join(
        f"{int(u)} ({float(v):+.3g})" for u, v in zip(expl.negative_ids, expl.negative_influence, strict=True)
    )
    st.caption(f"Most negative units (against): {neg}")


def _pick_image(inputs):
    state = recipe()
    source = st.radio("Image", ["From the dataset", "Upload one"], horizontal=True, key="explain-source")
    if source == "Upload one":
        file = st.file_uploader(
            "An image file (PNG, JPEG)", type=["png", "jpg", "jpeg", "bmp", "tif", "tiff"]
        )
        if file is None:
            st.info("Upload an image, or pick one from the dataset.")
            st.stop()
        check_upload_size(file.size, file.name)
        from essence.core.data import read_image

        with services.holding(inputs.model):
            image = read_image(
                file.getvalue(),
                inputs.model.preprocessing or inputs.data.preprocessing,
                model=inputs.model.module,
            )
        return image, f"uploaded {file.name}"
    n = len(inputs.data)
    index = int(
        st.number_input(
            "Image number in the dataset", 0, n - 1, value=min(state.explain_index, n - 1), step=1
        )
    )
    state.explain_index = index
    if not 0 <= index < n:
        raise DataLoadError(f"image {index} is not in {inputs.data.spec}: pick 0..{n - 1}")
    label = inputs.names[int(inputs.data.labels[index])]
    return inputs.data.tensors(np.array([index]))[0], f"image {index} (label {label})"


run_page(render)
