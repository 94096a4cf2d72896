"""README's "Your own model and data" walkthrough, run as written: every line of its shell block, in order.

The files it names are made here: a greyscale network trained so that its outputs are normal, nodule, opacity
(not the folders' sorted order), exported as ``exports/model.pt2`` and ``exports/model.onnx``; a folder
``chest/`` of PNGs per class; the recipe ``grey.json``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from forked import run_forked
from PIL import Image
from torch import nn

ROOT = Path(__file__).resolve().parents[2]


def _block() -> list[str]:
    text = (ROOT / "README.md").read_text()
    found = re.search(r"<!-- walkthrough -->\s*```bash\n(.*?)```\s*<!-- /walkthrough -->", text, re.S)
    assert found, "README has no walkthrough block"
    return [line for line in found.group(1).splitlines() if line.strip()]


def _prepare(root: Path) -> None:
    rng = np.random.default_rng(3)
    xs, ys = [], []
    for cls, name in enumerate(["normal", "nodule", "opacity"]):
        (root / "chest" / name).mkdir(parents=True)
        for i in range(12):
            img = rng.normal(60, 12, (12, 12))
            if cls == 1:
                img[4:7, 4:7] += 150
            elif cls == 2:
                img[6:, :] += 90
            img = np.clip(img, 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / "chest" / name / f"{i}.png")
            xs.append(img)
            ys.append(cls)
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
    )  # fmt: skip
    x = torch.tensor(np.stack(xs), dtype=torch.float32).unsqueeze(1) / 255
    y = torch.tensor(ys)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    for _ in range(120):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        opt.step()
    net.eval()
    (root / "exports").mkdir()
    program = torch.export.export(net, (x[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, str(root / "exports" / "model.pt2"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net, (x[:1],), str(root / "exports" / "model.onnx"), dynamo=False,
            input_names=["x"], dynamic_axes={"x": {0: "batch"}},
        )  # fmt: skip
    (root / "grey.json").write_text(json.dumps({"mode": "L", "mean": [0.0], "std": [1.0]}))


@pytest.mark.slow
def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _prepare(tmp_path)
    finally:
        torch.set_num_threads(threads)
    env = dict(os.environ) | {"ESSENCE_HOME": str(tmp_path / "home"), "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}
    env.pop("ESSENCE_DEBUG", None)
    lines = _block()
    assert len(lines) == 4 and all(line.startswith("essence ") for line in lines)
    for line in lines:
        args = shlex.split(line)[1:]
        result = run_forked(args, env, cwd=tmp_path, timeout=300)  # each its own process (:mod:`forked`)
        assert result.returncode == 0, (line, result.stderr[-1500:])
    card = json.loads((tmp_path / "exports" / "model.card.json").read_text())
    assert card["class_names"] == ["normal", "nodule", "opacity"] and card["default_layer"] == "2"
    diagnosis = json.loads((tmp_path / "diagnosis.json").read_text())
    assert diagnosis["class_source"] == "card"
    assert [c["name"] for c in diagnosis["classes"]] == ["normal", "nodule", "opacity"]
