"""The diagnosis's evidence as charts and in the review report (built from plain numbers, no model)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from essence.app import diagnosis_charts
from essence.app.report import _flagged_class, svg
from essence.core.analyses.diagnosis.probe import Probe
from essence.core.analyses.diagnosis.suspect_steps import StepAudit, StepTest


def not_learned() -> SimpleNamespace:
    blur = StepTest("Gaussian blur σ=2 px", 0.87, 0.46, 0.60, 0.0, True, "<sev 2> vs sev 1: 0% survives")
    audit = StepAudit("<sev 2>", "sev 1", 0.87, 0.60, [blur])
    return SimpleNamespace(
        name="<sev 2>",
        diagnosis="not learned",
        neighbour="sev 1",
        recall=0.0,
        probe=Probe(0.45, 0.59, 57, 570, "sev 1"),
        audit=audit,
        evidence=None,
        suspect_steps=[blur],
        advice="never predicted; the slice does not separate it. Remedy: suspect the blur",
        remedy="suspect the blur",
    )


def test_separation_stages_run_from_the_images_to_the_slice() -> None:
    frame = diagnosis_charts.separation_stages(not_learned())
    assert list(frame["stage"]) == ["raw images", "after Gaussian blur σ=2 px", "at the slice"]
    assert np.allclose(frame["auc"], [0.87, 0.46, 0.45]) and np.allclose(frame["chance"], [0.6, 0.6, 0.59])


def test_the_evidence_chart_colours_bars_under_chance() -> None:
    chart = diagnosis_charts.diagnosis_evidence(not_learned())
    spec = chart.to_dict()
    bars, ticks = spec["layer"]
    assert bars["mark"]["type"] == "bar" and ticks["mark"]["type"] == "tick"
    assert "datum.auc > datum.chance" in str(bars["encoding"]["color"])
    assert "Can <sev 2> be told from sev 1?" in str(bars["title"])
    assert diagnosis_charts.diagnosis_evidence(SimpleNamespace(diagnosis="ok")) is None


def test_drowning_experts_chart_shows_the_references() -> None:
    evidence = SimpleNamespace(best={"recall": 0.76, "reference_recall": 0.18}, gain=0.18)
    c = SimpleNamespace(name="0", diagnosis="drowning experts", recall=0.0, evidence=evidence)
    spec = diagnosis_charts.diagnosis_evidence(c).to_dict()
    values = next(iter(spec["datasets"].values()))
    assert [v["recall"] for v in values] == [0.0, 0.18, 0.76]
    assert "beat both by 0.18" in str(spec["title"])


def test_the_report_names_the_step_and_escapes_names() -> None:
    html = _flagged_class(not_learned())
    assert "&lt;sev 2&gt;: not learned" in html and "<sev 2>" not in html.split("<svg")[0]
    assert "Gaussian blur σ=2 px" in html and "What to do:</b> suspect the blur" in html
    assert html.count("<svg") == 1
    assert svg(diagnosis_charts.diagnosis_evidence(not_learned())).lstrip().startswith("<svg")
