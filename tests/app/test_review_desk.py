"""The review desk as a reviewer uses it: the Triage queue under its filters, the queue's rows, Compare on one's own
model and data, the report's history, honest tables and messages, and the words the pages use.

Each test here is a defect a reviewer met; the real-browser halves (a click on a cell, the Back button) are in
``test_review_desk_browser.py``.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from essence.app.state import STATE_KEY

pytestmark = pytest.mark.slow

GLOSSARY_TERMS = (
    "slice",
    "unit",
    "influence",
    "profile",
    "deviation",
    "reasoning score",
    "expert",
    "α",
    "β",
    "probe AUC",
    "drowning experts",
    "not learned",
    "not read out",
    "completeness error",
    "confidence",
    "doubt",
)


# ------------------------------------------------------------------------------------------------ helpers


def _start_reviewing(at, name: str = "Dr. Desk") -> None:
    next(t for t in at.text_input if t.label.startswith("Your name")).input(name)
    next(b for b in at.button if b.label == "Start reviewing").click().run()


def _heading_index(at) -> tuple[int, int]:
    """Triage's "P of N: image I" heading as (P, I)."""
    text = next(str(s.value) for s in at.subheader if " of " in str(s.value) and "image" in str(s.value))
    return int(text.split(" of ", 1)[0]), int(text.rsplit("image ", 1)[1])


def _queue(at):
    """The queue table (the dataframe with a "#" column), as a pandas frame."""
    return next(d.value for d in at.dataframe if "#" in d.value.columns)


def _note_key(at) -> str:
    return next(t.key for t in at.text_input if t.key and t.key.startswith("triage-note"))


def _zip(folders: dict[str, int], size: int = 32) -> bytes:
    """An ImageFolder zip: ``{class folder: images}`` of small PNGs."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, n in folders.items():
            for i in range(n):
                png = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(png, format="PNG")
                z.writestr(f"data/{name}/{i}.png", png.getvalue())
    return buf.getvalue()


def _tiny_model(tmp_path: Path, seed: int, classes: int) -> bytes:
    """The weights of timm's smallest ResNet with ``classes`` outputs, as safetensors."""
    timm = pytest.importorskip("timm", reason="the timm extra is part of dev")
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=classes)
    path = tmp_path / f"net{seed}.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path.read_bytes()


def _own_model_and_data(tmp_path: Path, models: int) -> tuple[list[str], str]:
    """``models`` uploaded 3-class models and a 3-class dataset, registered as uploads (labels returned)."""
    from essence.app import registry, uploads

    recipe = uploads.recipe_of(32, 0.0, "none")
    labels = []
    for seed in range(models):
        choice = uploads.model_from_upload(
            _tiny_model(tmp_path, seed, 3),
            f"mine{seed}.safetensors",
            "timm:test_resnet",
            recipe,
            class_names=["a", "b", "c"],
            layer="layer2",
        )
        registry.register_model(choice)
        labels.append(choice.label)
    data = uploads.dataset_from_zip(_zip({"a": 3, "b": 3, "c": 3}), "mine.zip")
    registry.register_dataset(data)
    return labels, data.label


# ------------------------------------------------------------------------------------------------ Triage


def test_unreviewed_filter_opens_the_next_image_after_each_verdict(open_app, clean) -> None:
    at = open_app("triage")
    _start_reviewing(at)
    at.selectbox(key="triage-verdict-filter").set_value("unreviewed").run()
    clean(at)
    expected = [int(i) for i in _queue(at)["image"][:11]]
    for step in range(10):
        position, index = _heading_index(at)
        assert (position, index) == (1, expected[step]), f"verdict {step}: skipped to {index}"
        at.button(key="triage-verdict-fine").click().run()
        clean(at)
    assert _heading_index(at) == (1, expected[10])


def test_a_click_on_a_queue_row_opens_it(open_app, clean) -> None:
    at = open_app("triage")
    _start_reviewing(at)
    queue = _queue(at)
    # A click on a cell of the third row (not on its row marker): the grid reports it as a cell selection.
    at.session_state["triage-queue-0"] = {"selection": {"rows": [], "columns": [], "cells": [[2, "label"]]}}
    at.run()
    clean(at)
    assert _heading_index(at) == (3, int(queue["image"].iloc[2]))
    assert "click a row" in "\n".join(str(m.value) for m in at.markdown)


