"""Core names Python parameters in its errors (``allow_empty=True``); the command line names its flags.

The rewriting itself (:mod:`essence.cli.wording`) is checked on core's wordings; then real errors of core, raised
through ``essence`` (a real process for one of them, the console script's entry point in this process for the
others: a fresh interpreter costs seconds), are read as a user of the command line reads them: one line naming
the flag.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from in_process import run_essence
from PIL import Image

from essence.cli import command_options
from essence.cli.wording import as_typed, in_cli_words

PROFILE = command_options(["profile"])
TRIAGE = command_options(["triage"])
COMPARE = command_options(["compare"])
EXPLAIN = command_options(["explain"])


@pytest.mark.parametrize(
    ("core", "options", "cli"),
    [
        (
            "classes ['2'] have no instances in the data (of 8): add their images, or keep empty classes with "
            "allow_empty=True",
            PROFILE,
            "classes ['2'] have no instances in the data (of 8): add their images, or keep empty classes with "
            "--allow-empty",
        ),
        ("images have different sizes; set a size in the recipe (size=(H, W))", PROFILE, "(--size H W)"),
        ("x.png is 16×16 px: resize it, or give the recipe a size (size=(8, 8))", EXPLAIN, "(--size 8 8)"),
        ("compare layers of the same width (layer_a= / layer_b=)", COMPARE, "(--layer / --layer-b)"),
        ("or allow a partial matching (allow_partial=True)", COMPARE, "(--partial)"),
        ("allow the conversion (convert_mode=True)", EXPLAIN, "(--convert-mode)"),
        ("pass trust_pickle=True only if you trust its source", PROFILE, "pass --trust-pickle only"),
        ("(or pass on_bad_image='skip' to leave such files out)", PROFILE, "(or pass --skip-bad-images to"),
        ("use batch_size=12 (or less)", PROFILE, "use --batch-size 12 (or less)"),
        ("lower the batch (batch_size=12).", PROFILE, "(--batch-size 12)."),
        ("use granularity='feature' or 'token'", PROFILE, "use --granularity feature or token"),
        ("no CUDA device is available: use device='cpu'", PROFILE, "use --device cpu"),
        ("use method='saliency'", EXPLAIN, "use --method saliency"),
        ("vs= names the same class as cls=", EXPLAIN, "--vs names the same class as --class"),
        ("in output order (class_names=['a', 'b'])", PROFILE, "(--class-names a,b)"),
        ("pass weights=FILE.safetensors", PROFILE, "pass --weights FILE.safetensors"),
        ("top_k=40 must lie in 2..16", TRIAGE, "--units 40 must lie"),
        ("top_k=40 must lie in 2..16", EXPLAIN, "--top 40 must lie"),
        (
            "name a module path above it with layer= (essence.core.layer_names(model) lists them)",
            EXPLAIN,
            "with --layer (",
        ),
    ],
)
def test_a_parameter_is_written_as_the_flag_that_sets_it(core: str, options: dict, cli: str) -> None:
    assert cli in in_cli_words(core, options)


@pytest.mark.parametrize(
    ("text", "options"),
    [
        ("a pickle that torch.load(weights_only=True) refuses", PROFILE),  # not an option; and inside a call
        ("class_profiles(data, allow_empty=True)", PROFILE),  # a call's argument is Python
        ("compare layers of the same width (layer_b=)", PROFILE),  # profile has no --layer-b
        ("a DICOM window=40,400 in the data spec", PROFILE),  # part of a data spec, no option
        ("allow_empty=False", PROFILE),  # a switch cannot be typed off
        ("preprocessing=Preprocessing(size=(8, 8))", PROFILE),  # a value that is a call
    ],
)
def test_what_no_option_of_the_command_sets_stays_python(text: str, options: dict) -> None:
    assert in_cli_words(text, options) == text


def test_values_are_typed_as_the_shell_takes_them() -> None:
    assert as_typed("(224, 224)") == "224 224"
    assert as_typed("['normal', 'nodule']") == "normal,nodule"
    assert as_typed("'cpu'") == "cpu"
    assert as_typed("'a b'") == "'a b'"  # spaces: the quotes stay


def test_the_options_are_those_of_the_command_that_ran() -> None:
    assert PROFILE["--allow-empty"] is True and PROFILE["--size"] is False
    assert "--layer-b" in COMPARE and "--layer-b" not in PROFILE
    assert "--layer-b" in command_options([])  # no command named: every command's


# Two tiny models of one architecture whose slice ``fc1`` differs in width; they name no classes.
MODELS = """
from collections import OrderedDict

