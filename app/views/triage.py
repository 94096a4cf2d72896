"""Triage (recipe step 3): the instances least like their class first; a verdict on each, stored at once."""

import numpy as np
import pandas as pd
import streamlit as st

from essence.app import agreement, charts, services
from essence.app.components import bound, desk, longwork, reasons, shortcuts
from essence.app.components.boundary import run_page
from essence.app.components.images import enlarge
from essence.app.components.prereq import EXPERTS_PAGE, Inputs, current_inputs
from essence.app.components.session import recipe, remember_reviewer
from essence.app.components.text import plain
from essence.app.state import RecipeState

# Verdict buttons: (stored verdict, label, keyboard shortcut). "custom" is any other verdict, said in the note.
VERDICTS = (
    ("label error", "Label error", "1"),
    ("model error", "Model error", "2"),
    ("ambiguous", "Ambiguous", "3"),
    ("fine", "Fine", "4"),
    ("custom", "Custom", "5"),
)
QUEUE_ROWS = 50  # rows of the queue table shown at once
CLASSES_KEY = "triage-classes"
VERDICT_KEY = "triage-verdict-filter"
QUEUE_KEY = "triage-queue"
NAME_KEY = "triage-reviewer-name"
UNDO_SHORTCUT = "U"
DISAGREEMENTS_SHOWN = 20  # disagreements listed per pair of reviewers (each with a button opening it)
# The ROC of the score against reviewers' verdicts needs this many reviewed images of each kind (flagged as an
# error, and not): with fewer, one verdict moves the curve by more than the differences it would show.
ROC_MIN_EACH = 10
# What the queue is ranked by, in words (the score is named by the analysis: core.triage.SCORES).
RANKED_BY = {
    "merged": "the larger of two ranks: how unsure the model is of the given label (self-confidence) and how far "
    "the image's reasons depart from its class's",
    "reasoning": "how far the image's reasons depart from its class's",
    "self_confidence": "how unsure the model is of the given label (1 − its probability)",
    "doubt": "how unsure the model is of its own prediction (1 − its confidence)",
    "spearman": "how far the image's own influence order departs from its class's profile (rank correlation)",
    "kendall": "how far the image's own influence order departs from its class's profile (Kendall's τ)",
    "cosine": "how far the image's own influences point away from its class's profile (cosine)",
    "combined": "the mean rank of cosine deviation from the class profile and of self-confidence",
    "mass": "the share of the image's influence outside its class's top units",
    "mistakenness": "how confidently the model disagrees with the label",
}


def render() -> None:
    st.title("Triage")
    inputs = current_inputs()
    state = recipe()
    _ask_reviewer(state)
    profiles = longwork.profiles(inputs, "prob", key="triage")
    result = services.triage(inputs.model, inputs.data, inputs.layer, profiles)
    st.caption(
        f"Most suspect first, ranked by {RANKED_BY.get(result.score, result.score)} (score “{result.score}”). "
        "How much each feature of the layer pushes an image's class (its influence on each unit) is drawn "
        "against the class's average (its profile; paper Fig. 3): a correct image follows the class-wide "
        "order, a mislabelled or misread one looks random. Words: the glossary in the sidebar."
    )
    verdicts = services.store().latest_verdicts(inputs.data.fingerprint)
    queue = _filtered(result, verdicts, state, inputs)
    if len(queue):
        _place(state, result, queue)
        _review(inputs, profiles, result, queue, verdicts, state)
        _queue_table(result, queue, verdicts, inputs, state)
    else:
        st.info("No image matches these filters: widen them to see the queue.")
    shortcuts.shortcuts_panel(inputs, result)
    _agreement(inputs, result, queue, state)
    _roc(result, verdicts, inputs)
    st.download_button(
        "Export verdicts (CSV)",
        services.store().export_verdicts("csv", inputs.data.fingerprint),
        file_name="verdicts.csv",
        mime="text/csv",
        key="triage-export",
        on_click="ignore",
    )
    st.page_link(
        EXPERTS_PAGE,
        label="Next: experts & diagnosis — was the class learned at all?",
        icon=":material/arrow_forward:",
    )


def _ask_reviewer(state: RecipeState) -> None:
    if state.reviewer:
        return
    with st.form("reviewer-form"):
        st.text_input("Your name (stored with each verdict; remembered in this tab's address)", key=NAME_KEY)
        # Taken in the button's callback, before the sidebar's reviewer field is drawn on the next run.
        if st.form_submit_button("Start reviewing", type="primary", on_click=_take_name):
            st.error("Enter a name: every verdict records who made it.")
    st.stop()


def _take_name() -> None:
    name = str(st.session_state.get(NAME_KEY) or "").strip()
    if name:
        remember_reviewer(name)