def test_the_other_verdict_is_recorded_with_its_note_and_found_by_its_filter(open_app, clean) -> None:
    at = open_app("triage")
    _start_reviewing(at)
    _, index = _heading_index(at)
    at.button(key="triage-verdict-custom").click().run()  # without a note: says what is missing
    clean(at)
    assert any("note" in str(e.value) for e in at.error), [e.value for e in at.error]
    at.text_input(key=_note_key(at)).input("image cropped too tightly")
    at.button(key="triage-verdict-custom").click().run()
    clean(at)
    at.selectbox(key="triage-verdict-filter").set_value("custom").run()
    clean(at)
    assert _heading_index(at)[1] == index
    assert any("image cropped too tightly" in str(c.value) for c in at.caption)


def test_a_class_filter_set_on_class_profiles_is_said_and_can_be_cleared(open_app, clean, pages) -> None:
    at = open_app("profiles")
    at.radio(key="profiles-view").set_value("one").run()
    at.selectbox(key="profiles-class").set_value(2).run()
    at.switch_page(pages["triage"]).run()
    _start_reviewing(at)
    clean(at)
    assert at.multiselect(key="triage-classes").value == [2]
    said = [str(i.value) for i in at.info]
    assert any("Class profiles" in s for s in said), said
    at.button(key="triage-all-classes").click().run()
    clean(at)
    assert at.multiselect(key="triage-classes").value == []
    assert not any("Class profiles" in str(i.value) for i in at.info)
    at.switch_page(pages["overview"]).run()
    at.switch_page(pages["triage"]).run()
    assert at.multiselect(key="triage-classes").value == []  # cleared stays cleared


def _verdicts_in_a_row(at, clean, verdicts: list[str]) -> list[int]:
    """Give ``verdicts`` to the images in queue order, from where the queue is; the images judged."""
    judged = []
    for verdict in verdicts:
        judged.append(_heading_index(at)[1])
        at.button(key=f"triage-verdict-{verdict}").click().run()
        clean(at)
    return judged


def test_two_reviewers_see_their_kappa_and_can_open_each_disagreement(open_app, clean, essence_home) -> None:
    from sklearn.metrics import cohen_kappa_score

    from essence.app.agreement import MEANING

    at = open_app("triage")
    _start_reviewing(at, "Dr. A")
    first = ["fine", "fine", "label error", "ambiguous"]
    second = ["fine", "label error", "label error", "ambiguous"]
    images = _verdicts_in_a_row(at, clean, first)
    assert not any("Agreement between reviewers" in str(s.value) for s in at.subheader)  # one reviewer: no κ
    at.sidebar.text_input(key="reviewer").input("Dr. B").run()
    for _ in images:
        at.button(key="triage-prev").click().run()
    assert _heading_index(at)[1] == images[0]
    assert _verdicts_in_a_row(at, clean, second) == images
    assert any("Agreement between reviewers" in str(s.value) for s in at.subheader)
    said = "\n".join(str(m.value) for m in at.markdown)
    kappa = cohen_kappa_score(first, second)
    assert MEANING in said and f"κ = **{kappa:.2f}**" in said and "n = 4 images both judged" in said, said
    assert said.index(MEANING) < said.index("κ = ")  # the plain words first
    listed = [b.key for b in at.button if b.key and b.key.startswith("triage-disagreement-")]
    assert listed == [f"triage-disagreement-0-{images[1]}"]
    assert f"image {images[1]}: Dr. A — **fine**, Dr. B — **label error**" in said
    at.button(key=listed[0]).click().run()
    clean(at)
    assert _heading_index(at)[1] == images[1]


def test_verdict_keys_and_undo_restores_the_previous_verdict(open_app, clean, essence_home) -> None:
    from essence.storage import Store

    at = open_app("triage")
    _start_reviewing(at, "Dr. U")
    keys = {b.key: b.proto.shortcut.upper() for b in at.button if b.key}  # kept in lower case
    assert [
        keys[f"triage-verdict-{v}"] for v in ("label error", "model error", "ambiguous", "fine", "custom")
    ] == [
        "1",
        "2",
        "3",
        "4",
        "5",
    ]
    assert (keys["triage-prev"], keys["triage-next"], keys["triage-undo"]) == ("K", "J", "U")
    assert at.button(key="triage-undo").disabled  # nothing given yet
    (index,) = _verdicts_in_a_row(at, clean, ["fine"])
    at.button(key="triage-prev").click().run()
    _verdicts_in_a_row(at, clean, ["label error"])
    assert _heading_index(at)[1] != index
    at.button(key="triage-undo").click().run()
    clean(at)
    assert _heading_index(at)[1] == index  # undo opens the image it restored
    assert any("back to fine" in str(s.value) for s in at.success), [s.value for s in at.success]
    with Store.open(essence_home / "essence.sqlite") as store:
        history = [v for v in store.all_verdicts() if v.instance_id == index]  # the only dataset reviewed
    assert [(v.verdict, v.reviewer) for v in history] == [
        ("fine", "Dr. U"),
        ("label error", "Dr. U"),
        ("fine", "Dr. U"),  # recorded again: history is never overwritten
    ]
    at.button(key="triage-undo").click().run()  # the first verdict: nothing before it to restore
    clean(at)
    assert any("none to restore" in str(i.value) for i in at.info), [i.value for i in at.info]
    assert at.button(key="triage-undo").disabled


