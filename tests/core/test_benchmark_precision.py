"""Every verdict carries its measured precision on the held-out planted-defect benchmark.

The shipped table (``core/analyses/diagnosis/benchmark_precision.json``) is recomputed here from the committed
results files, so its numbers are measured, not typed; the truth of each call follows
``benchmarks/planted/precision.py``; the table ships with the package; a diagnosis attaches its rows.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import torch
from torch import nn

from benchmarks.planted import precision as planted
from essence.core import diagnose
from essence.core.analyses.diagnosis import benchmark

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "planted" / "results"


def test_the_shipped_table_is_recomputed_from_the_committed_results() -> None:
    shipped = benchmark.precision_table()
    assert shipped is not None
    # The full held-out grid (both generators, three architectures, three seeds, with training data); the
    # earlier reduced runs beside it are kept for the docs and are not read.
    assert shipped["half"] == "heldout" and shipped["results"] == ["heldout.json"]
    recomputed = planted.precision_table([RESULTS / name for name in shipped["results"]])
    assert recomputed == shipped
    assert set(shipped["verdicts"]) == set(planted.KINDS)
    cases = json.loads((RESULTS / "heldout.json").read_text())["cases"]
    assert shipped["grid"]["cases"] == sum(1 for c in cases if "diagnosis" in c)
    assert shipped["grid"]["archs"] == ["cnn", "resnet", "vit"] and shipped["grid"]["seeds"] == [0, 1, 2]
    # Audits of classes other than the planted one are not recorded: the table counts them, and the docs say how
    # far the step row could move (docs/analyses.md, "how often each verdict is right").
    assert 0 <= shipped["unrecorded_audits"] <= shipped["verdicts"]["not learned"]["count"]
    assert shipped["training_data"] is True
    # A development file given with it is read and left out: the same table.
    assert planted.precision_table([RESULTS / "heldout.json", RESULTS / "dev-reduced.json"])["verdicts"] == (
        shipped["verdicts"]
    )


def _case(verdicts: list[str], half: str = "heldout", **planted_class: object) -> dict:
    diagnosis: dict = {"verdicts": verdicts}
    diagnosis.update(planted_class)
    return {"half": half, "rule": "last", "seed": 0, "arch": "cnn", "generator": "digits", "variant": "v",
            "diagnosis": diagnosis}  # fmt: skip


def test_the_truth_of_each_call(tmp_path: Path) -> None:
    cases = [
        # Nothing planted for the diagnosis: "ok" right, anything else wrong.
        _case(["ok", "drowning experts", "ok"]),
        # The planted class (index 1) took the plant: its expected verdict is right; the others should be ok.
        _case(
            ["ok", "not learned", "not read out"],
            expected="not learned",
            verdict="not learned",
            effective=True,
            steps_named=["Gaussian blur σ=1 px"],
            expected_step="Gaussian blur",
        ),  # fmt: skip
        # A plant that did not take: "ok" is right for the planted class.
        _case(["ok", "ok"], expected="drowning experts", verdict="ok", effective=False, steps_named=[]),
        # A step named where the cause is no preprocessing step: wrong.
        _case(
            ["not learned", "ok"],
            expected="not read out",
            verdict="not learned",
            effective=True,
            steps_named=["resize to 8×8"],
        ),  # fmt: skip
        # The development half never counts.
        _case(["drowning experts"], half="dev"),
    ]
    path = tmp_path / "r.json"
    path.write_text(json.dumps({"meta": {"date": "2026-01-01"}, "cases": cases}))
    table = planted.precision_table([path])
    rows = {k: (v["right"], v["count"]) for k, v in table["verdicts"].items()}
    assert rows == {
        "ok": (6, 6),
        "drowning experts": (0, 1),
        "not read out": (0, 1),
        "not learned": (1, 2),
        "lossy step named": (1, 2),
    }
    assert table["grid"]["cases"] == 4 and table["date"] == "2026-01-01"
    assert table["unrecorded_audits"] == 0  # the only "not learned" calls are on planted classes
    extra = _case(["not learned", "ok"])
    assert planted.unrecorded_audits(extra) == 1
    assert "| not learned | 2 | 1 | 0.50 |" in planted.render(table)


def test_the_table_ships_with_the_package() -> None:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert benchmark.TABLE in data["essence.core.analyses.diagnosis"]
    assert (ROOT / "core" / "analyses" / "diagnosis" / benchmark.TABLE).is_file()


def test_every_verdict_carries_its_row() -> None:
    _ = torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.randn(90, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
        model[2].bias[2] -= 3.0
    d = diagnose(model, (x, y), "1", device="cpu")
    table = benchmark.precision_table()
    for c in d.classes:
        row = table["verdicts"][c.diagnosis]
        assert c.benchmark_precision == {
            "precision": row["right"] / row["count"], "right": row["right"], "count": row["count"],
            "half": "heldout", "training_data": table["training_data"],
        }  # fmt: skip
        assert c.step_benchmark_precision is None  # no step named here
    js = d.to_json()
    assert js["classes"][2]["benchmark_precision"]["count"] == table["verdicts"]["not read out"]["count"]
    assert js["benchmark"]["half"] == "heldout" and "verdicts" not in js["benchmark"]
    nro = table["verdicts"]["not read out"]
    assert d.classes[2].diagnosis == "not read out"
    measured = " (measured with training data)" if table["training_data"] else ""
    assert benchmark.said("not read out", d.classes[2].benchmark_precision) == (
        f"not read out — right in {nro['right']} of {nro['count']} such calls on the held-out benchmark{measured}"
    )
    assert benchmark.said("ok", None) == ""


def test_the_readme_quotes_the_shipped_table() -> None:
    """Every "<verdict> — right in R of N" (or "<verdict>" was right in R of N) the README quotes is the table's."""
    table = benchmark.precision_table()
    assert table is not None
    text = " ".join((ROOT / "README.md").read_text(encoding="utf-8").split())
    kinds = "|".join(sorted(planted.KINDS, key=len, reverse=True))
    quoted = re.findall(rf'"?({kinds})"?(?: —| was) right in (\d+) of (\d+)', text)
    assert quoted, "the README quotes no verdict's benchmark precision"
    for kind, right, count in quoted:
        row = table["verdicts"][kind]
        assert (int(right), int(count)) == (row["right"], row["count"]), kind
