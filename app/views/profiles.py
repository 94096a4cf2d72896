"""Class profiles (recipe step 2): each class's influence at the slice, as the sorted grid of Fig. 3."""

import numpy as np
import streamlit as st

from essence.app import charts
from essence.app.components import bound, longwork
from essence.app.components.boundary import run_page
from essence.app.components.images import enlarge
from essence.app.components.prereq import TRIAGE_PAGE, current_inputs
from essence.app.components.session import recipe
from essence.app.components.text import plain
from essence.app.evaluation import evaluation

VIEW_KEY = "profiles-view"
CLASS_KEY = "profiles-class"
VIEWS = {"all": "All classes (Fig. 3)", "one": "One class, and its images"}
TOP = 5  # units listed each way


def render() -> None:
    st.title("Class profiles")
    st.caption(
        "For each class: how much each feature of the chosen layer (each unit of the slice) pushes the class's "
        "score, averaged over the class's images — its influence; together, the class's profile (the average "
        "gradient of the score with respect to the unit). Squares are sized by |influence| and coloured by sign "
        "(blue: towards the class, red: against; grey: within two standard errors of zero), laid out in the "
        "class-wide order, most positive first. Words: the glossary in the sidebar."
    )
    inputs = current_inputs()
    profiles = longwork.profiles(inputs, "logit", key="profiles")
    state = recipe()
    bound.seed(VIEW_KEY, state.profiles_view)
    view = st.radio(
        "View",
        list(VIEWS),
        key=VIEW_KEY,
        format_func=VIEWS.get,
        horizontal=True,
        on_change=bound.writer(VIEW_KEY, lambda v: setattr(state, "profiles_view", v)),
    )
    if view == "one":
        _one_class(inputs, profiles)
    else:
        _all_classes(inputs, profiles)


def _all_classes(inputs, profiles) -> None:
    counts = profiles.counts.numpy()
    st.altair_chart(charts.all_profiles_grid(profiles.mean.numpy(), profiles.stderr.numpy(), inputs.names))
    empty = [plain(inputs.names[c]) for c in range(len(inputs.names)) if counts[c] == 0]
    st.caption(
        f"{profiles.num_units} features (units) at layer `{profiles.layer}`; images per class: "
        + ", ".join(f"{plain(n)} {int(k)}" for n, k in zip(inputs.names, counts, strict=True))
        + (f". No images (profile undefined): {', '.join(empty)}." if empty else ".")
    )
    st.page_link(
        TRIAGE_PAGE, label="Next: review the images that deviate most", icon=":material/arrow_forward:"
    )


def _one_class(inputs, profiles) -> None:
    state = recipe()
    k = len(inputs.names)
    if state.cls is None or not 0 <= state.cls < k:
        ev = evaluation(inputs.model, inputs.data, k)
        state.cls = (ev.never_predicted or [0])[0]
    bound.seed(CLASS_KEY, state.cls)
    cls = st.selectbox(
        "Class",
        range(k),
        key=CLASS_KEY,
        format_func=lambda c: inputs.names[c],
        on_change=bound.writer(CLASS_KEY, lambda c: setattr(state, "cls", c)),
    )
    mean = profiles.mean[cls].numpy()
    se = profiles.stderr[cls].numpy()
    count = int(profiles.counts[cls])
    st.write(
        f"**{plain(inputs.names[cls])}**: {count} images, {profiles.num_units} features (units) at layer "
        f"`{profiles.layer}`."
    )
    if count == 0:
        st.warning(f"{plain(inputs.names[cls])} has no images here: its profile is undefined.")
        return
    st.caption(_extremes(mean, se))
    _instance(inputs, profiles, cls, mean)
    st.page_link(
        TRIAGE_PAGE,
        label=f"Next: review the {inputs.names[cls]} images that deviate most",
        icon=":material/arrow_forward:",
    )


def _extremes(mean: np.ndarray, se: np.ndarray) -> str:
    """The most positive and most negative units with their standard errors; a unit at 0 is neither."""
    v = np.nan_to_num(mean)
    order = np.argsort(-v, kind="stable")

    def listed(units) -> str:
        return ", ".join(f"{u} ({v[u]:+.3g} ± {se[u]:.2g})" for u in units)

    positive = [u for u in order[:TOP] if v[u] > 0]
    negative = [u for u in order[::-1][:TOP] if v[u] < 0]
    top = listed(positive) if positive else "none (no unit pushes towards this class)"
    bottom = listed(negative) if negative else "none (no unit pushes against this class)"
    return (
        f"Features pushing most towards the class (most positive units): {top}. Most against it (most negative): "
        f"{bottom}. (± one standard error over the class's images.)"
    )


def _instance(inputs, profiles, cls: int, mean: np.ndarray) -> None:
    inst = profiles.instances
    rows = np.nonzero(inst.instance_labels.numpy() == cls)[0]
    indices = inst.instance_indices.numpy()[rows]
    key = f"profiles-image-{cls}"  # one per class: the list of images differs
    pick = st.selectbox(
        "Place one image's own influences on the class's grid",
        range(len(rows)),
        key=key,
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
