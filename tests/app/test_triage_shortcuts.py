"""The Triage page's shortcut finder: computed when asked, remembered, each group's sentence in plain text and its
aggregated saliency drawn over one of its images."""

from __future__ import annotations

import numpy as np
import pytest

import essence.core
from essence.app.components.shortcuts import FIND_KEY
from essence.core import SharedEvidence
from essence.core.analyses.shortcuts import evidence_region


def _start(open_app, clean):
    at = open_app("triage")
    clean(at)
    at.text_input[0].input("Dr. Reviewer")
    at.button[0].click().run()
    clean(at)
    return at


def _found_text(at) -> str:
    return "\n".join(str(t.value) for t in at.text)


def test_the_finder_runs_when_asked_and_is_remembered(open_app, clean, text_of) -> None:
    at = _start(open_app, clean)
    assert at.button(key=FIND_KEY)  # nothing computed before it is asked for
    assert "No group of flagged images" not in text_of(at)
    at.button(key=FIND_KEY).click().run()
    clean(at)
    # The demo's flagged images share no why-flagged units more often than chance allows: said, not drawn.
    assert "No group of flagged images shares its why-flagged units" in text_of(at)
    at.run()
    clean(at)
    assert not [b for b in at.button if b.key == FIND_KEY]  # remembered: shown at once, no button
    assert "No group of flagged images shares its why-flagged units" in text_of(at)


@pytest.fixture
def one_group(monkeypatch: pytest.MonkeyPatch) -> list[SharedEvidence]:
    """``shared_evidence`` made to find one group: the first four flagged images, their evidence top-left."""
    made: list[SharedEvidence] = []

    def found(model, data, triage, **settings) -> list[SharedEvidence]:
        rows = triage.ranking[:4]
        h, w = data.tensors([0]).shape[-2:]
        saliency = np.ones((h, w))
        saliency[: h // 4, : w // 4] = 40.0
        saliency /= saliency.sum()
        cls = int(triage.labels[rows[0]])
        group = SharedEvidence(
            cls, "<b>" + triage.class_names[cls], (5, 2), (1e-4, 1e-3), triage.indices[rows],
            triage.labels[rows], triage.predicted[rows], saliency, evidence_region(saliency), 3, (0, 1, 0),
        )  # fmt: skip
        made.append(group)
        return [group]

    monkeypatch.setattr(essence.core, "shared_evidence", found, raising=False)
    return made


def test_each_group_is_one_sentence_with_its_map_over_an_image(open_app, clean, one_group) -> None:
    at = _start(open_app, clean)
    images = len(at.image)
    at.button(key=FIND_KEY).click().run()
    clean(at)
    (group,) = one_group
    assert group.sentence in _found_text(at)  # plain text: the class name is never read as markup
    assert (
        "in the top-left corner" in group.sentence
        and "covering it changes 3 of 4 predictions" in group.sentence
    )
    assert len(at.image) == images + 1
    captions = [str(c) for image in at.image for c in image.captions]
    assert any(c.startswith(f"image {int(group.indices[0])}: the shared units' saliency") for c in captions)


@pytest.mark.slow  # building the report runs the demo's diagnosis
def test_the_review_report_holds_what_the_triage_page_found(open_app, clean, one_group) -> None:
    from essence.app.views.store import REPORT_KEY

    at = _start(open_app, clean)
    at.button(key=FIND_KEY).click().run()
    clean(at)
    at.switch_page("views/store.py").run()
    clean(at)
    at.button(key="store-build-report").click().run()
    clean(at)
    html = at.session_state[REPORT_KEY][1]
    section = html.split("<h2>Shortcuts</h2>", 1)[1].split("<h2>", 1)[0]
    assert "&lt;b&gt;" in section and "covering it changes 3 of 4 predictions" in section
    assert section.count("data:image/png;base64,") == 2