import torch
from torch import nn


def _net(width):
    torch.manual_seed(0)
    return nn.Sequential(OrderedDict(
        conv=nn.Conv2d(3, 4, 3, padding=1), relu=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(2), flatten=nn.Flatten(),
        fc1=nn.Linear(16, width), relu2=nn.ReLU(), fc2=nn.Linear(width, 3)))


def wide():
    return _net(8)


def narrow():
    return _net(6)
"""
MODULE = "essence_wording_models"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("wording")
    (root / "code").mkdir()
    (root / "code" / f"{MODULE}.py").write_text(MODELS)
    data = root / "data"
    images = np.random.default_rng(0).integers(0, 256, size=(12, 8, 8, 3), dtype=np.uint8)
    data.mkdir()
    np.savez(data / "all.npz", images=images, labels=np.arange(12) % 3)
    # Class '2' is named but has no image.
    np.savez(
        data / "two.npz", images=images[:8], labels=np.arange(8) % 2, class_names=np.array(["0", "1", "2"])
    )
    for i in range(6):
        (data / "tree" / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[i]).save(data / "tree" / f"c{i % 3}" / f"{i}.png")
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(data / "tree" / "c0" / "big.png")
    return root


def essence(workspace: Path, *args: str) -> list[str]:
    """Run ``essence ARGS`` in this process through ``essence.cli.main`` (exit status 2 expected): its stderr."""
    env = {"ESSENCE_HOME": str(workspace / "home"), "ESSENCE_DATA_ROOT": str(workspace / "data")}
    done = run_essence(args, env, code_path=workspace / "code")
    assert done.returncode == 2, done.stderr
    return done.stderr.splitlines()


def essence_process(workspace: Path, *args: str) -> list[str]:
    """Run ``essence ARGS`` in a fresh process (exit status 2 expected); returns its lines on stderr."""
    env = {
        **os.environ,
        "ESSENCE_HOME": str(workspace / "home"),
        "ESSENCE_DATA_ROOT": str(workspace / "data"),
        "PYTHONPATH": os.pathsep.join([str(workspace / "code"), os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "1",
    }
    env.pop("ESSENCE_DEBUG", None)
    done = subprocess.run(
        [sys.executable, "-m", "essence.cli", *args], capture_output=True, text=True, timeout=240, env=env
    )
    assert done.returncode == 2, done.stderr
    return done.stderr.splitlines()


def one_error(lines: list[str]) -> str:
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_an_empty_class_names_allow_empty_as_the_flag(workspace: Path) -> None:
    data = f"npz:{workspace / 'data' / 'two.npz'}"
    line = one_error(
        essence(workspace, "profile", "-m", f"{MODULE}:wide", "-d", data, "-l", "fc1", "--no-cache")
    )
    assert "no instances" in line and "--allow-empty" in line
    assert "allow_empty" not in line


def test_images_of_mixed_sizes_name_the_size_flag(workspace: Path) -> None:
    data = f"folder:{workspace / 'data' / 'tree'}"
    args = (
        "profile",
        "-m",
        f"{MODULE}:wide",
        "-d",
        data,
        "-l",
        "fc1",
        "--class-names",
        "c0,c1,c2",
        "--no-cache",
    )
    line = one_error(essence(workspace, *args))
    assert "different sizes" in line and "--size H W" in line
    assert "size=(" not in line


def test_slices_of_different_widths_name_layer_b_and_partial(workspace: Path) -> None:
    data = f"npz:{workspace / 'data' / 'all.npz'}"
    args = ("compare", "-m", f"{MODULE}:wide", "--against", f"{MODULE}:narrow", "-d", data, "-l", "fc1")
    line = one_error(essence_process(workspace, *args, "--no-diagnose"))
    assert "different widths" in line and "--layer-b" in line and "--partial" in line
    assert "layer_b=" not in line and "allow_partial" not in line
