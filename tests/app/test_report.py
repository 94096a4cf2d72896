"""The review report: one self-contained HTML file, from the app's module and from ``essence report``."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from essence.app.report import png_data_uri, svg
from essence.storage import Store


def external_references(html: str) -> list[str]:
    """Every src/href that would be fetched (data: URIs and in-page anchors are not)."""
    refs = re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']""", html)
    refs += re.findall(r"""url\(\s*["']?([^"')]+)""", html)
    refs += re.findall(r"@import", html)
    return [r for r in refs if not r.startswith(("data:", "#"))]


def test_png_data_uri_is_an_embedded_png() -> None:
    uri = png_data_uri(np.zeros((4, 4, 3), dtype=np.uint8), size=8)
    assert uri.startswith("data:image/png;base64,")


def test_charts_render_to_svg_offline() -> None:
    from essence.app import charts

    out = svg(charts.class_bars(["a", "b"], np.array([0.5, 0.2]), np.array([0.4, np.nan])))
    assert out.lstrip().startswith("<svg") and "recall" in out
    assert not external_references(out)


@pytest.mark.slow
def test_essence_report_writes_a_self_contained_review(tmp_path: Path, monkeypatch) -> None:
    from essence.cli import app
    from essence.core import load_dataset, load_model

    monkeypatch.setenv("ESSENCE_HOME", str(tmp_path))
    model = load_model("demo:blurred")
    data = load_dataset("demo:test", model.preprocessing)
    with Store.open(tmp_path / "review.sqlite") as store:
        store.record_verdict(data.fingerprint, 3, "model error", note="first look", reviewer="Dr. A")
        store.record_verdict(data.fingerprint, 3, "label error", note="<b>ungraded</b>", reviewer="Dr. B")
        store.record_verdict(data.fingerprint, 8, "fine", reviewer="Dr. A")
    out = tmp_path / "review.html"
    result = CliRunner().invoke(
        app,
        [
            "report",
            "--model",
            "demo:blurred",
            "--data",
            "demo:test",
            "--store",
            str(tmp_path / "review.sqlite"),
            "--out",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "2 reviewed cases" in result.output
    html = out.read_text()
    assert not external_references(html), external_references(html)
    assert model.preprocessing.describe() in html  # the recipe
    names = ", ".join(model.class_names)
    assert (
        f"Classes, in output order:</b> {names} (from the model itself)" in html
    )  # and where they came from
    assert "not learned" in html  # the diagnosis of class 2
    assert html.count("data:image/png;base64,") == 2  # the two reviewed cases, embedded
    assert html.count("<svg") >= 2  # charts rendered offline
    # every reviewer's latest verdict on image 3, one row each (not only the newest of all)
    assert "<td>Dr. B</td><td><b>label error</b>" in html and "<td>Dr. A</td><td><b>model error</b>" in html
    assert "&lt;b&gt;ungraded&lt;/b&gt;" in html and "<b>ungraded</b>" not in html  # notes are escaped


def test_essence_report_names_a_bad_model(tmp_path: Path, capsys) -> None:
    from essence.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(
            [
                "report",
                "--model",
                str(tmp_path / "missing.pt"),
                "--data",
                "demo:test",
                "--out",
                str(tmp_path / "r.html"),
            ]
        )
    assert exit_.value.code == 2
    assert "missing.pt" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()
