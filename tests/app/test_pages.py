"""Every page of the app rendered with AppTest on the bundled demo, and the recipe's flows end to end."""

from __future__ import annotations

import pytest

from essence.app.state import STATE_KEY
from essence.storage import Store

pytestmark = pytest.mark.slow


def severity_2() -> tuple[int, str]:
    """The demo's class 2 (the class the blurred model never predicts): its index and name."""
    from essence.sample_data import CLASS_NAMES

    return 1, CLASS_NAMES[1]


@pytest.mark.parametrize(
    "page", ["overview", "profiles", "triage", "experts", "compare", "explain", "upload", "store"]
)
def test_every_page_renders_on_the_demo(open_app, page: str, clean, text_of, pages) -> None:
    at = open_app(page)
    clean(at)
    assert at.title, f"{page} drew no title"


def test_overview_calls_out_the_never_predicted_class(open_app, clean, text_of, pages) -> None:
    at = open_app()
    clean(at)
    _, name = severity_2()
    never = [e.value for e in at.error if "never predicts" in str(e.value)]
    assert len(never) == 1 and name in never[0], never
    assert at.metric[0].label == "Accuracy"
    text = text_of(at)
    assert "blur" in text  # the model's preprocessing recipe is shown with the model


def test_sidebar_shows_the_recipe_of_the_current_model(open_app, clean, text_of, pages) -> None:
    at = open_app()
    sidebar = "\n".join(str(m.value) for m in at.sidebar.markdown)
    assert "Preprocessing of demo:blurred" in sidebar and "blur" in sidebar
    at.sidebar.selectbox[0].set_value("demo:sharp").run()
    assert at.session_state[STATE_KEY].model == "demo:sharp"
    sidebar = "\n".join(str(m.value) for m in at.sidebar.markdown)
    assert "Preprocessing of demo:sharp" in sidebar and "no blur" in sidebar


def test_pick_class_then_triage_then_record_a_verdict(open_app, essence_home, clean, text_of, pages) -> None:
    cls, name = severity_2()
    at = open_app("profiles")
    clean(at)
    at.radio(key="profiles-view").set_value("one").run()
    at.selectbox(key="profiles-class").set_value(cls).run()
    assert at.session_state[STATE_KEY].cls == cls
    at.switch_page(pages["triage"]).run()
    clean(at)
    # the reviewer's name is asked once per session
    at.text_input[0].input("Dr. Reviewer")
    at.button[0].click().run()
    assert at.session_state[STATE_KEY].reviewer == "Dr. Reviewer"
    clean(at)
    # the queue is filtered to the chosen class
    assert at.multiselect[0].value == [cls]
    heading = at.subheader[0].value
    index = int(heading.rsplit("image ", 1)[1])
    at.text_input(key=next(t.key for t in at.text_input if t.key and t.key.startswith("triage-note"))).input(
        "microaneurysms visible"
    )
    at.button(key="triage-verdict-label error").click().run()
    clean(at)
    assert at.session_state[STATE_KEY].triage_position == 1
    with Store.open(essence_home / "essence.sqlite") as store:
        from essence.core import load_dataset, load_model

        model = load_model("demo:blurred")
        data = load_dataset("demo:test", model.preprocessing)
        latest = store.latest_verdicts(data.fingerprint)
    assert latest[index].verdict == "label error"
    assert latest[index].reviewer == "Dr. Reviewer"
    assert latest[index].note == "microaneurysms visible"
    assert int(data.labels[index]) == cls


def test_diagnosis_finds_class_2_not_learned(open_app, clean, text_of, pages) -> None:
    _, name = severity_2()
    at = open_app("experts")
    clean(at)
    flagged = [str(e.value) for e in at.error]
    assert any(name in f and "not learned" in f for f in flagged), flagged
    table = at.dataframe[0].value
    row = table[table["class"] == name].iloc[0]
    assert "not learned" in row["diagnosis"]
    assert row["predicted as it"] == 0
    # The suspect step is named with its evidence, and the remedy is given in words.
    assert any("Gaussian blur σ=2 px" in str(w.value) for w in at.warning)
    assert any("What to do" in str(i.value) for i in at.info)


