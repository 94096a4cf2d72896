"""Compare models (recipe step 6): the retrained model next to the old one, on the same images."""

import numpy as np
import pandas as pd
import streamlit as st

from essence.app import cache, charts, loading, services
from essence.app.components import bound, longwork
from essence.app.components.boundary import run_page, said
from essence.app.components.images import enlarge
from essence.app.components.prereq import UPLOAD_PAGE, Inputs, current_inputs, missing
from essence.app.components.session import recipe
from essence.app.components.sidebar import recipe_box
from essence.app.components.text import plain, printable
from essence.app.state import DEMO_MODEL, DEMO_RETRAINED, RecipeState
from essence.core.base.errors import EssenceError

OTHER_KEY = "compare-with"
# A class regressed when B loses this much recall on it: about two images in a class of 25 (the demo's
# smallest), more than the noise of one retraining yet far below a lost class.
REGRESSION = 0.05
IMAGES_SHOWN = 8  # fixed and broken images shown each (a row of thumbnails); the rest are counted


def render() -> None:
    st.title("Compare models")
    # Shown at once (a cache's own spinner waits half a second): on a cold store, finding the models that fit the
    # data and loading the chosen one take a moment before the comparison's own progress box.
    opening = st.progress(0.0, text="Loading the models to compare…")
    try:
        inputs = current_inputs()
        state = recipe()
        others, left_out = _fitting(inputs, state)
        if left_out:
            st.caption(
                f"Not offered, as their classes are not the {len(inputs.names)} of {plain(inputs.data_label)} "
                f"({plain(', '.join(inputs.names))}): " + "; ".join(left_out) + "."
            )
        if not others:
            missing(
                f"Comparing needs a second model with the classes of {plain(inputs.data_label)}, in the same order: "
                f"{plain(', '.join(inputs.names))}. Upload the retrained model.",
                UPLOAD_PAGE,
                "Upload a model",
            )
        if state.compare_with not in others:
            state.compare_with = (
                DEMO_RETRAINED if state.model == DEMO_MODEL and DEMO_RETRAINED in others else others[0]
            )
        bound.seed(OTHER_KEY, state.compare_with)
        chosen = st.selectbox(
            "Compare with",
            others,
            key=OTHER_KEY,
            format_func=printable,
            on_change=bound.writer(OTHER_KEY, lambda v: setattr(state, "compare_with", v)),
        )
        model_b = cache.model_of(state.models[chosen])
        data_b = cache.data_for(state.data_choice, model_b)
    finally:
        opening.empty()
    layer_b = model_b.default_layer or inputs.layer
    loading.check_layer(model_b, layer_b)
    digest = f"compare-{inputs.model.fingerprint}-{model_b.fingerprint}-{inputs.data.fingerprint}"
    cmp = longwork.run(
        "the comparison",
        "compare",
        digest,
        lambda progress, cancel: services.comparison(
            inputs.model, model_b, inputs.data, data_b, inputs.layer, layer_b, cancel=cancel
        ),
        detail=f"Comparing **{plain(inputs.model_label)}** with **{plain(chosen)}** on the "
        f"{len(inputs.data)} images of **{plain(inputs.data_label)}**: both models' predictions, class profiles "
        "and diagnoses, and the matching of their units.",
        new=not services.known(
            services.comparison_key(inputs.model, model_b, inputs.data, inputs.layer, layer_b)
        ),
    )
    _regressions(cmp)
    a, b = st.columns(2)
    with a:
        st.subheader(f"A: {plain(inputs.model_label)}")
        st.metric("Accuracy", f"{cmp.accuracy_a:.1%}")
        recipe_box(inputs.model)
        st.altair_chart(charts.confusion_chart(cmp.confusion_a.numpy(), inputs.names, "A"))
    with b:
        st.subheader(f"B: {plain(chosen)}")
        st.metric("Accuracy", f"{cmp.accuracy_b:.1%}", delta=f"{cmp.accuracy_b - cmp.accuracy_a:+.1%}")
        recipe_box(model_b)
        st.altair_chart(charts.confusion_chart(cmp.confusion_b.numpy(), inputs.names, "B"))
    st.altair_chart(
        charts.compare_bars(
            inputs.names, [c.recall_a for c in cmp.classes], [c.recall_b for c in cmp.classes], "A", "B"
        ),
        width="stretch",
    )
    st.dataframe(_table(cmp), hide_index=True)
    if cmp.diagnosis_note:
        st.caption(plain(cmp.diagnosis_note))
    _changed_images(inputs, cmp)
    _matching(cmp)