def _place(state: RecipeState, result, queue: np.ndarray) -> None:
    """Put the queue at the image due next: after a verdict, the image that followed the judged one (a verdict
    can take the judged image out of a filtered queue, and the rest moves up by one), else where it was."""
    if state.triage_open is not None:
        at = np.nonzero(result.indices[queue] == state.triage_open)[0]
        if len(at):
            state.triage_position = int(at[0])
        state.triage_open = None
    state.triage_position = min(max(state.triage_position, 0), len(queue) - 1)


def _filtered(result, verdicts: dict, state: RecipeState, inputs: Inputs) -> np.ndarray:
    """Row numbers of the triage result in queue order, after the class and verdict filters."""
    k = len(inputs.names)
    if state.cls != state.triage_cls_seen:  # a class chosen on another page: followed once, and said so
        if not state.triage_classes and state.cls is not None and 0 <= state.cls < k:
            state.triage_classes, state.triage_preset, state.triage_position = [state.cls], True, 0
        state.triage_cls_seen = state.cls
    if state.triage_preset and state.triage_classes == [state.cls]:
        note, clear = st.columns([4, 1])
        note.info(
            f"Showing only {plain(inputs.names[state.cls])}: the class you chose on Class profiles (or Experts).",
            icon=":material/filter_alt:",
        )
        clear.button("Show all classes", key="triage-all-classes", on_click=_all_classes, args=(state,))
    left, right = st.columns(2)
    bound.seed(CLASSES_KEY, [c for c in state.triage_classes if c < k])
    classes = left.multiselect(
        "Classes (label)",
        range(k),
        key=CLASSES_KEY,
        format_func=lambda c: inputs.names[c],
        placeholder="all classes",
        on_change=bound.writer(CLASSES_KEY, lambda v: _set_filter(state, classes=list(v))),
    )
    options = ["all", "unreviewed", *[v for v, _, _ in VERDICTS]]
    bound.seed(VERDICT_KEY, state.triage_verdict if state.triage_verdict in options else "all")
    shown = right.selectbox(
        "Verdict",
        options,
        key=VERDICT_KEY,
        help="“custom”: any other verdict, said in its note (the Custom button)",
        on_change=bound.writer(VERDICT_KEY, lambda v: _set_filter(state, verdict=v)),
    )
    order = reasons.queue_order(result, on_change=lambda: _set_filter(state))
    if classes:
        order = order[np.isin(result.labels[order], classes)]
    if shown != "all":
        current = np.array([getattr(verdicts.get(int(result.indices[r])), "verdict", None) for r in order])
        order = order[current == (None if shown == "unreviewed" else shown)] if len(order) else order
    return order


def _set_filter(state: RecipeState, classes: list[int] | None = None, verdict: str | None = None) -> None:
    if classes is not None:
        state.triage_classes, state.triage_preset = classes, False
    if verdict is not None:
        state.triage_verdict = verdict
    state.triage_position, state.triage_open = 0, None


def _all_classes(state: RecipeState) -> None:
    _set_filter(state, classes=[])


def _review(inputs: Inputs, profiles, result, queue: np.ndarray, verdicts: dict, state: RecipeState) -> None:
    if state.last_saved:
        st.success(state.last_saved, icon=":material/save:")
        state.last_saved = ""
    if st.session_state.get(desk.UNDO_SAID_KEY):
        st.info(st.session_state.pop(desk.UNDO_SAID_KEY), icon=":material/undo:")
    pos = state.triage_position
    row = int(queue[pos])
    index = int(result.indices[row])
    label, predicted = int(result.labels[row]), int(result.predicted[row])
    st.subheader(f"{pos + 1} of {len(queue)}: image {index}")
    left, right = st.columns([1, 3])
    with left:
        st.image(enlarge(inputs.data.raw_image(index)), caption=f"image {index}")
        st.markdown(
            f"**label** {plain(inputs.names[label])}  \n**predicted** {plain(inputs.names[predicted])}  \n"
            f"**confidence** {result.confidence[row]:.2f}  \n**score** {result.deviation[row]:.3f} "
            f"({result.score})"
        )
        current = verdicts.get(index)
        if current is not None:
            st.caption(f"current verdict: **{current.verdict}** by {plain(current.reviewer or '—')}")
            if current.note:
                st.caption(f"note: {plain(current.note)}")
    with right:
        inst = profiles.instances
        at = int(np.nonzero(inst.instance_indices.numpy() == index)[0][0])
        title = f"image {index}: influence on p({inputs.names[label]}), in the class's order"
        st.altair_chart(
            charts.class_and_instance_grids(
                profiles.mean[label].numpy(),
                inst.instance_vectors[at].numpy(),
                f"{inputs.names[label]}: influence on its probability",
                title,
            )
        )
        st.caption(
            "These grids are of the class's softmax probability (what triage compares); Class profiles shows the "
            "class's logit, so the two pages' colours need not agree."
        )
        reasons.reasons_panel(inputs, result, row, profiles.granularity)
    _verdict_buttons(inputs, result, index, queue, state, current)


