"""The review report a clinician can file: one self-contained HTML file.

It holds the model and its preprocessing recipe, accuracy and the confusion matrix, the diagnosis of every
class (with the expert sweeps of the flagged ones), and each reviewed case — its image, label, prediction,
every reviewer's latest verdict with its note and time, and their earlier verdicts with their notes. Charts
are rendered to SVG offline (``vl_convert``), images embedded as base64 PNG; the file refers to nothing outside
itself, so it opens without a network. No Streamlit here: ``essence report`` builds the same file from the shell.
"""

from __future__ import annotations

import base64
import html
import io
from collections import defaultdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from essence.app import charts, diagnosis_charts
from essence.core.inputs.data import ImageData
from essence.core.inputs.models import LoadedModel
from essence.core.inputs.preprocessing import Preprocessing

if TYPE_CHECKING:
    from collections.abc import Sequence

    from essence.core import Diagnosis, SharedEvidence
    from essence.storage import Store

CASE_IMAGE_PX = 160  # reviewed cases: large enough to see the lesions, small enough for a long list

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1100px;
       color: #222; line-height: 1.4; }
h1 { margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #ddd; padding-bottom: 0.2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: 0.6em 0; } td, th { border: 1px solid #ddd; padding: 4px 8px;
       text-align: left; vertical-align: top; } th { background: #f4f4f4; }
.flag { color: #b00020; font-weight: 600; } .muted { color: #666; font-size: 0.9em; }
.recipe { background: #fff7e0; border: 1px solid #f0d890; padding: 0.6em 1em; }
img.case { image-rendering: pixelated; width: 160px; height: 160px; }
"""


def svg(chart: object) -> str:
    """An Altair chart rendered to inline SVG, offline.

    Every string of the spec is made :func:`~essence.app.charts.printable` first: the renderer aborts the whole
    process (a Rust panic, exit 134) on a control character in a label, and class names come from data.
    """
    import vl_convert

    spec = charts.printable_spec(chart.to_dict())  # type: ignore[attr-defined]
    return vl_convert.vegalite_to_svg(spec)


def png_data_uri(image: np.ndarray, size: int = CASE_IMAGE_PX) -> str:
    """uint8 ``[H, W, C]`` → ``data:image/png;base64,...`` (enlarged with crisp pixels)."""
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    img = Image.fromarray(a.astype(np.uint8)).convert("RGB")
    img = img.resize((size, size), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _e(x: object) -> str:
    return html.escape(charts.printable(str(x)))


def _f(x: float) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:.2f}"


def review_report(
    model: LoadedModel,
    data: ImageData,
    layer: str,
    diagnosis: Diagnosis,
    store: Store,
    predicted: np.ndarray | None = None,
    now: datetime | None = None,
    shortcuts: Sequence[SharedEvidence] | None = None,
) -> str:
    """The report as one HTML string.

    Args:
        model: the reviewed model (name, card, preprocessing recipe).
        data: the dataset the cases come from.
        layer: the slice of the diagnosis.
        diagnosis: a :class:`~essence.core.analyses.diagnosis.verdict.Diagnosis` of ``model`` on ``data``.
        store: the store holding the verdicts (``all_verdicts(dataset_fp)``).
        predicted: int ``[N]`` the model's predictions (for the cases' table), if known.
        now: the report's time stamp (default: now, UTC).
        shortcuts: the triage's shared evidence (:func:`~essence.core.shared_evidence`), where it was looked
            for: each group's sentence and its map (``None``: the section is left out).

    Returns:
        A complete HTML document with no external reference.
    """
    names = [c.name for c in diagnosis.classes]  # type: ignore[attr-defined]
    stamp = (now or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>Essence review: {_e(model.name)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Review of {_e(model.name)}</h1>",
        f"<p class='muted'>Data {_e(data.spec)} ({len(data)} images), slice <code>{_e(layer)}</code>; "
        f"report made {stamp}.</p>",
        _model_section(model, getattr(data, "preprocessing", None)),
        _diagnosis_section(diagnosis, names),
        _shortcuts_section(shortcuts, data) if shortcuts is not None else "",
        _cases_section(data, store, names, predicted),
        "</body></html>",
    ]
    return "\n".join(parts)


def _model_section(model: LoadedModel, applied: Preprocessing | None = None) -> str:
    """The model, and the recipe as applied to the data (the model's, with a DICOM window or a size on top)."""
    shown = applied or model.preprocessing
    recipe = shown.describe() if shown else "unknown (not recorded with the model)"
    card = "".join(
        f"<tr><th>{_e(k.replace('_', ' '))}</th><td>{_e(v)}</td></tr>"
        for k, v in model.card.items()
        if isinstance(v, str | int | float) and k not in ("name",)
    )
    where = {"card": "its card", "option": "the class names given with it", None: "the model itself"}
    classes = (
        f"{', '.join(model.class_names)} (from {where.get(model.class_source, model.class_source)})"
        if model.class_names
        else "not named by the model: the data's labels are its output indices"
    )
    return (
        "<h2>Model</h2>"
        f"<p><b>{_e(model.name)}</b> (spec <code>{_e(model.spec)}</code>, fingerprint {_e(model.fingerprint)})</p>"
        f"<div class='recipe'><b>Preprocessing recipe:</b> {_e(recipe)}</div>"
        f"<div class='classes'><b>Classes, in output order:</b> {_e(classes)}</div>"
        + (f"<table>{card}</table>" if card else "")
    )


def _diagnosis_section(diagnosis: object, names: list[str]) -> str:
    d = diagnosis
    rows = []
    flagged = []
    trained = getattr(d, "training_instances", None) is not None  # the training data was given
    for c in d.classes:  # type: ignore[attr-defined]
        e = c.expert
        expert = (
            f"α={e['alpha']}, β={e['beta']}: recall {e['recall']:.2f}, precision {e['precision']:.2f}"
            if e
            else ""
        )
        probe = (
            f"{_f(c.probe.auc)} vs {c.probe.against} (chance ≤ {_f(c.probe.threshold)})" if c.probe else "—"
        )
        flag = " class='flag'" if c.diagnosis != "ok" else ""
        rows.append(
            f"<tr><td>{_e(c.name)}</td><td>{c.count}</td><td>{c.predicted_count}</td><td>{_f(c.recall)}</td>"
            f"<td>{_f(c.precision)}</td><td{flag}>{_e(c.diagnosis)}</td><td>{_e(probe)}</td><td>{_e(expert)}</td>"
            f"<td>{_e(', '.join(t.step for t in c.suspect_steps))}</td><td>{_e(_right_when_given(c))}</td>"
            + (f"<td>{_e(c.training.describe(c.name)) if c.training else '—'}</td>" if trained else "")
            + "</tr>"
        )
        if c.diagnosis != "ok":
            flagged.append(_flagged_class(c))
    recall = np.array([c.recall for c in d.classes])  # type: ignore[attr-defined]
    precision = np.array([c.precision for c in d.classes])  # type: ignore[attr-defined]
    figures = [
        svg(charts.class_bars(names, recall, precision)),
        svg(charts.confusion_chart(np.asarray(d.confusion), names)),  # type: ignore[attr-defined]
    ]
    return (
        "<h2>Diagnosis</h2>"
        f"<p>Accuracy {d.accuracy:.1%}.</p>"  # type: ignore[attr-defined]
        "<table><tr><th>class</th><th>images</th><th>predicted as it</th><th>recall</th><th>precision</th>"
        "<th>diagnosis</th><th>probe AUC of the slice</th><th>expert</th><th>suspect steps</th>"
        "<th>right when given (held-out benchmark)</th>"
        + ("<th>training data</th>" if trained else "")
        + "</tr>"
        + "".join(rows)
        + "</table>"
        + _benchmark_note(d)
        + "".join(f"<div>{f}</div>" for f in figures)
        + "".join(flagged)
    )


def _flagged_class(c: object) -> str:
    """A flagged class: the verdict with its evidence, the remedy, the suspect steps, and the charts."""
    steps = "".join(
        f"<li><b>{_e(t.step)}</b>: {_e(t.evidence)}</li>"
        for t in c.suspect_steps  # type: ignore[attr-defined]
    )
    figures = []
    chart = diagnosis_charts.diagnosis_evidence(c)
    if chart is not None:
        figures.append(svg(chart))
    evidence = c.evidence  # type: ignore[attr-defined]
    if evidence is not None:
        figures.append(svg(charts.sweep_heatmaps(evidence.sweep, evidence.experts)))
    return (
        f"<h3>{_e(c.name)}: {_e(c.diagnosis)}</h3>"  # type: ignore[attr-defined]
        f"<p>{_e(c.advice.split('. Remedy:')[0])}.</p>"  # type: ignore[attr-defined]
        f"<p><b>What to do:</b> {_e(c.remedy)}</p>"  # type: ignore[attr-defined]
        + _training_and_trust(c)
        + (f"<p>Suspect preprocessing steps:</p><ul>{steps}</ul>" if steps else "")
        + "".join(f"<div>{f}</div>" for f in figures)
    )


def _right_when_given(c: object) -> str:
    """``3 of 12 (0.25)``: how often the class's verdict was right on the held-out benchmark (``—``: no row)."""
    row = getattr(c, "benchmark_precision", None)
    return "—" if row is None else f"{row['right']} of {row['count']} ({row['precision']:.2f})"


def _benchmark_note(d: object) -> str:
    """Where "right when given" comes from."""
    meta = getattr(d, "benchmark", None)
    if not meta:
        return ""
    return (
        f"<p class='muted'>Right when given: how often each verdict was right when the diagnosis gave it on the "
        f"held-out half of the planted-defect benchmark ({_e(meta.get('grid', {}).get('cases', '?'))} cases, "
        f"measured {_e(meta.get('date', '?'))}, without training data).</p>"
    )


def _training_and_trust(c: object) -> str:
    """A flagged class's training facts (when the training data was given) and its verdict's benchmark record."""
    from essence.core.analyses.diagnosis.benchmark import STEP_NAMED, said

    training = getattr(c, "training", None)
    with_training = training is not None
    parts = []
    if training is not None:
        parts.append(f"<p><b>Training data:</b> {_e(training.describe(c.name))}</p>")  # type: ignore[attr-defined]
    trust = said(c.diagnosis, getattr(c, "benchmark_precision", None), with_training)  # type: ignore[attr-defined]
    step = said(STEP_NAMED, getattr(c, "step_benchmark_precision", None), with_training)
    for text in (trust, step):
        if text:
            parts.append(f"<p><b>How far to trust it:</b> {_e(text)}</p>")
    return "".join(parts)


def _shortcuts_section(found: Sequence[SharedEvidence], data: ImageData) -> str:
    """Each group of flagged images sharing why-flagged units: its sentence, and its aggregated saliency over
    its first image (on the image, the region outlined; as a heat map)."""
    from essence.core.analyses.interpret import display_image
    from essence.core.analyses.shortcuts import evidence_image

    head = (
        "<h2>Shortcuts</h2><p class='muted'>Flagged images of one class whose reasons share the same units more "
        "often than chance allows; where that evidence lies, and how many predictions change when it is covered "
        "(against a random region of the same size).</p>"
    )
    if not found:
        return head + "<p>No group of flagged images shares its why-flagged units more often than chance.</p>"
    items = []
    for g in found:
        index = int(g.indices[0])
        recipe = data.preprocessing
        picture = evidence_image(g, display_image(data.tensors([index])[0], recipe.mean, recipe.std))
        width = (picture.shape[1] - 1) // 2
        tiles = "".join(
            f"<img class='case' alt='image {index}: shared evidence' src='{png_data_uri(tile)}'> "
            for tile in (picture[:, :width], picture[:, width + 1 :])
        )
        items.append(f"<p>{_e(g.sentence)}</p><div>{tiles}</div>")
    return head + "".join(items)


def _cases_section(data: ImageData, store: Store, names: list[str], predicted: np.ndarray | None) -> str:
    """Each reviewed image, newest first, with one row per reviewer: that reviewer's latest verdict, note and
    time, and their earlier verdicts on it. Where several reviewers judged it, the newest of all is marked."""
    verdicts = store.all_verdicts(data.fingerprint)  # type: ignore[attr-defined]
    if not verdicts:
        return "<h2>Reviewed cases</h2><p>No case of this dataset has been reviewed yet.</p>"
    history: dict[int, dict[str, list]] = defaultdict(dict)
    for v in verdicts:  # oldest first
        history[v.instance_id].setdefault(v.reviewer or "", []).append(v)
    newest = {i: max((vs[-1] for vs in by.values()), key=lambda v: v.id) for i, by in history.items()}
    rows = []
    images = 0
    for index in sorted(history, key=lambda i: newest[i].created_at, reverse=True):
        if not 0 <= index < len(data):
            continue
        images += 1
        label = (
            names[int(data.labels[index])]
            if int(data.labels[index]) < len(names)
            else str(data.labels[index])
        )
        pred = names[int(predicted[index])] if predicted is not None else "—"
        by = sorted(history[index].values(), key=lambda vs: vs[-1].id, reverse=True)  # newest reviewer first
        span = f" rowspan='{len(by)}'" if len(by) > 1 else ""
        for n, vs in enumerate(by):
            latest = vs[-1]
            earlier = "<br>".join(
                f"{_e(v.verdict)} by {_e(v.reviewer or '—')}, {v.created_at:%Y-%m-%d %H:%M}"
                + (f": “{_e(v.note)}”" if v.note else "")
                for v in vs[:-1]
            )
            mark = (
                " <span class='muted'>(newest)</span>"
                if len(by) > 1 and latest.id == newest[index].id
                else ""
            )
            head = (
                f"<td{span}><img class='case' alt='image {index}' src='{png_data_uri(data.raw_image(index))}'></td>"
                f"<td{span}>{index}</td><td{span}>{_e(label)}</td><td{span}>{_e(pred)}</td>"
                if n == 0
                else ""
            )
            rows.append(
                f"<tr>{head}<td>{_e(latest.reviewer or '—')}</td><td><b>{_e(latest.verdict)}</b>{mark}</td>"
                f"<td>{_e(latest.note)}</td><td>{latest.created_at:%Y-%m-%d %H:%M}</td>"
                f"<td class='muted'>{earlier}</td></tr>"
            )
    return (
        f"<h2>Reviewed cases ({images})</h2>"
        "<p class='muted'>Every reviewer's latest verdict on each image, one row each; earlier verdicts beside "
        "them.</p>"
        "<table><tr><th>image</th><th>#</th><th>label</th><th>predicted</th><th>reviewer</th><th>verdict</th>"
        "<th>note</th><th>time</th><th>earlier verdicts (of that reviewer)</th></tr>"
        + "".join(rows)
        + "</table>"
    )