def _fitting(inputs: Inputs, state: RecipeState) -> tuple[list[str], list[str]]:
    """The models B can be (their outputs are the current data's classes: as many, and named alike where both
    name them), and why each other one is not offered (in words, never a path on the server)."""
    offered, left_out = [], []
    for label, choice in state.models.items():
        if label == state.model:
            continue
        model_b = None
        try:
            model_b = cache.model_of(choice)
            # Its outputs as many as the data's classes, and the data's labels matched to its class names:
            cache.data_for(state.data_choice, model_b)
            named = [printable(n) for n in model_b.class_names or []]
            if named and named != inputs.names:
                raise EssenceError(f"its classes are {', '.join(named)}")
            offered.append(label)
        except EssenceError as exc:
            names = list(model_b.class_names or []) if model_b is not None else []
            why = f"{len(names)} outputs: {', '.join(names)}" if names else said(exc)
            left_out.append(f"{plain(label)} ({plain(why) if names else why})")
    return offered, left_out


def _regressions(cmp) -> None:
    """Call out every class B is worse at (recall down by :data:`REGRESSION` or more), however good overall."""
    for c in cmp.classes:
        if np.isfinite(c.recall_a) and np.isfinite(c.recall_b) and c.recall_a - c.recall_b >= REGRESSION:
            st.warning(
                f"Regression on {plain(c.name)}: recall {c.recall_a:.2f} → {c.recall_b:.2f} "
                f"({c.support} images). Look at the broken images below before adopting B.",
                icon=":material/trending_down:",
            )


def _changed_images(inputs, cmp) -> None:
    st.subheader("Images that changed")
    st.caption(
        f"{len(cmp.fixed)} fixed (wrong in A, right in B), {len(cmp.broken)} broken (right in A, wrong in B), "
        f"{len(cmp.changed)} wrong in both with another prediction."
    )
    pred_a, pred_b = cmp.predictions_a.numpy(), cmp.predictions_b.numpy()
    for title, indices in (("Fixed", cmp.fixed), ("Broken", cmp.broken)):
        indices = np.asarray(indices)
        if not len(indices):
            continue
        st.markdown(f"**{title}** ({len(indices)}; the first {min(len(indices), IMAGES_SHOWN)})")
        cols = st.columns(IMAGES_SHOWN)
        for col, index in zip(cols, indices[:IMAGES_SHOWN], strict=False):
            i = int(index)
            label = inputs.names[int(inputs.data.labels[i])]
            col.image(
                enlarge(inputs.data.raw_image(i), 128),
                caption=f"{i}: {label}; A {inputs.names[int(pred_a[i])]}, B {inputs.names[int(pred_b[i])]}",
            )


def _matching(cmp) -> None:
    m = cmp.matching
    with st.expander("Matched features (units) and how each class's profile drifted"):
        if m is None:
            st.info("The units of A and B were not matched.")
            return
        st.caption(
            f"A's {m.units_a} features (units) at layer `{cmp.layer_a}` matched one to one with B's {m.units_b} at "
            f"`{cmp.layer_b}` by the correlation of their activations over the images: mean correlation {m.mean_corr:.2f}, "
            f"{m.share_above:.0%} of pairs at {m.threshold:g} or more. Drift compares each class's profile over "
            "these pairs (cosine 1: the class rests on the same units; top overlap: share of A's top units whose "
            "partner is among B's)."
        )
        st.dataframe(
            pd.DataFrame(
                [
                    {
                        "class": c.name,
                        "cosine A↔B": _r(c.drift.cosine),
                        "rank correlation": _r(c.drift.spearman),
                        "top-unit overlap": _r(c.drift.top_overlap),
                        "distance": _r(c.drift.l2),
                    }
                    for c in cmp.classes
                ]
            ),
            hide_index=True,
        )
        pairs = pd.DataFrame(
            {"unit of A": m.pairs_a.numpy(), "unit of B": m.pairs_b.numpy(), "correlation": m.corr.numpy()}
        ).sort_values("correlation", ascending=False)
        st.dataframe(pairs, hide_index=True, height=240)


def _r(x: float) -> float | None:
    return round(float(x), 3) if np.isfinite(x) else None


def _table(cmp) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "class": c.name,
                "images": c.support,
                "recall A": _r(c.recall_a),
                "recall B": _r(c.recall_b),
                "change": _r(c.recall_b - c.recall_a),
                "regression": bool(c.recall_a - c.recall_b >= REGRESSION),
                "precision A": _r(c.precision_a),
                "precision B": _r(c.precision_b),
                "predicted A": c.predicted_a,
                "predicted B": c.predicted_b,
                "diagnosis A": c.diagnosis_a or "",
                "diagnosis B": c.diagnosis_b or "",
            }
            for c in cmp.classes
        ]
    )


run_page(render)
