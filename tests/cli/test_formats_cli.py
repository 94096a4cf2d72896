"""Every analysis, through the console script, on a model saved as a ``torch.export`` program (``.pt2``).

A format is supported when profile, triage, experts, diagnose, compare, explain and report all run on it; this
is the test behind that row of ``docs/formats.md``. TorchScript, which no analysis can hook, is refused with a
one-line error naming the format that works.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits
from torch import nn

ESSENCE = [str(Path(sys.executable).parent / "essence")]
CPU = ["--device", "cpu"]


def _digits_net(seed: int, steps: int) -> nn.Sequential:
    """A small digits CNN, trained a little (enough for a diagnosis to have something to say)."""
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0  # the digits recipe: scale 16
    y = torch.tensor(d.target)
    torch.manual_seed(seed)
    model = nn.Sequential(
        OrderedDict(
            conv1=nn.Conv2d(1, 8, 3, padding=1),
            relu1=nn.ReLU(),
            pool1=nn.MaxPool2d(2),
            flatten=nn.Flatten(),
            fc1=nn.Linear(128, 32),
            relu3=nn.ReLU(),
            fc2=nn.Linear(32, 10),
        )
    )
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        idx = torch.randint(0, len(y), (64,))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("formats")
    example = torch.zeros(4, 1, 8, 8)
    out = {}
    for name, seed, steps in (("a", 0, 40), ("b", 1, 80)):
        model = _digits_net(seed, steps)
        program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
        out[name] = root / f"{name}.pt2"
        torch.export.save(program, str(out[name]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["script"] = root / "script.pt"
        torch.jit.script(_digits_net(0, 0)).save(str(out["script"]))
    digit = load_digits().images[0]
    out["image"] = root / "digit.png"
    Image.fromarray((digit * 16).astype(np.uint8), mode="L").save(out["image"])
    out["recipe"] = root / "recipe.json"
    out["recipe"].write_text(
        json.dumps({"mode": "L", "size": [8, 8], "mean": [0.0], "std": [1.0], "scale": 16.0})
    )
    out["home"] = root / "home"
    return out


def essence(files: dict[str, Path], *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "ESSENCE_HOME": str(files["home"])}
    return subprocess.run(
        [*ESSENCE, *args], capture_output=True, text=True, env=env, timeout=600, check=False
    )


COMMANDS = {
    "profile": lambda f, out: ["profile", "-m", str(f["a"]), "-d", "digits", "-l", "conv1", "--json", out],
    "triage": lambda f, out: ["triage", "-m", str(f["a"]), "-d", "digits", "-l", "conv1", "--json", out],
    "experts": lambda f, out: [
        "experts",
        "-m",
        str(f["a"]),
        "-d",
        "digits",
        "-l",
        "conv1",
        "-c",
        "3",
        "--json",
        out,
    ],
    "diagnose": lambda f, out: ["diagnose", "-m", str(f["a"]), "-d", "digits", "-l", "conv1", "--json", out],
    "compare": lambda f, out: [
        "compare",
        "-m",
        str(f["a"]),
        "--against",
        str(f["b"]),
        "-d",
        "digits",
        "-l",
        "conv1",
        "--json",
        out,
    ],
    "explain": lambda f, out: [
        "explain",
        "-m",
        str(f["a"]),
        "--image",
        str(f["image"]),
        "--class",
        "0",
        "-l",
        "conv1",
        "--preprocessing",
        str(f["recipe"]),
        "--json",
        out,
    ],
    "report": lambda f, out: ["report", "-m", str(f["a"]), "-d", "digits", "-l", "conv1", "-o", out],
}
KEYS = {
    "profile": "profiles",
    "triage": "scores",
    "experts": "recall",
    "diagnose": "classes",
    "compare": "classes",
    "explain": "layer",
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_analysis_runs_on_an_exported_program(
    files: dict[str, Path], command: str, tmp_path: Path
) -> None:
    out = tmp_path / ("report.html" if command == "report" else f"{command}.json")
    result = essence(files, *COMMANDS[command](files, str(out)), *CPU)
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.is_file() and out.stat().st_size > 0
    if command == "report":
        assert "conv1" in out.read_text()
        return
    body = json.loads(out.read_text())
    assert body[KEYS[command]], body
    if command == "profile":
        assert len(body["profiles"]) == 10 and len(body["profiles"][0]) == 8  # 8 channels of conv1


def test_torchscript_is_refused_in_one_line(files: dict[str, Path]) -> None:
    result = essence(files, "profile", "-m", str(files["script"]), "-d", "digits", "-l", "conv1", *CPU)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "TorchScript" in lines[0] and ".pt2" in lines[0], result.stderr
