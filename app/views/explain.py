"""Explain an image (recipe step 7): why this class (or this class rather than another), unit by unit."""

import io

import numpy as np
import streamlit as st

from essence.app import services
from essence.app.components import bound
from essence.app.components.boundary import run_page
from essence.app.components.images import READABLE, enlarge
from essence.app.components.prereq import current_inputs
from essence.app.components.session import recipe
from essence.app.components.text import plain, printable
from essence.app.evaluation import predict
from essence.app.uploads import check_upload_size
from essence.core.base.errors import DataLoadError

TOP_UNITS = 4  # units interpreted: each gets a readable overlay, four fit a row
INDEX_KEY = "explain-index"
# An influence this small is zero: a unit that is off for the image (ReLU) has exactly 0, and float32
# sums of zeros stay far below this.
NO_INFLUENCE = 1e-12


def render() -> None:
    st.title("Explain an image")
    st.caption(
        "The features of the chosen layer (units of the slice) that push the chosen class's score most for this "
        "image (the largest influence), each shown by the input pixels it is most sensitive to (bright = "
        "sensitive); and, over the whole network, how much each pixel counts (integrated gradients; red: towards "
        "the class, blue: against). Words: the glossary in the sidebar."
    )
    inputs = current_inputs()
    image, caption, original = _pick_image(inputs)
    predicted = int(predict(inputs.model, image[None])[0].argmax())
    k = len(inputs.names)
    left, right = st.columns(2)
    # One widget per image, created on the image's prediction: two choices in a row on one image both stick.
    cls = left.selectbox(
        "Why this class",
        range(k),
        index=predicted,
        format_func=lambda c: inputs.names[c],
        key=f"explain-class-{caption}",
    )
    rivals = [None, *[c for c in range(k) if c != cls]]
    vs = right.selectbox(
        "… rather than",
        rivals,
        format_func=lambda c: "(any other: plain score)" if c is None else inputs.names[c],
        key=f"explain-vs-{caption}-{cls}",
    )
    with st.spinner("Explaining…"):
        expl = services.explanation(inputs.model, image, cls, inputs.layer, vs, inputs.names, top_k=TOP_UNITS)
    st.markdown(
        f"**{plain(caption)}** — predicted **{plain(inputs.names[expl.prediction])}** "
        f"({float(expl.probabilities[expl.prediction]):.0%}); question: {plain(expl.question)} at `{expl.layer}`"
    )
    cols = st.columns(3)
    cols[0].image(enlarge(original, READABLE), caption="the image as given")
    cols[1].image(
        enlarge(expl.image, READABLE), caption="the input as the model sees it (preprocessing applied)"
    )
    cols[2].image(
        enlarge(expl.ig_map, READABLE),
        caption=f"how much each pixel counts — integrated gradients (completeness error {expl.ig_error:.2g}: how "
        "far the pixels' shares miss the score's change)",
    )
    _units(expl)


def _units(expl) -> None:
    """The top units that push towards the answer; a unit with no influence is not evidence and is not drawn."""
    values = np.asarray(expl.unit_influence, dtype=np.float64)
    shown = [i for i in range(len(expl.unit_ids)) if values[i] > NO_INFLUENCE]
    if not shown:
        st.warning(
            f"The model has nothing at `{expl.layer}` for this question: no feature (unit) of this layer pushes "
            "towards the answer "
            f"(the largest influence is {values.max(initial=0.0):+.2g}). There is no evidence to draw; ask about "
            "another class, or another slice.",
            icon=":material/search_off:",
        )
    else:
        st.markdown("**The features that push most towards the answer** (top units, by influence)")
        cols = st.columns(len(expl.unit_ids))
        for i, col in zip(shown, cols, strict=False):
            unit, value = int(expl.unit_ids[i]), float(values[i])
            col.image(enlarge(expl.overlays[i], READABLE), caption=f"unit {unit}: influence {value:+.3g}")
            col.image(enlarge(expl.heatmaps[i], READABLE), caption=f"unit {unit}: sensitivity map")
        if len(shown) < len(values):
            st.caption(
                f"{len(values) - len(shown)} of the top {len(values)} features (units) have no influence: not drawn."
            )
    against = [
        (int(u), float(v))
        for u, v in zip(expl.negative_ids, expl.negative_influence, strict=True)
        if float(v) < -NO_INFLUENCE
    ]
    if against:
        st.caption(
            "Features pushing most against the answer (most negative units): "
            + ", ".join(f"{u} ({v:+.3g})" for u, v in against)
        )
    else:
        st.caption("No feature (unit) pushes against the answer.")


def _pick_image(inputs):
    state = recipe()
    source = st.radio("Image", ["From the dataset", "Upload one"], horizontal=True, key="explain-source")
    if source == "Upload one":
        file = st.file_uploader(
            "An image file (PNG, JPEG)",
            type=["png", "jpg", "jpeg", "bmp", "tif", "tiff"],
            key="explain-upload",
        )
        if file is None:
            st.info("Upload an image, or pick one from the dataset.")
            st.stop()
        check_upload_size(file.size, file.name)
        from essence.core.inputs.data import read_image

        with services.holding(inputs.model):
            image = read_image(
                file.getvalue(),
                inputs.model.preprocessing or inputs.data.preprocessing,
                model=inputs.model.module,
            )
        return image, f"uploaded {printable(file.name)}", _as_given(file.getvalue())
    n = len(inputs.data)
    bound.seed(INDEX_KEY, min(max(state.explain_index, 0), n - 1))
    index = int(
        st.number_input(
            "Image number in the dataset",
            0,
            n - 1,
            step=1,
            key=INDEX_KEY,
            on_change=bound.writer(INDEX_KEY, lambda v: setattr(state, "explain_index", int(v))),
        )
    )
    if not 0 <= index < n:
        raise DataLoadError(f"image {index} is not in {inputs.data.spec}: pick 0..{n - 1}")
    label = inputs.names[int(inputs.data.labels[index])]
    return (
        inputs.data.tensors(np.array([index]))[0],
        f"image {index} (label {label})",
        inputs.data.raw_image(index),
    )


def _as_given(raw: bytes) -> np.ndarray:
    """The uploaded file's pixels as uint8 RGB ``[H, W, 3]``, before any preprocessing."""
    from PIL import Image

    with Image.open(io.BytesIO(raw)) as img:
        return np.asarray(img.convert("RGB"))


run_page(render)