# ------------------------------------------------------------------------------------------------ Compare


def test_compare_on_own_data_offers_no_model_of_other_classes_and_no_server_path(
    open_app, clean, essence_home, tmp_path, pages, text_of
) -> None:
    (model,), data = _own_model_and_data(tmp_path, models=1)
    at = open_app("upload")
    at.session_state[STATE_KEY].model = model
    at.session_state[STATE_KEY].data = data
    at.switch_page(pages["compare"]).run()
    clean(at)
    text = text_of(at)
    assert str(essence_home) not in text and "/uploads/" not in text, text
    assert not [s for s in at.selectbox if s.label == "Compare with"]  # nothing to offer on these classes
    said = "\n".join(str(w.value) for w in at.warning)
    assert "a, b, c" in said, said  # says which classes a second model needs
    assert "demo:blurred" in text and "5 outputs" in text  # and why the demo models are not offered


def test_compare_offers_only_models_with_the_data_s_classes(
    open_app, clean, essence_home, tmp_path, pages, text_of
) -> None:
    (first, second), data = _own_model_and_data(tmp_path, models=2)
    at = open_app("upload")
    at.session_state[STATE_KEY].model = first
    at.session_state[STATE_KEY].data = data
    at.switch_page(pages["compare"]).run()
    clean(at)
    offered = next(s for s in at.selectbox if s.label == "Compare with")
    assert offered.options == [second]
    assert str(essence_home) not in text_of(at)


# ------------------------------------------------------------------------------------------------ messages


def test_an_upload_error_suggests_nothing_only_the_command_line_has(open_app, clean, tmp_path) -> None:
    import torch

    buf = io.BytesIO()
    torch.save({"fc.weight": torch.zeros(2, 2)}, buf)
    at = open_app("upload")
    at.file_uploader(key="upload-model-file").set_value(
        ("weights.pt", buf.getvalue(), "application/octet-stream")
    )
    at.button[0].click().run()  # the first architecture: an exported program, which this file is not
    clean(at)
    said = "\n".join(str(e.value) for e in at.error)
    assert "weights.pt" in said, said
    assert "package.module" not in said and "--" not in said, said


def test_overview_shows_a_dash_for_the_precision_of_a_class_never_predicted(open_app, clean) -> None:
    from essence.sample_data import CLASS_NAMES

    at = open_app()
    clean(at)
    table = next(d.value for d in at.dataframe if "precision" in d.value.columns)
    row = table[table["class"] == CLASS_NAMES[1]].iloc[0]
    assert row["precision"] == "—", row["precision"]
    assert all(str(p) not in ("None", "nan") for p in table["precision"])
    assert any("—" in str(c.value) and "never predicts" in str(c.value) for c in at.caption)


def test_the_report_keeps_the_notes_of_earlier_verdicts(essence_home) -> None:
    from essence.app.report import _cases_section
    from essence.core import load_dataset, load_model
    from essence.storage import Store

    model = load_model("demo:blurred")
    data = load_dataset("demo:test", model.preprocessing)
    with Store.open(essence_home / "r.sqlite") as store:
        store.record_verdict(
            data.fingerprint, 3, "model error", note="first look: a haemorrhage", reviewer="A"
        )
        store.record_verdict(data.fingerprint, 3, "label error", note="<b>regraded</b>", reviewer="B")
        store.record_verdict(
            data.fingerprint, 3, "ambiguous", reviewer="A"
        )  # A's first verdict is now earlier
        html = _cases_section(data, store, list(model.class_names), None)
    assert "first look: a haemorrhage" in html
    assert "model error by A" in html
    # each reviewer's latest verdict has a row of its own: B's is kept beside A's newer one
    assert "<td>B</td><td><b>label error</b>" in html and "<td>A</td><td><b>ambiguous</b>" in html
    assert "&lt;b&gt;regraded&lt;/b&gt;" in html and "<b>regraded</b>" not in html


