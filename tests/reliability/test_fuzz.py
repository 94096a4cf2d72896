"""Fuzzing the loaders and the spec parsers with hypothesis: whatever the input, the only exceptions that may
come out are the project's own (:class:`EssenceError` subclasses), which the CLI and the app turn into one
clear message. Anything else (a ``KeyError`` from deep inside torch, a ``ValueError`` from numpy, a hang on a
label of 10¹²) would reach the user as an internal error.
"""

from __future__ import annotations

import io
import json
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from reliability_helpers import images_and_labels, png_bytes

from essence.core import load_dataset, load_model
from essence.core.base.errors import EssenceError
from essence.core.inputs import models
from essence.core.inputs.data import open_image
from essence.core.inputs.preprocessing import Preprocessing

FUZZ = settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,  # reproducible in CI: the same examples every run
)


def only_essence_errors(fn, *args, **kwargs):
    """Call ``fn``; return its result, or ``None`` if it raised an :class:`EssenceError` (any other escapes)."""
    try:
        return fn(*args, **kwargs)
    except EssenceError as exc:
        assert str(exc).strip(), "an error must say something"
        return None


def _image_files(root: Path) -> list[str]:
    images, _ = images_and_labels(4)
    names = []
    for i, img in enumerate(images):
        (root / f"img{i}.png").write_bytes(png_bytes(img))
        names.append(f"img{i}.png")
    return names


def _use(data) -> None:
    """A loaded dataset must also be usable: its first instances preprocess (or fail as ours)."""
    if data is not None:
        only_essence_errors(data.tensors, np.arange(min(2, len(data))))


# ---------------------------------------------------------------------------------------------------- CSV

csv_cells = st.one_of(
    st.sampled_from(["img0.png", "img1.png", "img2.png", "img3.png", "missing.png", "../img0.png", "/etc/passwd",
                     "path", "label", "", " ", "0", "1", "-1", "cat", "1e9", "99999999999999999999"]),
    st.text(max_size=12),
)  # fmt: skip
csv_rows = st.lists(st.lists(csv_cells, min_size=0, max_size=4), max_size=8)


@FUZZ
@given(rows=csv_rows, sep=st.sampled_from([",", ";", "\t"]), header=st.booleans())
def test_csv_loader(tmp_path_factory: pytest.TempPathFactory, rows, sep, header) -> None:
    root = tmp_path_factory.mktemp("csv")
    _image_files(root)
    lines = (["path,label"] if header else []) + [sep.join(r) for r in rows]
    path = root / "data.csv"
    path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
    _use(only_essence_errors(load_dataset, f"csv:{path}", data_root=root))


@FUZZ
@given(blob=st.binary(max_size=300))
def test_csv_loader_on_raw_bytes(tmp_path_factory: pytest.TempPathFactory, blob: bytes) -> None:
    root = tmp_path_factory.mktemp("csvb")
    _image_files(root)
    path = root / "data.csv"
    path.write_bytes(blob)
    _use(only_essence_errors(load_dataset, f"csv:{path}", data_root=root))


# ---------------------------------------------------------------------------------------------------- npz

dtypes = st.sampled_from(
    ["uint8", "uint16", "int64", "uint64", "float16", "float32", "float64", "bool", "complex64"]
)
shapes = hnp.array_shapes(min_dims=1, max_dims=5, min_side=0, max_side=6)
arrays = st.builds(lambda a: a, dtypes.flatmap(lambda d: hnp.arrays(d, shapes)))
label_arrays = st.one_of(
    arrays,
    hnp.arrays("int64", st.integers(0, 8), elements=st.integers(-3, 10**12)),
    hnp.arrays("U3", st.integers(0, 8)),
)


@FUZZ
@given(images=arrays, labels=label_arrays, names=st.none() | hnp.arrays("U4", st.integers(0, 5)))
@example(images=np.zeros((2, 4, 4, 3), np.uint8), labels=np.array([0, 10**12]), names=None)  # once hung
@example(images=np.zeros((0, 0, 0), np.uint8), labels=np.zeros(0, np.uint8), names=None)  # once TypeError
def test_npz_loader(tmp_path_factory: pytest.TempPathFactory, images, labels, names) -> None:
    path = tmp_path_factory.mktemp("npz") / "d.npz"
    content = {"images": images, "labels": labels}
    if names is not None:
        content["class_names"] = names
    np.savez(path, **content)
    _use(only_essence_errors(load_dataset, f"npz:{path}"))


@FUZZ
@given(blob=st.binary(max_size=400), as_zip=st.booleans())
def test_npz_loader_on_raw_bytes(tmp_path_factory: pytest.TempPathFactory, blob: bytes, as_zip: bool) -> None:
    path = tmp_path_factory.mktemp("npzb") / "d.npz"
    if as_zip:  # a real zip whose members are garbage .npy files
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("images.npy", blob)
            z.writestr("labels.npy", blob[::-1])
        blob = buf.getvalue()
    path.write_bytes(blob)
    _use(only_essence_errors(load_dataset, f"npz:{path}"))


