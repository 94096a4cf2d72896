"""``essence precompute``, ``profile`` through the store, and ``store info|export|prune`` end to end."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from essence.cli import main
from essence.storage import head_revision

FACTORY = """
from collections import OrderedDict
from torch import nn

def build():
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(3, 6, 3, padding=1), act=nn.Softplus(), pool=nn.AdaptiveAvgPool2d(2),
        flatten=nn.Flatten(), fc1=nn.Linear(24, 8), relu=nn.ReLU(), fc2=nn.Linear(8, 3)))
"""
MODULE = "essence_store_cli_net"


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    (tmp_path / f"{MODULE}.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("ESSENCE_HOME", str(tmp_path / "home"))
    import importlib

    net = importlib.import_module(MODULE)
    torch.manual_seed(0)
    model = net.build()
    weights = tmp_path / "net.safetensors"
    save_file(model.state_dict(), str(weights))
    with torch.no_grad():
        model.fc2.weight[0, 0] += 1.0
    changed = tmp_path / "changed.safetensors"
    save_file(model.state_dict(), str(changed))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 8, 8, 3), dtype=np.uint8)
    npz = tmp_path / "data.npz"
    np.savez(npz, images=images, labels=np.arange(24) % 3, class_names=np.array(["a", "b", "c"]))
    return {"weights": weights, "changed": changed, "data": npz, "home": tmp_path / "home", "root": tmp_path}


def run(capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["essence", *args])  # what the runs table records as the command
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def _spec(files, weights: str = "weights") -> list[str]:
    return [
        "--model",
        f"{MODULE}:build",
        "--weights",
        str(files[weights]),
        "--data",
        f"npz:{files['data']}",
        "--layer",
        "fc1",
    ]


def test_precompute_then_profile_is_served_from_the_store(files, capsys, monkeypatch):
    code, out, err = run(
        capsys, monkeypatch, "precompute", *_spec(files), "--json", str(files["root"] / "a.json")
    )
    assert code == 0, err
    assert "computed in" in out and "stored" in out
    code, out, err = run(
        capsys, monkeypatch, "profile", *_spec(files), "--json", str(files["root"] / "b.json")
    )
    assert code == 0, err
    assert "served from the store" in out
    a = json.loads((files["root"] / "a.json").read_text())
    b = json.loads((files["root"] / "b.json").read_text())
    assert (a["cached"], b["cached"]) == (False, True)
    assert a["profiles"] == b["profiles"] and a["counts"] == b["counts"] == [8, 8, 8]
    assert (files["home"] / "essence.sqlite").is_file()
    # Changed weights: a different fingerprint, so computed again.
    code, out, _ = run(capsys, monkeypatch, "profile", *_spec(files, "changed"))
    assert code == 0 and "computed in" in out and "served" not in out


def test_no_cache_recomputes_and_leaves_the_store_alone(files, capsys, monkeypatch):
    store = files["root"] / "elsewhere.sqlite"
    assert run(capsys, monkeypatch, "precompute", *_spec(files), "--store", str(store))[0] == 0
    code, out, _ = run(
        capsys, monkeypatch, "profile", *_spec(files), "--store", str(store), "--no-cache", "--json", "-"
    )
    assert code == 0 and "computed in" in out and json.loads(out[out.index("{") :])["cached"] is False
    code, out, _ = run(capsys, monkeypatch, "store", "info", "--store", str(store), "--json", "-")
    facts = json.loads(out[out.index("{") :])
    assert (facts["profiles"], facts["runs"]) == (1, 1)  # only the precompute's
    assert not (files["home"] / "essence.sqlite").exists()  # --store chose the store


def test_store_info_shows_counts_schema_and_runs(files, capsys, monkeypatch):
    assert run(capsys, monkeypatch, "precompute", *_spec(files), "--instances", "--device", "cpu")[0] == 0
    code, out, err = run(capsys, monkeypatch, "store", "info")
    assert code == 0, err
    assert str(files["home"] / "essence.sqlite") in out and f"schema version: {head_revision()}" in out
    assert "profiles: 1 (per-instance matrices: 4)" in out and "verdicts: 0" in out
    assert "essence precompute --model essence_store_cli_net:build" in out and " on cpu@" in out


def test_export_verdicts_and_profiles(files, capsys, monkeypatch):
    from essence.storage import Store

    with Store.open() as store:
        store.record_verdict("ds", 4, "fine", reviewer="ana")
        store.record_verdict("ds", 4, "label error", note="a 'c'", reviewer="ben")
    assert run(capsys, monkeypatch, "precompute", *_spec(files))[0] == 0
    out_csv, out_json, out_dir = (files["root"] / n for n in ("v.csv", "v.json", "profiles"))
    code, out, err = run(
        capsys, monkeypatch, "store", "export", "--verdicts", str(out_csv), "--profiles", str(out_dir)
    )
    assert code == 0, err
    assert "wrote 2 verdicts" in out
    rows = list(csv.DictReader(out_csv.open()))
    assert [(r["verdict"], r["latest"]) for r in rows] == [("fine", "False"), ("label error", "True")]
    (profile_file,) = out_dir.glob("*.json")
    exported = json.loads(profile_file.read_text())
    assert exported["cached"] is True and exported["key"]["layer"] == "fc1" and len(exported["profiles"]) == 3
    assert run(capsys, monkeypatch, "store", "export", "--verdicts", str(out_json))[0] == 0
    assert [v["reviewer"] for v in json.loads(out_json.read_text())["verdicts"]] == ["ana", "ben"]
    code, _, err = run(capsys, monkeypatch, "store", "export", "--verdicts", str(files["root"] / "v.xlsx"))
    assert code == 2 and err.startswith("error: --verdicts") and ".csv or .json" in err


def test_prune_dry_run_then_by_model(files, capsys, monkeypatch):
    from essence.storage import Store

    assert run(capsys, monkeypatch, "precompute", *_spec(files))[0] == 0
    assert run(capsys, monkeypatch, "precompute", *_spec(files, "changed"))[0] == 0
    with Store.open() as store:
        store.record_verdict("ds", 1, "fine")
        fps = [k.model_fp for k in store.profile_keys()]
    code, out, _ = run(capsys, monkeypatch, "store", "prune", "--model", fps[0], "--dry-run")
    assert code == 0 and out.startswith("would remove 1 profiles")
    code, out, _ = run(capsys, monkeypatch, "store", "prune", "--model", fps[0])
    assert code == 0 and out.startswith("removed 1 profiles") and "verdicts are never removed" in out
    with Store.open() as store:
        assert [k.model_fp for k in store.profile_keys()] == fps[1:]
        assert store.info().verdicts == 1


def test_a_bad_store_is_one_line_and_exit_2(files, capsys, monkeypatch):
    bad = files["root"] / "notes.sqlite"
    bad.write_text("not a database")
    code, out, err = run(capsys, monkeypatch, "profile", *_spec(files), "--store", str(bad))
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {bad} is not an SQLite database") and "--store" in err
    assert bad.read_text() == "not a database"


def test_precompute_runs_as_a_module():
    out = subprocess.run(
        [sys.executable, "-m", "essence.cli", "precompute", "--help"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "--instances" in out.stdout and "--store" in out.stdout and "--json" in out.stdout