def test_compare_blurred_with_sharp(open_app, clean, text_of, pages, monkeypatch) -> None:
    """After Experts & diagnosis, Compare is handed A's diagnosis (B's alone is computed) and shows it."""
    import essence.core.analyses.comparison as comparison_module

    _, name = severity_2()
    at = open_app("experts")
    clean(at)
    diagnosed = []
    original = comparison_module.diagnose_model
    monkeypatch.setattr(
        comparison_module, "diagnose_model", lambda *a, **k: diagnosed.append(a[0]) or original(*a, **k)
    )
    at.switch_page(pages["compare"]).run()
    clean(at)
    assert len(diagnosed) == 1, "A's diagnosis, made on Experts, was computed again"
    assert at.selectbox[0].value == "demo:sharp"
    table = at.dataframe[0].value
    row = table[table["class"] == name].iloc[0]
    assert row["predicted A"] == 0
    assert row["predicted B"] > 0 and row["recall B"] > 0
    assert "blur" in text_of(at)  # each side shows its preprocessing recipe


def test_explain_shows_readable_overlays(open_app, clean, text_of, pages) -> None:
    at = open_app("explain")
    clean(at)
    from essence.app.components.images import READABLE

    assert len(at.image) >= 3  # input, IG, and the top units' overlays
    assert any("unit" in str(c) for c in at.caption.values)
    assert READABLE >= 256


def test_a_bad_model_upload_is_a_message_not_an_exception(open_app, clean, text_of, pages) -> None:
    at = open_app("upload")
    at.file_uploader[0].set_value(("weights.pt", b"this is not a model", "application/octet-stream"))
    at.selectbox[0].set_value("resnet18")
    at.button[0].click().run()
    clean(at)
    assert at.error, "no message for a bad model file"
    assert "weights.pt" in at.error[0].value
    assert at.session_state[STATE_KEY].model == "demo:blurred"


def test_a_bad_dataset_upload_is_a_message_not_an_exception(open_app, clean, text_of, pages) -> None:
    at = open_app("upload")
    at.file_uploader[1].set_value(("data.zip", b"PK not really a zip", "application/zip"))
    at.button[1].click().run()
    clean(at)
    assert any("not a zip" in str(e.value) for e in at.error), [e.value for e in at.error]


@pytest.mark.cold_store
def test_a_cancelled_computation_stays_cancelled_and_stores_nothing(
    open_app, essence_home, clean, text_of, pages
) -> None:
    from essence.app.services import profile_key
    from essence.core import load_dataset, load_model

    model = load_model("demo:blurred")
    data = load_dataset("demo:test", model.preprocessing)
    digest = profile_key(model, data, model.default_layer, "logit").digest()
    at = open_app()
    at.session_state[STATE_KEY].cancelled.add(digest)
    at.switch_page(pages["profiles"]).run()
    clean(at)
    assert any("cancelled" in str(i.value) for i in at.info)
    with Store.open(essence_home / "essence.sqlite") as store:
        assert store.info().profiles == 0
    at.button(key="profiles-restart").click().run()
    clean(at)
    assert not at.info or not any("cancelled" in str(i.value) for i in at.info)
    with Store.open(essence_home / "essence.sqlite") as store:
        assert store.info().profiles == 1


@pytest.mark.cold_store
def test_a_reload_is_served_from_the_store(open_app, essence_home, clean, text_of, pages) -> None:
    import streamlit as st

    at = open_app("profiles")
    clean(at)
    st.cache_resource.clear()  # a restarted server: nothing in memory, everything in the store
    at = open_app("profiles")
    clean(at)
    assert not at.progress, "profiles were recomputed instead of read from the store"