def _verdict_buttons(
    inputs: Inputs, result, index: int, queue: np.ndarray, state: RecipeState, current
) -> None:
    """The verdict, Previous and Next buttons. Each acts in its callback, before the page's next run: one run
    per verdict or step, drawn with the judged image's successor already in place."""
    dataset_fp = inputs.data.fingerprint
    note_key = f"triage-note-{dataset_fp}-{index}"
    if note_key not in st.session_state and current is not None:
        st.session_state[note_key] = current.note  # the saved note, to keep or change
    st.text_input("Note (optional)", key=note_key)
    pos = state.triage_position
    # The image after this one, found again on the next run: a filter the verdict no longer matches
    # (unreviewed, another verdict) takes this image out and the rest of the queue moves up.
    after = int(result.indices[queue[pos + 1]]) if pos + 1 < len(queue) else None
    cols = st.columns(len(VERDICTS) + 2)
    for col, (verdict, label, key) in zip(cols, VERDICTS, strict=False):
        col.button(
            f"{label} ({key})",
            key=f"triage-verdict-{verdict}",
            shortcut=key,
            width="stretch",
            help="another verdict: say what it is in the note" if verdict == "custom" else None,
            on_click=desk.give_verdict,
            args=(dataset_fp, index, verdict, note_key, after, len(queue), state),
        )
    if st.session_state.pop(desk.NOTE_WANTED_KEY, None) == index:
        st.error(
            "A custom verdict needs a note saying what it is: write it in the note, then press Custom again."
        )
    steps = (("Previous", "K", -1, "triage-prev"), ("Next", "J", 1, "triage-next"))
    for col, (label, key, by, widget) in zip(cols[-2:], steps, strict=True):
        col.button(
            f"{label} ({key})",
            key=widget,
            shortcut=key,
            width="stretch",
            on_click=desk.step,
            args=(state, by, len(queue)),
        )
    undoable = desk.undo_stack(inputs.data.fingerprint)
    st.button(
        f"Undo last verdict ({UNDO_SHORTCUT})",
        key="triage-undo",
        shortcut=UNDO_SHORTCUT,
        disabled=not undoable,
        icon=":material/undo:",
        help="Records your verdict before the last one you gave in this tab again, as a new verdict (the "
        "history keeps both), and opens its image" + (f" (image {undoable[-1][0]})" if undoable else ""),
        on_click=desk.undo,
        args=(inputs.data.fingerprint, state),
    )
    history = services.store().verdict_history(inputs.data.fingerprint, index)
    if history:
        with st.expander(f"History of image {index} ({len(history)} verdicts)"):
            st.dataframe(
                pd.DataFrame(
                    [
                        {"when": v.created_at, "verdict": v.verdict, "note": v.note, "reviewer": v.reviewer}
                        for v in history
                    ]
                ),
                hide_index=True,
            )


def _agreement(inputs: Inputs, result, queue: np.ndarray, state: RecipeState) -> None:
    """Where two or more reviewers judged the same images: Cohen's κ of each pair, and their disagreements."""
    pairs = agreement.agreements(services.store().reviewers_latest(inputs.data.fingerprint))
    if not pairs:
        return
    st.subheader("Agreement between reviewers")
    shown = {int(i) for i in result.indices[queue]} if len(queue) else set()
    for p, pair in enumerate(pairs):
        a, b = plain(pair.first or "—"), plain(pair.second or "—")
        kappa = (
            "undefined (both gave one and the same verdict to every image: chance alone would agree as often)"
            if pair.kappa is None
            else f"**{pair.kappa:.2f}**"
        )
        st.markdown(
            f"**{a}** and **{b}** — {agreement.MEANING}: Cohen's κ = {kappa} on n = {pair.n} images both judged "
            f"(1: always agree; 0: no more than chance would; below 0: less). Same verdict on {pair.agreed} of "
            f"{pair.n}; they disagree on {len(pair.disagreements)}."
        )
        if not pair.disagreements:
            continue
        listed = pair.disagreements[:DISAGREEMENTS_SHOWN]
        with st.expander(
            f"Images {a} and {b} disagree on ({len(pair.disagreements)})", expanded=len(pairs) == 1
        ):
            if len(pair.disagreements) > len(listed):
                st.caption(f"The first {len(listed)} of {len(pair.disagreements)}, in dataset order.")
            for d in listed:
                button, said = st.columns([1, 4])
                button.button(
                    f"Open image {d.instance_id}",
                    key=f"triage-disagreement-{p}-{d.instance_id}",
                    on_click=_open_image,
                    args=(state, d.instance_id, d.instance_id in shown),
                )
                notes = "".join(
                    f" ({who}'s note: {plain(n)})" for who, n in ((a, d.first_note), (b, d.second_note)) if n
                )
                said.markdown(
                    f"image {d.instance_id}: {a} — **{plain(d.first)}**, {b} — **{plain(d.second)}**{notes}"
                )


