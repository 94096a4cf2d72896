"""Reading one image file for a model: resizing, mode and size checks, unreadable files."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from tiny_models import tiny_cnn
from torch import nn

from essence.core.base.errors import DataLoadError
from essence.core.inputs.data import read_image
from essence.core.inputs.preprocessing import Preprocessing


def test_read_image_resizes_refuses_wrong_mode_and_wrong_size(tmp_path) -> None:
    model = tiny_cnn()
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (20, 16, 3), dtype=np.uint8)).save(rgb)
    grey = tmp_path / "grey.png"
    Image.fromarray(np.zeros((10, 10), np.uint8), "L").save(grey)
    x = read_image(rgb, Preprocessing(size=(10, 10)), model=model)
    assert x.shape == (3, 10, 10)
    with pytest.raises(DataLoadError, match="mode L.*colour"):
        read_image(grey, Preprocessing(size=(10, 10)))
    assert read_image(grey, Preprocessing(size=(10, 10)), convert_mode=True).shape == (3, 10, 10)
    with pytest.raises(DataLoadError, match=r"20×16 px but the model takes 10×10.*size=\(10, 10\)"):
        read_image(rgb, Preprocessing(), expected_size=(10, 10))
    flat = nn.Sequential(nn.Flatten(), nn.Linear(300, 4))
    with pytest.raises(DataLoadError, match="20×16 px, which the model cannot take"):
        read_image(rgb, Preprocessing(), model=flat)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(DataLoadError, match="not a readable image"):
        read_image(bad, Preprocessing())