@FUZZ
@given(
    shape=st.lists(st.integers(0, 10**7), min_size=0, max_size=5),
    dtype=st.sampled_from(["|u1", "<f4", "<i8", "<c8", "|b1"]),
    payload=st.integers(0, 300),
    compressed=st.booleans(),
)
def test_npz_headers_of_any_size(
    tmp_path_factory: pytest.TempPathFactory, shape: list[int], dtype: str, payload: int, compressed: bool
) -> None:
    """Members with valid headers declaring any shape over any payload: refused from the header (it lies, or
    asks for more than the bound) or read; never an allocation of what the header asks for."""
    path = tmp_path_factory.mktemp("npzh") / "d.npz"
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": dtype, "fortran_order": False, "shape": tuple(shape)}
    )
    mode = zipfile.ZIP_DEFLATED if compressed else zipfile.ZIP_STORED
    with zipfile.ZipFile(path, "w", mode) as z:
        z.writestr("images.npy", header.getvalue() + b"\x01" * payload)
        z.writestr("labels.npy", header.getvalue() + b"\x00" * payload)
    _use(only_essence_errors(load_dataset, f"npz:{path}"))


# ---------------------------------------------------------------------------------------------------- images


def _valid_image_bytes() -> list[bytes]:
    out = []
    rgb = images_and_labels(1)[0][0]
    for fmt, mode in (("PNG", "RGB"), ("PNG", "L"), ("PNG", "I;16"), ("JPEG", "RGB"), ("BMP", "RGB"),
                      ("GIF", "P"), ("TIFF", "F"), ("WEBP", "RGB"), ("PNG", "RGBA")):  # fmt: skip
        buf = io.BytesIO()
        Image.fromarray(rgb).convert(mode).save(buf, format=fmt)
        out.append(buf.getvalue())
    return out


VALID_IMAGES = _valid_image_bytes()


@st.composite
def mutated_images(draw) -> bytes:
    """A valid image of some format with bytes flipped, cut, or spliced; or random bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    data = bytearray(draw(st.sampled_from(VALID_IMAGES)))
    for _ in range(draw(st.integers(0, 6))):
        i = draw(st.integers(0, len(data) - 1))
        data[i] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        data = data[: draw(st.integers(0, len(data)))]
    return bytes(data)


@FUZZ
@given(data=mutated_images(), mode=st.sampled_from(["RGB", "L"]), size=st.none() | st.just((5, 7)))
def test_open_image_and_preprocess(data: bytes, mode: str, size) -> None:
    img = only_essence_errors(open_image, data)
    if img is not None:
        x = only_essence_errors(Preprocessing(mode=mode, size=size, mean=(0.0,), std=(1.0,)).apply_pil, img)
        if x is not None:
            assert x.ndim == 3 and x.shape[0] == (3 if mode == "RGB" else 1)


@FUZZ
@given(files=st.lists(mutated_images(), min_size=1, max_size=4), skip=st.booleans())
def test_folder_loader(tmp_path_factory: pytest.TempPathFactory, files: list[bytes], skip: bool) -> None:
    root = tmp_path_factory.mktemp("folder")
    for i, data in enumerate(files):
        cls = root / f"class{i % 2}"
        cls.mkdir(exist_ok=True)
        (cls / f"{i}.png").write_bytes(data)
    data = only_essence_errors(
        load_dataset,
        f"folder:{root}",
        Preprocessing(size=(8, 8)),
        on_bad_image="skip" if skip else "error",
        data_root=root,
    )
    _use(data)


# ---------------------------------------------------------------------------------------------------- specs

PREFIXES = ["", "demo:", "torchvision:", "npz:", "csv:", "folder:", "digits", "file:", "s3://", ".", "/", "~"]
spec_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=24
)


class _NoImports:
    """Stands in for ``importlib`` in the loader: a fuzzed ``module:function`` spec must not import (and
    call!) whatever the module names; the loader's handling of a failed import is what is under test."""

    @staticmethod
    def import_module(name: str):
        raise ImportError(f"No module named {name!r}")


@FUZZ
@given(prefix=st.sampled_from(PREFIXES), rest=spec_text, weights=st.none() | spec_text)
def test_model_spec_parser(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, prefix: str, rest: str, weights
) -> None:
    monkeypatch.setattr(models, "importlib", types.SimpleNamespace(import_module=_NoImports.import_module))
    monkeypatch.chdir(tmp_path)  # relative spec paths resolve in an empty folder
    only_essence_errors(load_model, prefix + rest, weights)


@FUZZ
@given(prefix=st.sampled_from(PREFIXES), rest=spec_text)
def test_data_spec_parser(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, prefix: str, rest: str) -> None:
    if prefix == "demo:" and rest in ("train", "val", "test"):
        return  # the real demo: a valid spec, not a fuzz case
    monkeypatch.chdir(tmp_path)
    only_essence_errors(load_dataset, prefix + rest, data_root=tmp_path)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
recipe_keys = st.sampled_from(["mode", "size", "blur_sigma", "mean", "std", "scale", "file_depths", "colour"])


@FUZZ
@given(recipe=st.dictionaries(recipe_keys, json_values, max_size=6) | json_values)
def test_preprocessing_from_dict(recipe) -> None:
    made = only_essence_errors(Preprocessing.from_dict, recipe)
    if made is None:
        return
    # A recipe that was accepted round-trips and applies (small sizes only: a huge size is a valid recipe
    # that would allocate accordingly).
    assert Preprocessing.from_dict(json.loads(json.dumps(made.to_dict()))) == made
    if made.size is None or max(made.size) <= 64:
        x = only_essence_errors(made.apply_array, np.zeros((1, 6, 6, 3), dtype=np.uint8))
        if x is not None:
            assert torch.isfinite(x).all()