def _open_image(state: RecipeState, index: int, in_queue: bool) -> None:
    """Open an image on the next run; the class and verdict filters are cleared first if they hide it."""
    if not in_queue:
        _set_filter(state, classes=[], verdict="all")
    state.triage_open = index


def _queue_table(result, queue: np.ndarray, verdicts: dict, inputs: Inputs, state: RecipeState) -> None:
    start = (state.triage_position // QUEUE_ROWS) * QUEUE_ROWS
    rows = queue[start : start + QUEUE_ROWS]
    table = pd.DataFrame(
        {
            "#": np.arange(start + 1, start + 1 + len(rows)),
            "image": result.indices[rows],
            "label": [inputs.names[int(c)] for c in result.labels[rows]],
            "predicted": [inputs.names[int(c)] for c in result.predicted[rows]],
            "confidence": result.confidence[rows],
            "p(label)": result.label_probability[rows],
            "reasoning": result.scores["reasoning"][rows],
            "reading": [result.reasoning.reading[r] or "" for r in rows],
            "score": result.deviation[rows],
            "verdict": [getattr(verdicts.get(int(result.indices[r])), "verdict", "") for r in rows],
        }
    )
    st.markdown(
        f"**The queue** (rows {start + 1}–{start + len(rows)} of {len(queue)}; click a row to open it)"
    )
    # A fresh key after each opened row: a selection is only ever the click just made, never a stale one
    # re-sent by the browser after J/K or a verdict moved on.
    generation = st.session_state.setdefault(f"{QUEUE_KEY}-generation", 0)
    # A click on any cell opens its row, as does its row marker: the grid reports a cell click as a cell
    # selection, which "single-row" alone would ignore.
    event = st.dataframe(
        table,
        hide_index=True,
        key=f"{QUEUE_KEY}-{generation}",
        on_select="rerun",
        selection_mode=["single-row", "single-cell"],
        column_config={
            "confidence": st.column_config.NumberColumn(
                format="%.2f", help="max p: the probability of the predicted class"
            ),
            "p(label)": st.column_config.NumberColumn(
                format="%.2f", help="the probability of the given label (1 − it: the label doubt)"
            ),
            "reasoning": st.column_config.NumberColumn(format="%.1f", help="× the class's typical departure"),
            "score": st.column_config.NumberColumn(format="%.3f"),
        },
    )
    selection = event.selection if event is not None else None
    picked = [*selection.rows, *(int(row) for row, _ in selection.cells)] if selection is not None else []
    if picked:
        state.triage_position, state.triage_open = start + int(picked[0]), None
        st.session_state[f"{QUEUE_KEY}-generation"] = generation + 1
        st.rerun()


def _roc(result, verdicts: dict, inputs: Inputs) -> None:
    """ROC of the score: at finding the images reviewers flagged (once both kinds exist), else the misclassified."""
    flagged = {
        i: v.verdict in ("label error", "model error") for i, v in verdicts.items() if v.verdict != "custom"
    }
    errors = sum(flagged.values())
    if min(errors, len(flagged) - errors) >= ROC_MIN_EACH:
        rows = np.array([r for r in range(len(result)) if int(result.indices[r]) in flagged])
        positive = np.array([flagged[int(result.indices[r])] for r in rows])
        what = f"images reviewers flagged ({len(rows)} reviewed)"
        note = ""
    else:
        rows = np.arange(len(result))
        positive = result.predicted != result.labels
        what = "misclassified images"
        note = (
            f"Against the reviewers' verdicts once at least {ROC_MIN_EACH} images are flagged as errors and "
            f"{ROC_MIN_EACH} are not ({errors} and {len(flagged) - errors} so far); until then, against the images "
            "the model gets wrong."
        )
    if positive.all() or not positive.any():
        return
    with st.expander("How well does the score find problems? (ROC)"):
        st.altair_chart(charts.roc_chart(result.deviation[rows], positive, what))
        if note:
            st.caption(note)


run_page(render)
