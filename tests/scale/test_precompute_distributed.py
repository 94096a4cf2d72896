"""``essence precompute --distributed``: the store gets the single-process profiles, or nothing at all."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from essence.cli import main

FACTORY = """
import os
from collections import OrderedDict

import torch
from torch import nn


class Fault(nn.Module):
    # Dies in rank 1 on a real batch (the loader's 2-image compatibility check passes).
    def forward(self, x):
        if os.environ.get("RANK") == "1" and os.environ.get("SCALE_NET_CRASH") and len(x) > 2:
            os._exit(3)
        return x


def build():
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        fault=Fault(), conv=nn.Conv2d(3, 6, 3, padding=1), act=nn.Softplus(), pool=nn.AdaptiveAvgPool2d(2),
        flatten=nn.Flatten(), fc1=nn.Linear(24, 8), relu=nn.ReLU(), fc2=nn.Linear(8, 3)))
"""
MODULE = "essence_scale_cli_net"


@pytest.fixture
def files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    (tmp_path / f"{MODULE}.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", str(tmp_path))  # the processes import the factory too
    monkeypatch.setenv("ESSENCE_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    rng = np.random.default_rng(0)
    npz = tmp_path / "data.npz"
    images = rng.integers(0, 256, (25, 8, 8, 3), dtype=np.uint8)
    np.savez(npz, images=images, labels=np.arange(25) % 3, class_names=np.array(["a", "b", "c"]))
    return {"data": npz, "root": tmp_path, "store": tmp_path / "home" / "essence.sqlite"}


def run(capsys, monkeypatch, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["essence", *args])
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def spec(files, layer: str = "fc1") -> list[str]:
    return [
        "--model",
        f"{MODULE}:build",
        "--data",
        f"npz:{files['data']}",
        "--layer",
        layer,
        "--device",
        "cpu",
    ]


def store_state(path: Path) -> tuple[bytes, dict]:
    from essence.storage import Store

    with Store.open(path) as s:
        facts = s.info()
    return path.read_bytes(), {"profiles": facts.profiles, "runs": facts.runs}


@pytest.mark.slow
def test_distributed_precompute_stores_the_single_process_profiles(files, capsys, monkeypatch):
    shard_json, single_json = files["root"] / "d.json", files["root"] / "s.json"
    code, out, err = run(
        capsys,
        monkeypatch,
        "precompute",
        *spec(files),
        "--distributed",
        "--nproc",
        "2",
        "--json",
        str(shard_json),
    )
    assert code == 0, err
    assert "computed in" in out and "stored" in out and "2 processes" in out
    code, _, err = run(capsys, monkeypatch, "profile", *spec(files), "--no-cache", "--json", str(single_json))
    assert code == 0, err
    d, s = json.loads(shard_json.read_text()), json.loads(single_json.read_text())
    assert d["counts"] == s["counts"] == [9, 8, 8]
    np.testing.assert_allclose(np.array(d["profiles"]), np.array(s["profiles"]), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(np.array(d["stderr"]), np.array(s["stderr"]), rtol=1e-6, atol=1e-9)
    # What rank 0 stored is what a later single-process question is served.
    code, out, _ = run(capsys, monkeypatch, "profile", *spec(files), "--json", str(single_json))
    assert code == 0 and "served from the store" in out
    np.testing.assert_allclose(
        np.array(json.loads(single_json.read_text())["profiles"]), np.array(d["profiles"]), rtol=1e-6
    )


@pytest.mark.slow
def test_a_crashed_rank_leaves_the_store_untouched(files, capsys, monkeypatch):
    code, _, err = run(capsys, monkeypatch, "precompute", *spec(files, "conv"))  # something already stored
    assert code == 0, err
    before = store_state(files["store"])
    monkeypatch.setenv("SCALE_NET_CRASH", "1")
    code, out, err = run(capsys, monkeypatch, "precompute", *spec(files), "--distributed", "--nproc", "2")
    assert code != 0
    lines = err.strip().splitlines()
    assert lines == ["error: process 1 of 2: stopped with exit code 3 (nothing was stored)"]
    assert store_state(files["store"]) == before  # same bytes, same rows


def test_instances_cannot_be_sharded(files, capsys, monkeypatch):
    code, _, err = run(capsys, monkeypatch, "precompute", *spec(files), "--distributed", "--instances")
    assert code == 2
    assert err.startswith("error: --instances cannot be sharded") and err.count("\n") == 1
