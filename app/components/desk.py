"""What the review desk's buttons do (Triage): a verdict, a step through the queue, an undo. Each runs in its
button's callback, before the page's next run, so that a verdict or a step is one run of the page, drawn with its
outcome (the next image, the message saying what was saved) already in place."""

import streamlit as st

from essence.app import services
from essence.app.components.boundary import guarded
from essence.app.components.text import plain
from essence.app.state import RecipeState

UNDO_KEY = "triage-undo"  # per dataset: the verdicts this tab recorded, (image, verdict id), oldest first
UNDO_SAID_KEY = "triage-undo-said"  # what the last undo did (shown once on the next run)
NOTE_WANTED_KEY = "triage-note-wanted"  # the image whose Custom verdict was pressed without a note


@guarded
def give_verdict(
    dataset_fp: str,
    index: int,
    verdict: str,
    note_key: str,
    after: int | None,
    shown: int,
    state: RecipeState,
) -> None:
    """Store a verdict on the image shown (its note as the field holds it now) and move on to the next one."""
    note = str(st.session_state.get(note_key) or "")
    if verdict == "custom" and not note.strip():
        st.session_state[NOTE_WANTED_KEY] = index
        return
    saved = services.store().record_verdict(dataset_fp, index, verdict, note=note, reviewer=state.reviewer)
    undo_stack(dataset_fp).append((index, saved.id))
    state.last_saved = f"Saved: image {index} — {plain(saved.verdict)} ({plain(saved.reviewer)})"
    state.triage_open = after
    state.triage_position = min(state.triage_position + 1, shown - 1)


def step(state: RecipeState, by: int, shown: int) -> None:
    """Previous (-1) or Next (+1) in a queue of ``shown`` images."""
    state.triage_position = min(max(state.triage_position + by, 0), shown - 1)
    state.triage_open = None


def undo_stack(dataset_fp: str) -> list[tuple[int, int]]:
    """The verdicts this tab recorded on the dataset, (image, verdict id), oldest first (what Undo takes back)."""
    return st.session_state.setdefault(f"{UNDO_KEY}-{dataset_fp}", [])


@guarded
def undo(dataset_fp: str, state: RecipeState) -> None:
    """Take back the last verdict given in this tab: the same reviewer's verdict before it on that image is
    recorded again as a new row (history is never overwritten). Without one there is nothing to restore: said."""
    stack = undo_stack(dataset_fp)
    if not stack:
        return
    index, verdict_id = stack.pop()
    store = services.store()
    history = store.verdict_history(dataset_fp, index)
    undone = next((v for v in history if v.id == verdict_id), None)
    who = (undone.reviewer if undone is not None else state.reviewer) or ""
    earlier = [v for v in history if v.id < verdict_id and (v.reviewer or "") == who]
    state.triage_open = index  # opened if the filters still show it
    if not earlier:
        st.session_state[UNDO_SAID_KEY] = (
            f"Image {index} had no verdict by {plain(who or '—')} before the one taken back, so there is none to "
            "restore (history is never erased): give it another verdict."
        )
        return
    back = earlier[-1]
    store.record_verdict(dataset_fp, index, back.verdict, note=back.note, reviewer=who)
    st.session_state[f"triage-note-{dataset_fp}-{index}"] = (
        back.note
    )  # the note field shows the restored note
    state.last_saved = (
        f"Undone: image {index} is back to {plain(back.verdict)} ({plain(who or '—')}), recorded again"
    )
