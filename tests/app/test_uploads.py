"""Uploads: size limits, safe extraction (no escaping paths, no links, no bombs), datasets found and loaded."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from essence.app import uploads
from essence.app.limits import UPLOAD_LIMIT_MB
from essence.cli.appcmd import streamlit_command
from essence.core.base.errors import DataLoadError, ModelLoadError


def png(value: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def make_zip(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
        for name, target in (links or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            z.writestr(info, target)
    return buf.getvalue()


def test_the_app_limit_and_the_server_limit_are_the_same() -> None:
    cmd = streamlit_command([])
    assert cmd[cmd.index("--server.maxUploadSize") + 1] == str(UPLOAD_LIMIT_MB)
    assert uploads.UPLOAD_LIMIT == UPLOAD_LIMIT_MB * 1024 * 1024
    uploads.check_upload_size(uploads.UPLOAD_LIMIT, "ok.zip")
    with pytest.raises(DataLoadError, match="over the 200 MB upload limit"):
        uploads.check_upload_size(uploads.UPLOAD_LIMIT + 1, "big.zip")


def test_an_imagefolder_zip_becomes_a_folder_dataset(essence_home: Path) -> None:
    data = make_zip(
        {f"mydata/{c}/{i}.png": png(40 * k + i) for k, c in enumerate(["a", "b"]) for i in range(3)}
    )
    choice = uploads.dataset_from_zip(data, "my data.zip")
    assert choice.spec.startswith("folder:") and choice.spec.endswith("mydata")
    assert Path(choice.spec.split(":", 1)[1]).is_relative_to(essence_home)
    assert choice.label == "my_data.zip (uploaded)"


def test_a_csv_zip_becomes_a_csv_dataset(essence_home: Path) -> None:
    members = {f"img/{i}.png": png(i * 20) for i in range(4)}
    members["labels.csv"] = b"path,label\n" + b"".join(
        f"img/{i}.png,{'ab'[i % 2]}\n".encode() for i in range(4)
    )
    choice = uploads.dataset_from_zip(make_zip(members), "d.zip")
    assert choice.spec.startswith("csv:") and choice.spec.endswith("labels.csv")


@pytest.mark.parametrize("name", ["../evil.png", "a/../../evil.png", "/abs/evil.png", "C:/evil.png"])
def test_members_that_climb_out_are_refused(essence_home: Path, name: str) -> None:
    with pytest.raises(DataLoadError, match="outside the archive"):
        uploads.dataset_from_zip(make_zip({name: png(1), "a/x.png": png(2)}), "z.zip")
    assert not (essence_home.parent / "evil.png").exists()


def test_symbolic_links_are_refused(essence_home: Path) -> None:
    data = make_zip({"a/x.png": png(1)}, links={"a/link.png": "/etc/passwd"})
    with pytest.raises(DataLoadError, match="symbolic link"):
        uploads.dataset_from_zip(data, "z.zip")


def test_a_zip_bomb_is_stopped_at_the_extraction_limit(essence_home: Path, monkeypatch) -> None:
    monkeypatch.setattr(uploads, "EXTRACT_LIMIT_MB", 1)
    data = make_zip({"a/big.bin": b"\0" * (3 * 1024 * 1024)})  # compresses to a few kB
    assert len(data) < 64 * 1024
    with pytest.raises(DataLoadError, match="expands to more than 1 MB"):
        uploads.safe_extract(data, essence_home / "x")
    assert not (essence_home / "x").exists() and not (essence_home / "x.part").exists()


def test_not_a_zip_and_no_classes_say_what_to_do(essence_home: Path) -> None:
    with pytest.raises(DataLoadError, match="not a zip"):
        uploads.dataset_from_zip(b"hello", "z.zip")
    with pytest.raises(DataLoadError, match="neither class folders nor a CSV"):
        uploads.dataset_from_zip(make_zip({"x.png": png(1)}), "z.zip")


def test_file_names_are_cleaned() -> None:
    assert uploads.safe_name("../../etc/passwd") == "passwd"
    assert uploads.safe_name("my model (v2).pt") == "my_model__v2_.pt"
    assert uploads.safe_name("..") == "upload"


def test_model_uploads_load_or_say_why(essence_home: Path) -> None:
    import torch
    import torchvision

    recipe = uploads.recipe_of(32, 0.0, "imagenet")
    buf = io.BytesIO()
    torch.save(torchvision.models.get_model("resnet18", weights=None, num_classes=3).state_dict(), buf)
    choice = uploads.model_from_upload(
        buf.getvalue(), "r18.pt", "resnet18", recipe, ["x", "y", "z"], "layer3"
    )
    assert choice.spec == "torchvision:resnet18" and Path(choice.weights).is_file()
    assert choice.class_names == ("x", "y", "z") and choice.default_layer == "layer3"
    with pytest.raises(ModelLoadError, match="do not fit the architecture"):
        uploads.model_from_upload(buf.getvalue(), "r18.pt", "mobilenet_v2", recipe)
    with pytest.raises(ModelLoadError, match="g.pt"):
        uploads.model_from_upload(b"garbage", "g.pt", "resnet18", recipe)
    with pytest.raises(ModelLoadError, match="choose the architecture"):
        uploads.model_from_upload(b"x", "w.safetensors", uploads.TORCHSCRIPT, recipe)
