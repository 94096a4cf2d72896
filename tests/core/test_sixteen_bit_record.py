"""The recipe records what was applied to image files: a folder (or CSV) of 16-bit PNGs is divided by 65535 and
says ``values / 65535``; 8-bit files say ``/ 255``; a folder mixing both says how each was read. The numbers
are those of before the record was made true: 16-bit files mapped onto 0..255 by 255/65535, then / 255."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from essence.core.inputs.datasets import load_dataset
from essence.core.inputs.preprocessing import Preprocessing

RNG = np.random.default_rng(7)
GREY = Preprocessing(mode="L", mean=(0.0,), std=(1.0,))


def _save(path: Path, bits: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if bits == 16:
        pixels = RNG.integers(0, 65536, size=(6, 5)).astype(np.uint16)
        Image.fromarray(pixels).save(path)  # mode I;16
    else:
        Image.fromarray(RNG.integers(0, 256, size=(6, 5)).astype(np.uint8)).save(path)  # mode L


def _folder(root: Path, bits: tuple[int, ...]) -> Path:
    for i, b in enumerate(bits):
        _save(root / str(i % 2) / f"{i:02d}.png", b)
    return root


def _as_read_before(path: Path, channels: int) -> torch.Tensor:
    """A file's inputs as the loader computed them before this fix: 16-bit values × 255/65535, rounded to 8
    bits, then / 255 (8-bit files / 255), channels repeated for RGB."""
    with Image.open(path) as img:
        a = np.asarray(img)
        if img.mode.startswith("I;16"):
            a = np.clip(a.astype(np.float64) / 65535.0 * 255.0, 0, 255).round().astype(np.uint8)
    x = torch.from_numpy(a.astype(np.float32))[None] / 255.0
    return x.expand(channels, -1, -1)


def _all(data) -> torch.Tensor:
    return data.tensors(np.arange(len(data)))


@pytest.mark.parametrize("recipe", [None, GREY], ids=["rgb-default", "grey"])
def test_a_folder_of_16_bit_pngs_records_values_over_65535_with_the_same_numbers(tmp_path, recipe) -> None:
    root = _folder(tmp_path / "f", (16,) * 6)
    with Image.open(root / "0" / "00.png") as img:
        assert img.mode == "I;16"
    data = load_dataset(f"folder:{root}", recipe)
    assert "values / 65535" in data.preprocessing.describe()
    assert "/ 255" not in data.preprocessing.describe()
    assert data.preprocessing.to_dict()["scale"] == 65535
    x = _all(data)
    channels = 3 if recipe is None else 1
    expected = torch.stack([_as_read_before(p, channels) for p in data.paths])
    assert torch.equal(x, expected)
    # The record is a recipe: given back, it applies the same numbers (the scale is in the files' own units).
    again = load_dataset(f"folder:{root}", Preprocessing.from_dict(data.preprocessing.to_dict()))
    assert torch.equal(_all(again), x)
    assert again.preprocessing.to_dict() == data.preprocessing.to_dict()


def test_a_csv_of_16_bit_pngs_records_values_over_65535(tmp_path) -> None:
    for i in range(4):
        _save(tmp_path / f"{i}.png", 16)
    (tmp_path / "d.csv").write_text("path,label\n" + "".join(f"{i}.png,{i % 2}\n" for i in range(4)))
    data = load_dataset(f"csv:{tmp_path / 'd.csv'}", GREY)
    assert "values / 65535" in data.preprocessing.describe()
    assert data.preprocessing.to_dict()["scale"] == 65535
    expected = torch.stack([_as_read_before(p, 1) for p in data.paths])
    assert torch.equal(_all(data), expected)


def test_an_8_bit_folder_still_records_values_over_255(tmp_path) -> None:
    root = _folder(tmp_path / "f", (8,) * 4)
    data = load_dataset(f"folder:{root}", GREY)
    assert "values / 255" in data.preprocessing.describe()
    assert data.preprocessing.to_dict()["scale"] == 255
    assert "file_depths" not in data.preprocessing.to_dict()  # 8-bit records are as they were
    assert torch.equal(_all(data), torch.stack([_as_read_before(p, 1) for p in data.paths]))


def test_a_mixed_folder_records_each_file_by_its_bit_depth(tmp_path) -> None:
    root = _folder(tmp_path / "f", (8, 16, 16, 8, 8, 16))
    data = load_dataset(f"folder:{root}", GREY)
    described = data.preprocessing.describe()
    assert "8-bit files / 255" in described and "16-bit files / 65535" in described
    assert "values / 255" not in described and "values / 65535" not in described
    record = data.preprocessing.to_dict()
    assert record["scale"] is None and record["file_depths"] == [8, 16]
    assert torch.equal(_all(data), torch.stack([_as_read_before(p, 1) for p in data.paths]))
    # Only the 16-bit files of it: one scale for every file again.
    sixteen = load_dataset(f"folder:{_folder(tmp_path / 'g', (16, 16))}", data.preprocessing)
    assert sixteen.preprocessing.scale == 65535.0


def test_an_explicit_scale_is_in_the_files_own_units(tmp_path) -> None:
    """``"scale": 65535`` on 16-bit files is their range (as for uint16 arrays), not 65535 of their 8-bit form."""
    root = _folder(tmp_path / "f", (16,) * 4)
    default = load_dataset(f"folder:{root}", GREY)
    explicit = load_dataset(f"folder:{root}", Preprocessing(mode="L", mean=(0.0,), std=(1.0,), scale=65535))
    assert torch.equal(_all(explicit), _all(default))
    assert float(_all(explicit).max()) > 0.9
