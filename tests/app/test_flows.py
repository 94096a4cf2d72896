"""The app's flows that AppTest can check: uploads kept in the store, text from data shown as text, honest pages.

The real-browser flows (two choices in a row, reloads, clicks in the queue, downloads) are in ``test_browser.py``.
"""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from essence.app.state import STATE_KEY
from essence.core.base.errors import DataLoadError


def _zip(folders: dict[str, int]) -> bytes:
    """An ImageFolder zip: ``{class folder: images}`` of small PNGs."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, n in folders.items():
            for i in range(n):
                png = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(png, format="PNG")
                z.writestr(f"data/{name}/{i}.png", png.getvalue())
    return buf.getvalue()


# ------------------------------------------------------------------------------------------------ plain Python


def test_plain_keeps_markup_from_data_as_text() -> None:
    from essence.app.components.text import plain, printable

    text = plain("![x](http://example.invalid/t.png) :red[alarm] **b**\n# head\x07")
    assert "![" not in text and "\\!\\[x\\]" in text
    assert "\\:red\\[alarm\\]" in text and "\\*\\*b\\*\\*" in text
    assert "\n" not in text and "\x07" not in text
    assert plain("-1.5 (p. 3)") == "\\-1.5 (p. 3)"  # only a line's first '-' would start a list
    assert printable("a\tb\x00c") == "a bc"


def test_upload_errors_name_files_and_the_app_switches(essence_home) -> None:
    from essence.app import uploads
    from essence.app.components.text import for_people

    root = uploads.uploads_root()
    path = root / "models" / "0123abcd" / "weights.pt"
    said = for_people(
        f"{path} is a full pickle, which can run arbitrary code when loaded, so it was refused; save a "
        "state_dict or safetensors instead, or pass trust_pickle=True if you trust its source",
        root,
    )
    assert str(essence_home) not in said and said.startswith("weights.pt is a full pickle")
    assert "trust_pickle" not in said and "Trust this pickle" in said
    said = for_people(
        f"bad image {root}/datasets/x/data/a/x.png (or pass --skip-bad-images to leave it out)", root
    )
    assert "--skip" not in said and "Skip unreadable images" in said and "bad image x.png" in said
    said = for_people(
        f"{root}/datasets/x/data/b.dcm: unreadable (or pass on_bad_image='skip' to leave it out)", root
    )
    assert "on_bad_image" not in said and "Skip unreadable images" in said


def test_a_class_name_with_a_control_character_is_refused(essence_home) -> None:
    from essence.app.uploads import dataset_from_zip

    with pytest.raises(DataLoadError, match="control characters"):
        dataset_from_zip(_zip({"fine": 2, "bell\x07": 2}), "bad.zip")


def test_uploads_are_registered_and_removed(essence_home) -> None:
    from essence.app import registry
    from essence.app.uploads import dataset_from_zip

    choice = dataset_from_zip(_zip({"a": 2, "b": 2}), "mine.zip")
    registry.register_dataset(choice)
    registry.register_dataset(choice)  # the same upload again: one entry
    assert [c.label for c in registry.saved_datasets()] == [choice.label]
    assert registry.forget("dataset", choice.label)
    assert registry.saved_datasets() == []
    assert not registry.forget("dataset", choice.label)


# ------------------------------------------------------------------------------------------------ AppTest


@pytest.mark.slow
def test_an_uploaded_dataset_is_offered_in_a_new_session_until_removed(open_app, clean) -> None:
    at = open_app("upload")
    at.file_uploader(key="upload-data-file").set_value(
        ("mine.zip", _zip({"a": 3, "b": 3}), "application/zip")
    )
    at.button[1].click().run()
    clean(at)
    label = "mine.zip (uploaded)"
    assert at.session_state[STATE_KEY].data == label
    assert at.sidebar.selectbox(key="sidebar-data").value == label  # the sidebar shows it at once
    assert any("now the current dataset" in str(s.value) for s in at.success)
    fresh = open_app("upload")  # a new browser session (or a reload): the store offers it again
    assert label in fresh.sidebar.selectbox(key="sidebar-data").options
    fresh.button(key="upload-remove-dataset-0").click().run()
    clean(fresh)
    assert label not in fresh.sidebar.selectbox(key="sidebar-data").options
    assert fresh.session_state[STATE_KEY].data == "demo:test"


@pytest.mark.slow
def test_explain_says_when_the_model_has_nothing_for_the_question(open_app, clean) -> None:
    at = open_app("explain")
    clean(at)
    assert len(at.image) > 3  # the image as given, as the model sees it, integrated gradients, the units
    why = next(s for s in at.selectbox if s.label == "Why this class")
    why.set_value(1).run()  # severity 2, which the blurred model never predicts
    rather = next(s for s in at.selectbox if s.label == "… rather than")
    rather.set_value(0).run()  # rather than severity 1
    clean(at)
    said = [str(w.value) for w in at.warning]
    assert any("has nothing" in w for w in said), said
    assert len(at.image) == 3  # no unit drawn as evidence
    assert not any("influence +0" in str(c.value) for c in at.caption)


@pytest.mark.slow
def test_triage_keeps_the_export_when_no_image_matches_and_shows_a_saved_note(open_app, clean) -> None:
    at = open_app("triage")
    at.text_input[0].input("Dr. Notes")
    at.button[0].click().run()
    clean(at)
    assert "ranked by" in " ".join(str(c.value) for c in at.caption)
    note_key = next(t.key for t in at.text_input if t.key and t.key.startswith("triage-note"))
    at.text_input(key=note_key).input("dot-blot haemorrhage")
    at.button(key="triage-verdict-ambiguous").click().run()
    at.button(key="triage-prev").click().run()
    clean(at)
    assert at.text_input(key=note_key).value == "dot-blot haemorrhage"
    assert any("dot-blot haemorrhage" in str(c.value) for c in at.caption)
    at.selectbox(key="triage-verdict-filter").set_value("custom").run()
    clean(at)
    assert any("No image matches" in str(i.value) for i in at.info)
    assert at.get("download_button"), "the export went away with the queue"
