"""``essence triage --shortcuts``: the groups of flagged images that share why-flagged units, one sentence each on
the terminal and in the JSON's ``shortcuts`` list, the maps as PNGs, and bad input refused in one line.

The model and data are the planted-defect benchmark's shortcut case (a mark in the top-left corner of some
digits, spilled onto other classes' images relabelled as the marked class), saved as a user would hand them
to the command line: weights beside a factory module, the review images as an npz, the recipe as JSON.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from in_process import run_essence
from PIL import Image
from safetensors.torch import save_file

from benchmarks.planted.cases import build_case

FACTORY = """
from benchmarks.planted.models import build

def net():
    return build("cnn", 3, 16, 10)
"""


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The planted shortcut case's model, review images and recipe, as files."""
    root = tmp_path_factory.mktemp("shortcuts_cli")
    case = build_case("shortcut/mark-90-spill", seed=2, steps=200, review_limit=200)
    (root / "essence_shortcut_net.py").write_text(FACTORY)
    save_file(case.model.state_dict(), str(root / "net.safetensors"))
    data = case.review
    np.savez(
        root / "review.npz", images=data.arrays, labels=data.labels, class_names=np.array(data.class_names)
    )
    (root / "recipe.json").write_text(json.dumps(data.preprocessing.to_dict()))
    return {"root": root, "count": len(data)}


def essence(planted: dict, tmp_path: Path, command: str, *extra: str):
    root = planted["root"]
    args = [
        command, "--model", "essence_shortcut_net:net", "--weights", str(root / "net.safetensors"),
        "--data", f"npz:{root / 'review.npz'}", "--preprocessing", str(root / "recipe.json"),
        "--layer", "hidden", "--device", "cpu", "--store", str(tmp_path / "s.sqlite"), *extra,
    ]  # fmt: skip
    return run_essence(args, {"ESSENCE_HOME": str(tmp_path)}, code_path=root)


def test_the_sentence_is_printed_and_the_json_holds_each_group(planted, tmp_path: Path) -> None:
    out, maps = tmp_path / "t.json", tmp_path / "maps"
    run = essence(
        planted, tmp_path, "triage", "--json", str(out), "--shortcuts", "--shortcut-maps", str(maps)
    )
    assert run.returncode == 0, run.stderr
    js = json.loads(out.read_text())
    assert len(js["scores"]) == planted["count"]  # every ranked instance, as without --shortcuts
    groups = js["shortcuts"]
    assert groups, run.stdout
    first = groups[0]
    assert {"units", "instances", "class", "region", "changed", "control_changed", "sentence", "map"} <= set(
        first
    )
    assert first["class"] == "7"  # the class the mark was planted on (seed 2)
    top, left, bottom, right = first["region"]["bbox"]
    assert top <= 1 and left <= 1 and bottom <= 4 and right <= 4  # in the top-left corner, where the mark is
    assert first["region"]["share"] == pytest.approx((bottom - top) * (right - left) / 16**2)
    assert first["changed"] > first["control_changed"]
    assert {"index", "label", "predicted"} <= set(first["instances"][0])
    n = len(first["instances"])
    assert first["sentence"] in run.stdout
    assert first["sentence"].startswith(f"{n} flagged images of class '7' share unit")
    assert f"covering it changes {first['changed']} of {n} predictions" in first["sentence"]
    assert "in the top-left corner" in first["sentence"]
    picture = Image.open(first["map"])
    assert picture.format == "PNG" and picture.height >= 160 and picture.width > picture.height


def test_without_the_flag_the_json_has_no_shortcuts(planted, tmp_path: Path) -> None:
    out = tmp_path / "t.json"
    run = essence(planted, tmp_path, "triage", "--json", str(out))
    assert run.returncode == 0, run.stderr
    assert "shortcuts" not in json.loads(out.read_text()) and "shortcuts:" not in run.stdout


@pytest.mark.parametrize(
    ("extra", "says"),
    [
        (["--shortcuts", "--shortcut-top", "0"], "--shortcut-top"),
        (["--shortcut-maps", "FILE"], "is a file: name a folder"),
    ],
)
def test_bad_input_is_one_line_and_status_2(planted, tmp_path: Path, extra: list[str], says: str) -> None:
    afile = tmp_path / "a-file.png"
    afile.write_bytes(b"not a folder")
    run = essence(planted, tmp_path, "triage", *[str(afile) if e == "FILE" else e for e in extra])
    assert run.returncode == 2, (run.stdout, run.stderr)
    lines = [line for line in run.stderr.splitlines() if line.strip()]
    assert says in run.stderr, run.stderr
    assert len(lines) <= 5 and "Traceback" not in run.stderr  # typer frames a parse error in a small box


def test_the_report_holds_each_sentence_and_its_map(planted, tmp_path: Path) -> None:
    out = tmp_path / "review.html"
    run = essence(planted, tmp_path, "report", "--out", str(out), "--shortcuts")
    assert run.returncode == 0, run.stderr
    html = out.read_text()
    section = html.split("<h2>Shortcuts</h2>", 1)[1].split("<h2>", 1)[0]
    assert "flagged images of class &#x27;7&#x27; share unit" in section  # escaped: class names are data
    assert "in the top-left corner" in section and "covering it changes" in section
    assert section.count("data:image/png;base64,") >= 2  # the map on the image, and as a heat map
    plain = essence(planted, tmp_path, "report", "--out", str(tmp_path / "plain.html"))
    assert plain.returncode == 0 and "<h2>Shortcuts</h2>" not in (tmp_path / "plain.html").read_text()


def test_the_report_diagnoses_from_the_stored_activations(planted, tmp_path: Path, monkeypatch) -> None:
    """The report's diagnosis reads the slice's stored z (the layers below it are not run again), and says what a
    diagnosis that runs them says."""
    from essence.core.analyses.diagnosis import verdict

    real, given = verdict.diagnose, []

    def spy(*args, **kwargs):
        given.append(kwargs.get("activations"))
        return real(*args, **kwargs)

    monkeypatch.setattr(verdict, "diagnose", spy)
    stored = essence(planted, tmp_path, "report", "--out", str(tmp_path / "stored.html"))
    assert stored.returncode == 0, stored.stderr
    assert len(given) == 1 and given[0] is not None

    def without(*args, **kwargs):
        return real(*args, **{**kwargs, "activations": None})

    monkeypatch.setattr(verdict, "diagnose", without)
    fresh = essence(planted, tmp_path, "report", "--out", str(tmp_path / "fresh.html"))
    assert fresh.returncode == 0, fresh.stderr

    def diagnosis(name: str) -> str:
        return (tmp_path / name).read_text().split("<h2>Diagnosis</h2>", 1)[1].split("<h2>", 1)[0]

    assert diagnosis("stored.html") == diagnosis("fresh.html")
