"""Every analysis, through the command line, on a model saved as a ``torch.export`` program (``.pt2``).

A format is supported when profile, triage, experts, diagnose, compare, explain and report all run on it; this
is the test behind that row of ``docs/formats.md``. TorchScript, which no analysis can hook, is refused with a
one-line error naming the format that works.

Profile and the TorchScript refusal run the console script in a subprocess, as a user starts it; the other
commands run in this process through the same entry point (``essence.cli.main``), which saves a fresh
interpreter and torch's import for each.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from in_process import run_essence
from PIL import Image
from sklearn.datasets import load_digits

ESSENCE = [str(Path(sys.executable).parent / "essence")]
CPU = ["--device", "cpu"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, trained_digits_net) -> dict[str, Path]:
    """``a`` and ``b``: small digits CNNs trained a little (enough for a diagnosis to have something to say)."""
    root = tmp_path_factory.mktemp("formats")
    example = torch.zeros(4, 1, 8, 8)
    out = {}
    for name, seed, steps in (("a", 0, 40), ("b", 1, 80)):
        model = trained_digits_net(seed, steps).eval()
        program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim.DYNAMIC},))
        out[name] = root / f"{name}.pt2"
        torch.export.save(program, str(out[name]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out["script"] = root / "script.pt"
        torch.jit.script(trained_digits_net(0, 0).eval()).save(str(out["script"]))
    digit = load_digits().images[0]
    out["image"] = root / "digit.png"
    Image.fromarray((digit * 16).astype(np.uint8), mode="L").save(out["image"])
    out["recipe"] = root / "recipe.json"
    out["recipe"].write_text(
        json.dumps({"mode": "L", "size": [8, 8], "mean": [0.0], "std": [1.0], "scale": 16.0})
    )
    # The first 600 digits (every class), as the digits recipe reads them: what the analyses run on. The
    # diagnosis' probes grow with the number of images, and no assertion here depends on it.
    digits = load_digits()
    out["digits"] = root / "digits600.npz"
    np.savez(out["digits"], images=digits.images[:600].astype(np.uint8), labels=digits.target[:600])
    out["home"] = root / "home"
    return out


def _digits(f: dict[str, Path]) -> list[str]:
    return ["-d", f"npz:{f['digits']}", "--preprocessing", str(f["recipe"])]


def essence(files: dict[str, Path], *args: str) -> subprocess.CompletedProcess:
    """The console script in a fresh process."""
    env = {**os.environ, "ESSENCE_HOME": str(files["home"])}
    return subprocess.run(
        [*ESSENCE, *args], capture_output=True, text=True, env=env, timeout=600, check=False
    )


def essence_in_process(files: dict[str, Path], *args: str) -> subprocess.CompletedProcess:
    """``essence.cli.main`` in this process, with the same home: what the console script runs."""
    return run_essence(args, {"ESSENCE_HOME": str(files["home"])})


# One analysis as a user starts it; the rest through the same entry point, in this process.
SUBPROCESS = {"profile"}


COMMANDS = {
    "profile": lambda f, out: ["profile", "-m", str(f["a"]), *_digits(f), "-l", "conv1", "--json", out],
    "triage": lambda f, out: ["triage", "-m", str(f["a"]), *_digits(f), "-l", "conv1", "--json", out],
    "experts": lambda f, out: [
        "experts",
        "-m",
        str(f["a"]),
        *_digits(f),
        "-l",
        "conv1",
        "-c",
        "3",
        "--json",
        out,
    ],
    "diagnose": lambda f, out: ["diagnose", "-m", str(f["a"]), *_digits(f), "-l", "conv1", "--json", out],
    "compare": lambda f, out: [
        "compare",
        "-m",
        str(f["a"]),
        "--against",
        str(f["b"]),
        *_digits(f),
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
    "report": lambda f, out: ["report", "-m", str(f["a"]), *_digits(f), "-l", "conv1", "-o", out],
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
@pytest.mark.slow  # every analysis end to end, one in a fresh interpreter
def test_every_analysis_runs_on_an_exported_program(
    files: dict[str, Path], command: str, tmp_path: Path
) -> None:
    out = tmp_path / ("report.html" if command == "report" else f"{command}.json")
    run = essence if command in SUBPROCESS else essence_in_process
    result = run(files, *COMMANDS[command](files, str(out)), *CPU)
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
