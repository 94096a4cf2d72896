"""Long work (class profiles, a comparison, a diagnosis, layer scores): progress at once, a cancel button.

The computation runs in a worker thread while the page's script run shows its progress (every quarter second,
so the box appears well within a second and the bar moves even for work that reports no steps; work known to
be new draws its box before the worker starts). Pressing *Cancel* asks Streamlit for a new run, which interrupts
the page at its next progress update; the page then sets the worker's cancel flag, and the worker stops at its
next batch: nothing is stored, the model's hooks come off (context managers) and its lock is released. The new
run sees the pressed button and records the cancellation, so the work does not restart by itself (a button
offers to start it again). Leaving the page mid-way cancels the work too, but does not record it: coming back
starts it again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TypeVar

import streamlit as st
from streamlit.delta_generator import DeltaGenerator
from streamlit.runtime.scriptrunner import add_script_run_ctx, get_script_run_ctx

from essence.app import services
from essence.app.components.prereq import Inputs
from essence.app.components.session import recipe
from essence.app.components.text import plain
from essence.app.evaluation import BATCH
from essence.core.analyses.profiles import ClassProfiles

T = TypeVar("T")
Work = Callable[[Callable[[int, int], None], threading.Event], T]

WHAT = {
    "logit": "class profiles",
    "prob": "per-instance influence (for triage)",
}
POLL_S = 0.25  # how often the bar is redrawn (and a Cancel press noticed)
QUICK_S = 0.2  # a result this quick (remembered, stored) is shown without a progress box


def run(
    what: str, key: str, digest: str, work: Work, *, detail: str = "", images: int = 0, new: bool = False
) -> T:
    """Run ``work(progress, cancel)`` in a worker thread with a progress box and a Cancel button.

    Args:
        what: what is computed, for people ("the comparison").
        key: a prefix for this component's widget keys (unique per page).
        digest: names this computation in the session's list of cancelled work.
        work: the computation; it calls ``progress(batches done, batches in all)`` and stops when the event is
            set (raising :class:`~essence.core.base.errors.Cancelled`).
        detail: a line (markdown, data already escaped) saying what runs on what.
        images: the dataset's size, when ``work`` reports batches of :data:`BATCH` images (0: unknown).
        new: the caller knows nothing is remembered or stored: the box is shown at once, without first waiting
            :data:`QUICK_S` for a quick result.

    Returns:
        What ``work`` returns (the page stops here if the user cancelled it).

    Raises:
        EssenceError: what ``work`` raised.
    """
    state = recipe()
    if digest in state.cancelled:
        st.info(f"Computing {what} was cancelled; nothing was stored.", icon=":material/stop_circle:")
        if st.button(f"Compute {what}", key=f"{key}-restart", type="primary"):
            state.cancelled.discard(digest)
            st.rerun()
        st.stop()
    steps = [0, 0]
    outcome: dict[str, object] = {}
    stop = threading.Event()

    def progress(done: int, total: int) -> None:
        steps[0], steps[1] = done, total

    def target() -> None:
        try:
            outcome["value"] = work(progress, stop)
        except BaseException as exc:  # handed to the page's thread, which raises it there
            outcome["error"] = exc

    worker = threading.Thread(target=target, name=f"essence-{key}", daemon=True)
    add_script_run_ctx(worker, get_script_run_ctx())  # the shared resources live in Streamlit's cache
    start = time.monotonic()
    text = detail or f"Computing {what}…"
    if new:
        # The box goes out before the work starts: a worker decoding images holds the interpreter's lock often
        # enough to hold back this thread and the server's sending by most of a second on a loaded machine.
        slot, bar = _box(stop, key, text, digest)
        worker.start()
        _watch(worker, stop, steps, slot, bar, images, start)
    else:
        worker.start()
        worker.join(QUICK_S)  # a remembered or stored result: no box at all
        if worker.is_alive():
            slot, bar = _box(stop, key, text, digest)
            _watch(worker, stop, steps, slot, bar, images, start)
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]  # type: ignore[return-value]


def _box(stop: threading.Event, key: str, detail: str, digest: str) -> tuple[DeltaGenerator, DeltaGenerator]:
    """Draw the progress box (what runs, a Cancel button, the bar); returns its slot and its bar.

    A Cancel press (seen in the run it starts) sets ``stop``, records the cancellation and reruns the page.
    """
    slot = st.empty()
    box = slot.container(border=True)
    box.write(detail)
    if box.button("Cancel", key=f"{key}-cancel", shortcut="Esc"):
        stop.set()
        recipe().cancelled.add(digest)
        st.rerun()
    return slot, box.progress(0.0, text="starting…")


def _watch(
    worker: threading.Thread,
    stop: threading.Event,
    steps: list[int],
    slot: DeltaGenerator,
    bar: DeltaGenerator,
    images: int,
    start: float,
) -> None:
    """Show the worker's progress in the box's bar until it ends (or the page is interrupted)."""
    try:
        while worker.is_alive():
            worker.join(POLL_S)
            bar.progress(*_bar(steps[0], steps[1], images, time.monotonic() - start))
    except BaseException:
        stop.set()  # Cancel pressed or the page left: the worker stops at its next batch, storing nothing
        raise
    slot.empty()


def _bar(done: int, total: int, images: int, elapsed: float) -> tuple[float, str]:
    """The bar's fill and text: images done when the steps are batches of a known dataset, else steps."""
    if total <= 0:
        return 0.0, f"working… {elapsed:.0f} s"
    fraction = min(done / total, 1.0)
    if images:
        return fraction, f"{min(done * BATCH, images)} of {images} images ({elapsed:.0f} s)"
    return fraction, f"step {done} of {total} ({elapsed:.0f} s)"


def profiles(inputs: Inputs, kind: str, key: str) -> ClassProfiles:
    """The class profiles of ``kind`` with per-instance vectors; computed here (with progress) if new.

    Args:
        inputs: the current model, data and slice.
        kind: ``"logit"`` (the recipe's class profiles) or ``"prob"`` (triage's instance vectors).
        key: a prefix for this component's widget keys (unique per page).

    Returns:
        The profiles (the page stops here if the user cancelled them).
    """
    ready = services.ready_profiles(inputs.model, inputs.data, inputs.layer, kind)
    if ready is not None:
        return ready
    digest = services.profile_key(inputs.model, inputs.data, inputs.layer, kind).digest()
    what = f"the {WHAT.get(kind, 'profiles')}"
    detail = (
        f"Computing {what} of **{plain(inputs.model_label or inputs.model.name)}** on "
        f"**{plain(inputs.data_label or inputs.data.spec)}** "
        f"({len(inputs.data)} images) at `{inputs.layer}`. They are stored when done, so this happens once."
    )

    def work(progress: Callable[[int, int], None], cancel: threading.Event) -> ClassProfiles:
        return services.compute_profiles(
            inputs.model, inputs.data, inputs.layer, kind, progress=progress, cancel=cancel
        )

    return run(what, key, digest, work, detail=detail, images=len(inputs.data), new=True)
