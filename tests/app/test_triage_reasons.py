"""The Triage page shows both kinds of suspect: label doubt beside reasoning, the queues, the profile reading of a
misclassified image and why an image was flagged (units drawn on it)."""

from __future__ import annotations

import numpy as np

from essence.app.components.reasons import QUEUE_CHOICE_KEY
from essence.app.state import STATE_KEY


def _start(open_app, clean):
    at = open_app("triage")
    clean(at)
    at.text_input[0].input("Dr. Reviewer")
    at.button[0].click().run()
    clean(at)
    return at


def _open_index(at) -> int:
    return int(at.subheader[0].value.rsplit("image ", 1)[1])


def test_label_doubt_and_reasoning_side_by_side_in_the_merged_queue(open_app, clean, text_of) -> None:
    at = _start(open_app, clean)
    assert at.radio(key=QUEUE_CHOICE_KEY).value == "merged"  # the default queue
    labels = [m.label for m in at.metric]
    assert any(label.startswith("Label doubt (1 − p(label))") for label in labels) and any(
        label.startswith("Reasoning") for label in labels
    )
    text = text_of(at)
    assert "Why flagged" in text
    assert len(at.image) >= 1 + 3  # the image, and each "why" unit drawn on it
    queue = at.dataframe[0].value
    assert {"confidence", "p(label)", "reasoning", "reading", "score"} <= set(queue.columns)
    assert "doubt" not in set(queue.columns)  # "doubt" names 1 − max p alone, never 1 − p(label)
    assert queue["score"].is_monotonic_decreasing
    # confidence is max p: never below the label's probability, nor below 1/K (the demo's 5 classes)
    assert np.all(queue["confidence"] >= queue["p(label)"] - 1e-12)
    assert np.all(queue["confidence"] >= 1 / 5 - 1e-12)


def test_each_queue_opens_its_own_first_image_and_a_misclassified_one_is_read_through_profiles(
    open_app, clean, text_of
) -> None:
    at = _start(open_app, clean)
    at.radio(key=QUEUE_CHOICE_KEY).set_value("reasoning").run()
    clean(at)
    assert at.session_state[STATE_KEY].triage_position == 0
    queue = at.dataframe[0].value
    reasoning = queue["reasoning"].to_numpy()
    assert np.all(
        np.diff(reasoning[np.isfinite(reasoning)]) <= 1e-12
    )  # the reasoning queue, most unusual first
    at.radio(key=QUEUE_CHOICE_KEY).set_value("self_confidence").run()
    clean(at)
    queue = at.dataframe[0].value
    assert np.all(np.diff(queue["p(label)"].to_numpy()) >= -1e-12)  # least probable label first
    first = queue.iloc[0]
    assert first["label"] != first["predicted"]  # the most doubtful image of the demo is misclassified
    assert _open_index(at) == int(first["image"])
    text = text_of(at)
    assert "Read through the profiles" in text and first["reading"] in {
        "own",
        "predicted",
        "both",
        "neither",
        "unknown",
    }
