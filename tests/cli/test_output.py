"""The CLI's output writing in-process: the marker and recipe of every JSON output, clean numbers, safe files."""

from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from essence.cli import common
from essence.cli.output import OUTPUT_MARKER, OUTPUT_VERSION, write_json, write_text_file
from essence.core.base.errors import SpecError
from essence.core.inputs.preprocessing import Preprocessing


def test_an_output_carries_the_marker_and_the_recipe_as_applied(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    recipe = Preprocessing(blur_sigma=2.0)
    write_json(path, {"layer": "fc1"}, preprocessing=recipe)
    out = json.loads(path.read_text())
    assert out[OUTPUT_MARKER] == OUTPUT_VERSION and out["layer"] == "fc1"
    assert out["preprocessing"] == recipe.to_dict()
    write_json(path, {"a": 1}, preprocessing={"a": recipe, "b": None})
    assert json.loads(path.read_text())["preprocessing"] == {"a": recipe.to_dict(), "b": None}
    write_json(path, {"preprocessing": "kept"}, preprocessing=recipe)  # an output's own key wins
    assert json.loads(path.read_text())["preprocessing"] == "kept"


def test_numbers_are_made_json_safe(tmp_path: Path) -> None:
    path = tmp_path / "out.json"
    write_json(
        path, {"x": [math.nan, math.inf, 1.5], "t": torch.tensor([1, 2]), "n": np.float32(0.5), 3: (4,)}
    )
    out = json.loads(path.read_text())
    assert out["x"] == [None, None, 1.5] and out["t"] == [1, 2] and out["n"] == 0.5 and out["3"] == [4]


def test_no_path_writes_nothing_and_a_dash_writes_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    write_json(None, {"a": 1})
    assert capsys.readouterr().out == ""
    write_json(Path("-"), [1, 2])  # a list gets no marker: only objects do
    assert json.loads(capsys.readouterr().out) == [1, 2]


def test_a_file_is_replaced_whole_and_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "kept.txt"
    path.write_text("old\n")
    path.chmod(0o640)
    write_text_file(path, "new\n", "--out")
    assert path.read_text() == "new\n" and stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.txt"]  # no temporary file left beside it
    fresh = tmp_path / "deeper" / "fresh.txt"  # a missing folder is made
    write_text_file(fresh, "x", "--out")
    assert fresh.read_text() == "x"


def test_a_folder_or_an_unwritable_path_is_refused_naming_the_option(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="--json .* is a folder"):
        write_text_file(tmp_path, "x", "--json")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(SpecError, match="cannot write .*--verdicts"):
        write_text_file(blocker / "inside.txt", "x", "--verdicts")


def test_a_symlink_is_followed_and_kept(tmp_path: Path) -> None:
    target = tmp_path / "real.txt"
    target.write_text("old")
    link = tmp_path / "link.txt"
    os.symlink(target, link)
    write_text_file(link, "new", "--out")
    assert os.path.islink(link) and target.read_text() == "new"


def test_common_still_offers_the_writers() -> None:
    assert common.write_json is write_json and common.write_text_file is write_text_file
    assert common.OUTPUT_MARKER == OUTPUT_MARKER
