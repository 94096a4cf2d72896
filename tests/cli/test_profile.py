"""``essence profile`` end to end: as a subprocess and in-process, JSON layout, values, and bad inputs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from safetensors.torch import save_file

from essence.cli import main
from essence.core import load_dataset, load_model
from essence.core.analyses.profiles import class_profiles

KEYS = {"layer", "granularity", "quantity", "classes", "counts", "unit_shape", "profiles", "stderr", "cached"}


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """resnet18 with random weights (3 classes) as safetensors, and 9 images of 32×32 as an npz."""
    root = tmp_path_factory.mktemp("profile")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(weights=None, num_classes=3)
    save_file(model.state_dict(), str(root / "r18.safetensors"))
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(9, 32, 32, 3), dtype=np.uint8)
    np.savez(root / "data.npz", images=images, labels=np.arange(9) % 3, class_names=np.array(["a", "b", "c"]))
    np.savez(root / "five.npz", images=images, labels=np.arange(9) % 5)
    return {
        "weights": root / "r18.safetensors",
        "data": root / "data.npz",
        "five": root / "five.npz",
        "root": root,
    }


def args(files, *extra: str, data: str | None = None) -> list[str]:
    return [
        "profile",
        "--model",
        "torchvision:resnet18",
        "--weights",
        str(files["weights"]),
        "--data",
        data or f"npz:{files['data']}",
        "--device",
        "cpu",
        "--batch-size",
        "4",
        *extra,
    ]


def direct(files, layer: str, granularity: str):
    loaded = load_model("torchvision:resnet18", files["weights"])
    data = load_dataset(f"npz:{files['data']}", loaded.preprocessing)
    return class_profiles(loaded.module, data, layer, granularity=granularity, device="cpu", batch_size=3)


def check_layout(out: dict, expected) -> None:
    assert set(out) >= KEYS
    assert out["layer"] == expected.layer and out["granularity"] == expected.granularity
    assert out["quantity"] == expected.quantity
    assert out["classes"] == ["a", "b", "c"] and out["counts"] == [3, 3, 3]
    assert out["unit_shape"] == list(expected.unit_shape)
    assert out["cached"] in (False, True)
    np.testing.assert_allclose(np.array(out["profiles"]), expected.mean.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.array(out["stderr"]), expected.stderr.numpy(), rtol=1e-4, atol=1e-7)


@pytest.mark.slow  # a fresh interpreter importing torch
def test_profile_subprocess_writes_the_json_layout(files, tmp_path):
    out_path = tmp_path / "p.json"
    env = {**os.environ, "ESSENCE_HOME": str(tmp_path / "home")}
    run = subprocess.run(
        [sys.executable, "-m", "essence.cli", *args(files, "--layer", "layer3", "--json", str(out_path))],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(out_path.read_text())
    check_layout(out, direct(files, "layer3", "channel"))
    assert len(out["profiles"][0]) == 256


def test_profile_in_process_neuron_granularity_to_stdout(files, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("ESSENCE_HOME", str(tmp_path / "home"))
    main(args(files, "--layer", "layer4.1.conv2", "--granularity", "neuron", "--json", "-"))
    stdout = capsys.readouterr().out
    out = json.loads(stdout[stdout.index("{") :])
    check_layout(out, direct(files, "layer4.1.conv2", "neuron"))
    assert out["unit_shape"] == [512, 1, 1]


@pytest.mark.parametrize(
    "case,message",
    [
        ("layer", "layer3x"),
        ("weights", "does not exist"),
        ("labels", "5 classes"),
        ("granularity", "granularity"),
    ],
)
def test_bad_inputs_exit_2_with_one_line(files, capsys, tmp_path, monkeypatch, case, message):
    monkeypatch.setenv("ESSENCE_HOME", str(tmp_path / "home"))
    argv = {
        "layer": args(files, "--layer", "layer3x"),
        "weights": [
            a if a != str(files["weights"]) else str(tmp_path / "nope.safetensors") for a in args(files)
        ]
        + ["--layer", "layer3"],
        "labels": args(files, "--layer", "layer3", data=f"npz:{files['five']}"),
        "granularity": args(files, "--layer", "layer3", "--granularity", "pixel"),
    }[case]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error:") and message in err[0]
    assert "Traceback" not in err[0]


@pytest.mark.slow  # a fresh interpreter importing torch
def test_bad_layer_through_the_console_gives_no_traceback(files, tmp_path):
    env = {**os.environ, "ESSENCE_HOME": str(tmp_path / "home")}
    run = subprocess.run(
        [sys.executable, "-m", "essence.cli", *args(files, "--layer", "lyer3")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "layer3" in lines[0]
