"""Builders of the small models, datasets and hostile files the reliability tests feed to Essence.

Everything is generated into a temporary folder: a factory module (``essence_rel_models``) put on
``PYTHONPATH``, an npz, an ImageFolder tree, a CSV, weights files; nothing is downloaded.
"""

from __future__ import annotations

import hashlib
import os
import struct
import subprocess
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from forked import run_forked
from in_process import run_essence

FACTORY_MODULE = "essence_rel_models"

# A tiny CNN on 8×8 RGB images with 3 classes; each factory seeds torch so its weights are reproducible
# without a weights file. ``dropout`` returns the model in train mode on purpose; ``nan`` outputs NaN.
FACTORY_SOURCE = """
from collections import OrderedDict

import torch
from torch import nn


def _layers(dropout=False):
    torch.manual_seed(0)
    parts = OrderedDict(
        conv=nn.Conv2d(3, 4, 3, padding=1), relu=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(2),
        flatten=nn.Flatten(), fc1=nn.Linear(16, 8), relu2=nn.ReLU())
    if dropout:
        parts["drop"] = nn.Dropout(0.5)
    parts["fc2"] = nn.Linear(8, 3)
    return parts


def cnn():
    return nn.Sequential(_layers())


def dropout_cnn():
    return nn.Sequential(_layers(dropout=True)).train()


class _Nan(nn.Module):
    def forward(self, x):
        return x * float("nan")


def nan_cnn():
    model = nn.Sequential(_layers())
    model.add_module("poison", _Nan())
    return model


def not_a_module():
    return 42


def needs_arguments(width):
    return nn.Linear(width, 3)


def raises():
    raise RuntimeError("factory failed on purpose")
"""

PICKLE_PAYLOAD = """
import os
import pickle


class Payload:
    def __reduce__(self):
        return (os.system, ("touch {sentinel}",))
"""


@dataclass(frozen=True)
class Workspace:
    """Paths of a prepared workspace (everything under ``root``)."""

    root: Path
    home: Path  # ESSENCE_HOME
    data_root: Path  # ESSENCE_DATA_ROOT
    code: Path  # on PYTHONPATH: the factory module
    npz: Path
    folder: Path
    csv: Path
    outside: Path  # a folder outside the data root, holding a valid image

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("ESSENCE_DEBUG", None)
        env["ESSENCE_HOME"] = str(self.home)
        env["ESSENCE_DATA_ROOT"] = str(self.data_root)
        env["PYTHONPATH"] = os.pathsep.join([str(self.code), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        env["PYTHONHASHSEED"] = "0"
        env["OMP_NUM_THREADS"] = "1"
        env.update(extra)
        return env


def images_and_labels(n: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``uint8 [n, 8, 8, 3]`` images and labels ``0..2`` covering every class."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 8, 8, 3), dtype=np.uint8), np.arange(n, dtype=np.int64) % 3


def png_bytes(array: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def png_header_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose header declares ``width × height`` pixels but carries almost no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def make_workspace(root: Path) -> Workspace:
    """Create the factory module, an npz, a folder tree and a CSV of 12 images of 3 classes under ``root``."""
    home, data_root, code, outside = root / "home", root / "data", root / "code", root / "outside"
    for d in (home, data_root, code, outside):
        d.mkdir(parents=True, exist_ok=True)
    (code / f"{FACTORY_MODULE}.py").write_text(FACTORY_SOURCE)
    images, labels = images_and_labels()
    npz = data_root / "tiny.npz"
    np.savez(npz, images=images, labels=labels)
    folder = data_root / "tree"
    rows = ["path,label"]
    for i, (img, y) in enumerate(zip(images, labels, strict=True)):
        cls_dir = folder / f"c{y}"
        cls_dir.mkdir(parents=True, exist_ok=True)
        (cls_dir / f"{i:02d}.png").write_bytes(png_bytes(img))
        rows.append(f"tree/c{y}/{i:02d}.png,{y}")
    csv = data_root / "tiny.csv"
    csv.write_text("\n".join(rows) + "\n")
    (outside / "secret.png").write_bytes(png_bytes(images[0]))
    return Workspace(root, home, data_root, code, npz, folder, csv, outside)


def copy_tree(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst, symlinks=True)
    return dst


def run_cli(ws: Workspace, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m essence.cli ARGS`` as its own process with the workspace's environment.

    Forked from a server that has imported the CLI once (:mod:`forked`): a real process, its own exit status
    and file descriptors, without an interpreter's start for every row.
    """
    return run_forked(args, ws.env(**env), cwd=ws.root, timeout=timeout)


def run_main(ws: Workspace, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run ``essence ARGS`` in this process through the console script's entry point, ``essence.cli.main``.

    The same environment, working folder and factory module as :func:`run_cli`, without a fresh interpreter
    importing torch (~2 s each): for tests of what a command does, not of the process that runs it.
    """
    return run_essence(args, ws.env(**env), replace_env=True, cwd=ws.root, code_path=ws.code)


def tree_digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under ``folder`` (relative path → digest)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(folder))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out