# ------------------------------------------------------------------------------------------------ words


@pytest.mark.parametrize(
    "page", ["overview", "profiles", "triage", "experts", "compare", "explain", "upload", "store"]
)
def test_every_page_has_the_glossary_and_the_reviewer_field(
    open_app, clean, page, essence_home, text_of
) -> None:
    at = open_app(page)
    clean(at)
    assert str(essence_home) not in text_of(at)  # no page shows a path on the server
    glossary = [e for e in at.sidebar.expander if "glossary" in e.label.lower()]
    assert glossary, f"no glossary on {page}"
    text = "\n".join(str(m.value) for m in glossary[0].markdown)
    missing = [t for t in GLOSSARY_TERMS if t.lower() not in text.lower()]
    assert not missing, missing
    assert "1 − confidence" in text
    assert at.sidebar.text_input(key="reviewer").label.startswith("Reviewer")


def test_pages_say_plain_words_before_the_technical_terms(open_app, clean, pages, text_of) -> None:
    at = open_app("experts")
    clean(at)
    columns = list(at.dataframe[0].value.columns)
    assert "probe AUC vs neighbour" not in columns
    assert any(c.endswith("(probe AUC)") for c in columns), columns
    caption = text_of(at)
    assert "α×β" not in caption and "α × β" not in caption.split("(")[0]
    at.switch_page(pages["explain"]).run()
    clean(at)
    captions = [str(c) for image in at.image for c in image.captions]
    ig = next(c for c in captions if "integrated gradients" in c)
    assert "completeness error" in ig and not ig.startswith("integrated gradients"), ig
    assert at.sidebar.selectbox(key="sidebar-layer").label.startswith("Layer")


def test_a_verdict_the_store_refuses_is_said_and_the_image_stays(open_app, clean, monkeypatch) -> None:
    """A verdict is stored in its button's callback, before the page's run: a refusal there is said on the page,
    as one on the page itself would be, and the queue stays on the image (nothing was saved)."""
    from essence.core.base.errors import StoreError
    from essence.storage.reviews import Reviews

    at = open_app("triage")
    _start_reviewing(at)
    before = _heading_index(at)

    def refuse(self, *args, **kwargs):
        raise StoreError("the store is read-only: copy it somewhere writable (ESSENCE_HOME)")

    monkeypatch.setattr(Reviews, "record_verdict", refuse)
    at.button(key="triage-verdict-fine").click().run()
    clean(at)
    assert any("read-only" in str(e.value) for e in at.error), [e.value for e in at.error]
    assert not any("Saved" in str(s.value) for s in at.success)
    assert _heading_index(at) == before
    at.run()  # said once, not on every later run
    assert not any("read-only" in str(e.value) for e in at.error)


def test_a_bug_in_a_verdict_s_callback_is_one_line_not_a_traceback(open_app, clean, monkeypatch) -> None:
    from essence.app.components.boundary import INTERNAL_ERROR
    from essence.storage.reviews import Reviews

    at = open_app("triage")
    _start_reviewing(at)

    def broken(self, *args, **kwargs):
        raise KeyError("verdict")

    monkeypatch.setattr(Reviews, "record_verdict", broken)
    at.button(key="triage-verdict-label error").click().run()
    assert not at.exception, [e.value for e in at.exception]
    assert any(INTERNAL_ERROR in str(e.value) and "KeyError" in str(e.value) for e in at.error)


def test_a_verdict_and_a_step_are_one_run_of_the_page(open_app, clean, monkeypatch) -> None:
    """The buttons act in their callbacks: the run a click starts draws the outcome; no second run is asked for
    (each run redraws the whole page in the browser)."""
    import streamlit

    at = open_app("triage")
    _start_reviewing(at)
    reruns = []
    original = streamlit.rerun

    def counted(*args, **kwargs):
        reruns.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(streamlit, "rerun", counted)
    _, first = _heading_index(at)
    at.button(key="triage-next").click().run()
    assert _heading_index(at)[0] == 2
    at.button(key="triage-prev").click().run()
    assert _heading_index(at) == (1, first)
    at.button(key="triage-verdict-fine").click().run()
    clean(at)
    assert any(f"Saved: image {first}" in str(s.value) for s in at.success)
    assert _heading_index(at)[0] == 2
    assert not reruns, f"{len(reruns)} extra runs"
