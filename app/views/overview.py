"""Overview (recipe step 1, look): accuracy, per-class recall and precision, the confusion matrix — and, with
the data the model was trained on, every class diagnosed with it ("not learned" told from "not read out")."""

import numpy as np
import pandas as pd
import streamlit as st

from essence.app import cache, charts, services
from essence.app.components import bound, longwork
from essence.app.components.boundary import run_page, said
from essence.app.components.prereq import EXPERTS_PAGE, PROFILES_PAGE, current_inputs
from essence.app.components.session import recipe
from essence.app.components.sidebar import recipe_box
from essence.app.components.text import plain, printable
from essence.app.evaluation import evaluated, evaluation
from essence.core.analyses.diagnosis.benchmark import said as benchmark_said
from essence.core.base.errors import EssenceError

UNDEFINED = "—"  # a rate with nothing to count (a class never predicted has no precision)
NO_TRAINING = "(none)"
TRAIN_KEY = "overview-training-data"  # the selectbox
TRAIN_CHOICE = "overview-training-choice"  # the choice, kept while the page is not drawn (widget keys vanish)


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
    _training_diagnosis(inputs)
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


def _training_diagnosis(inputs) -> None:
    """The diagnosis of every class with the training data the user picks (none by default: nothing runs)."""
    st.subheader("Never learned, or never read out? The training data")
    st.caption(
        "A class the model rarely predicts may be one its last layers never read out (fix the head) or one it "
        "never saw as it is shown here — absent from the training data, rare in it, or with training images "
        "that show something else (fix the training data). The images here cannot tell these apart; the "
        "training data can. Choose the dataset the model was trained on to diagnose every class with it "
        "(the diagnosis without it is on Experts & diagnosis)."
    )
    train = _chosen_training_data(inputs)
    if train is None:
        return
    profiles = longwork.profiles(inputs, "logit", key="overview")
    digest = services.profile_key(inputs.model, inputs.data, inputs.layer, "logit").digest()
    diag = longwork.run(
        "the diagnosis with the training data",
        "overview-diagnosis",
        f"diagnosis-{digest}-{train.fingerprint}",
        lambda progress, cancel: services.diagnosis(
            inputs.model,
            inputs.data,
            inputs.layer,
            profiles,
            progress=progress,
            cancel=cancel,
            train_data=train,
        ),
        detail=f"Diagnosing every class of **{plain(inputs.model_label)}** with its training data "
        f"({len(train)} images): one pass over them, then the expert sweeps, probes and audit.",
    )
    for c in diag.classes:
        if c.diagnosis != "ok":
            right = benchmark_said(c.diagnosis, c.benchmark_precision, with_training=True)
            st.warning(
                f"{plain(c.name)}: {c.diagnosis}. What to do: {plain(c.remedy)}."
                + (f"\n\nHow far to trust it: {plain(right)}." if right else ""),
                icon=":material/flag:",
            )
    st.dataframe(_training_table(diag), hide_index=True)
    if diag.benchmark:
        grid = diag.benchmark.get("grid", {})
        st.caption(
            f"Right when given: how often each verdict was right on the held-out half of the planted-defect "
            f"benchmark ({grid.get('cases', '?')} cases, measured {diag.benchmark.get('date', '?')}, without "
            "training data; docs/analyses.md)."
        )
    st.page_link(
        EXPERTS_PAGE,
        label="The evidence of each verdict: Experts & diagnosis",
        icon=":material/troubleshoot:",
    )


def _chosen_training_data(inputs):
    """The training dataset picked (loaded with the model's recipe and checked against its classes), or ``None``."""
    state = recipe()
    labels = [NO_TRAINING] + [label for label in state.datasets if label != state.data]
    chosen = st.session_state.get(TRAIN_CHOICE, NO_TRAINING)
    bound.seed(TRAIN_KEY, chosen if chosen in labels else NO_TRAINING)
    label = st.selectbox(
        "Training data",
        labels,
        key=TRAIN_KEY,
        format_func=printable,
        on_change=bound.writer(TRAIN_KEY, _remember_choice),
        help="a registered dataset (the demo's, or one uploaded on “Your model & data”)",
    )
    if label == NO_TRAINING:
        return None
    try:
        train = cache.data_for(state.datasets[label], inputs.model)
    except EssenceError as exc:
        st.error(f"The training data {plain(label)} cannot be used: {said(exc)}", icon=":material/warning:")
        return None
    if services.class_names(inputs.model, train) != services.class_names(inputs.model, inputs.data):
        st.error(
            f"The training data {plain(label)} does not name the classes of {plain(inputs.data_label)} in the same "
            "order: choose the data the model was trained on.",
            icon=":material/warning:",
        )
        return None
    return train


def _remember_choice(label: str) -> None:
    """Keep the training data chosen under a key of its own: the widget's key vanishes on other pages."""
    st.session_state[TRAIN_CHOICE] = label


def _training_table(diag) -> pd.DataFrame:
    """Per class: the verdict, what the training data says of it, and how often such a verdict was right."""
    rows = []
    for c in diag.classes:
        t = c.training
        rows.append(
            {
                "class": c.name,
                "diagnosis": c.diagnosis,
                "training images": t.count if t else None,
                "share in training": f"{t.share:.1%}" if t else UNDEFINED,
                "share here": f"{t.evaluated_share:.1%}" if t else UNDEFINED,
                "look like the images here": _alike(t),
                "right when given (held-out benchmark)": _right(c),
            }
        )
    return pd.DataFrame(rows)


def _alike(t) -> str:
    """How many of the class's training images look like its images here, in words."""
    if t is None or t.count == 0:
        return UNDEFINED
    if t.unlike is None:
        return "not compared (too few images here)"
    return f"{t.count - t.unlike} of {t.count}"


def _right(c) -> str:
    """``3 of 12 (0.25)`` for the class's verdict, or "—" when the benchmark has no row for it."""
    row = c.benchmark_precision
    return UNDEFINED if row is None else f"{row['right']} of {row['count']} ({row['precision']:.2f})"


run_page(render)
