"""Round two of the catalogue (issue 15): the inputs a hostile or unlucky user still found, family by family.

Each family is tried on every loader and option that reads it, not only where it was reported: JSON files
(recipe, card, older card) nested 100,000 deep, not UTF-8, holding a 5,000-digit number or values of the wrong
types; state_dicts of sparse, meta or complex tensors or with a header that lies; numbers that overflow
(``--alphas``, ``--blur-sigma``, ``--size`` with the default batch, ``--older-than``, ``ESSENCE_STORE_TIMEOUT``);
a model whose own forward raises; symlink loops (a dataset file, a CSV row, the data root, weights, npz, image,
recipe); FIFOs where data is expected (each would block forever); npz files whose arrays decompress beyond the
bound or whose headers lie; hand-damaged store rows.

For every row: exit status 2, exactly one line ``error: ...`` naming the problem (the row's fragments), no
traceback, no "internal error". Rows run in this process through the CLI's own ``main`` (a fresh interpreter
per row would cost ~2 s each); a row that would block is stopped by an alarm and fails instead of hanging.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import sqlite3
import sys
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from reliability_helpers import images_and_labels, make_workspace

from essence.cli import main

FACTORY = "essence_hostile_models"
FACTORY_SOURCE = """
from collections import OrderedDict

import torch
from torch import nn


def _layers():
    torch.manual_seed(0)
    return OrderedDict(
        conv=nn.Conv2d(3, 4, 3, padding=1), relu=nn.ReLU(), pool=nn.AdaptiveAvgPool2d(2),
        flatten=nn.Flatten(), fc1=nn.Linear(16, 8), relu2=nn.ReLU(), fc2=nn.Linear(8, 3))


def cnn():
    return nn.Sequential(_layers())


class _Boom(nn.Module):
    def forward(self, x):
        raise KeyError("boom from the model's own forward")


def forward_raises():
    model = nn.Sequential(_layers())
    model.add_module("boom", _Boom())
    return model
"""
M = ["--model", f"{FACTORY}:cnn"]
CPU = ["--device", "cpu"]
ROW_SECONDS = 60  # far above any row's need; a row that blocks (a FIFO opened for reading) fails at this


@dataclass(frozen=True)
class Files:
    root: Path
    data: Path  # the data root
    home: Path  # ESSENCE_HOME with one precomputed profile and triage
    npz: str
    f: dict[str, Path] = field(default_factory=dict)

    def __getitem__(self, name: str) -> str:
        return str(self.f[name])


class _Alarm(BaseException):
    """A row that blocks. A BaseException, like KeyboardInterrupt, so that no ``except Exception`` of the code under
    test can catch it and turn a hang into a clean-looking error (a FIFO read in ``explain --image`` once hid so)."""


def _on_alarm(signum: int, frame: object) -> None:
    raise _Alarm(f"still running after {ROW_SECONDS} s: it blocked (a FIFO read?) or never ends")


def cli(files: Files, args: list[str], env: dict[str, str] | None = None) -> tuple[int, str, str]:
    """Run ``essence ARGS`` in this process: (exit status, stdout, stderr)."""
    saved = dict(os.environ)
    os.environ.update({"ESSENCE_HOME": str(files.home), "ESSENCE_DATA_ROOT": str(files.data)})
    os.environ.pop("ESSENCE_DEBUG", None)
    os.environ.update(env or {})
    out, err = io.StringIO(), io.StringIO()
    old_handler = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(ROW_SECONDS)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(args)
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old_handler)
        os.environ.clear()
        os.environ.update(saved)
    return code, out.getvalue(), err.getvalue()


def _weights(root: Path, name: str, state: dict, *, pt: bool = False, card: bytes | None = None) -> Path:
    from safetensors.torch import save_file

    path = root / f"{name}{'.pt' if pt else '.safetensors'}"
    if pt:
        torch.save(state, path)
    else:
        save_file(state, str(path))
    if card is not None:
        (root / f"{name}.card.json").write_bytes(card)
    return path


def _npy_member(shape: tuple[int, ...], payload: bytes) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buf.getvalue() + payload


def _build(root: Path) -> Files:
    ws = make_workspace(root)
    (ws.code / f"{FACTORY}.py").write_text(FACTORY_SOURCE)
    sys.path.insert(0, str(ws.code))
    import importlib

    state = importlib.import_module(FACTORY).cnn().state_dict()
    r, data = ws.root, ws.data_root
    f: dict[str, Path] = {}
    deep = b"[" * 100_000 + b"]" * 100_000

    # JSON: cards and recipes
    f["card_deep"] = _weights(r, "card_deep", state, card=deep)
    f["card_latin1"] = _weights(r, "card_latin1", state, card=b'{"class_names": ["caf\xe9", "b", "c"]}')
    f["card_names_str"] = _weights(r, "card_names_str", state, card=b'{"class_names": "cat"}')
    f["card_names_num"] = _weights(r, "card_names_num", state, card=b'{"class_names": 3}')
    f["card_list"] = _weights(r, "card_list", state, card=b"[1, 2]")
    f["card_size_str"] = _weights(r, "card_size_str", state, card=b'{"input_size": ["a", "b"]}')
    f["card_size_null"] = _weights(r, "card_size_null", state, card=b'{"input_size": [null, null]}')
    f["legacy_deep"] = _weights(r, "legacy_deep", state)
    (r / "legacy_deep.json").write_bytes(deep)
    recipes = {
        "recipe_deep": deep,
        "recipe_latin1": b'{"mode": "RGB\xe9"}',
        "recipe_digits": b'{"size": [1' + b"0" * 5000 + b", 8]}",
        "recipe_blur": b'{"blur_sigma": 1e300}',
        "recipe_list": b"[1, 2]",
        "recipe_size_null": b'{"size": [null, null]}',
    }
    for name, body in recipes.items():
        f[name] = r / f"{name}.json"
        f[name].write_bytes(body)

    # state_dicts no parameter can take
    f["sparse"] = _weights(r, "sparse", {**state, "fc1.weight": state["fc1.weight"].to_sparse()}, pt=True)
    f["meta"] = _weights(r, "meta", {**state, "fc1.weight": torch.empty(8, 16, device="meta")}, pt=True)
    complex_state = {**state, "fc1.weight": state["fc1.weight"].to(torch.complex64)}
    f["complex_pt"] = _weights(r, "complex_pt", complex_state, pt=True)
    f["complex_st"] = _weights(r, "complex_st", complex_state)
    header = json.dumps({"fc1.weight": {"dtype": "F32", "shape": [100000, 100000], "data_offsets": [0, 16]}})
    f["liar_st"] = r / "liar.safetensors"
    f["liar_st"].write_bytes(len(header).to_bytes(8, "little") + header.encode() + b"\0" * 16)

    # symlink loops and FIFOs
    os.symlink(r / "loop_a", r / "loop_b")
    os.symlink(r / "loop_b", r / "loop_a")
    f["loop"] = r / "loop_a"
    f["loop_tree"] = shutil.copytree(ws.folder, data / "loop_tree")
    os.symlink(f["loop_tree"] / "c0" / "x.png", f["loop_tree"] / "c0" / "y.png")
    os.symlink(f["loop_tree"] / "c0" / "y.png", f["loop_tree"] / "c0" / "x.png")
    os.symlink(data / "row_a.png", data / "row_b.png")
    os.symlink(data / "row_b.png", data / "row_a.png")
    f["loop_csv"] = data / "loop.csv"
    f["loop_csv"].write_text("path,label\nrow_a.png,0\ntree/c1/01.png,1\n")
    f["fifo"] = r / "pipe"
    os.mkfifo(f["fifo"])
    os.mkfifo(r / "pipe.pt")
    f["fifo_tree"] = shutil.copytree(ws.folder, data / "fifo_tree")
    os.mkfifo(data / "pipe_in_data")
    os.symlink(data / "pipe_in_data", f["fifo_tree"] / "c0" / "zz.png")
    f["fifo_card"] = _weights(r, "fifo_card", state)
    os.mkfifo(r / "fifo_card.card.json")

    # npz: RGBA channels last, a member whose header lies, arrays past the bound
    images, labels = images_and_labels()
    alpha = np.full(images.shape[:3] + (1,), 255, np.uint8)
    f["rgba"] = data / "rgba.npz"
    np.savez(f["rgba"], images=np.concatenate([images, alpha], -1), labels=labels)
    f["npz_liar"] = data / "liar.npz"
    with zipfile.ZipFile(f["npz_liar"], "w") as z:
        z.writestr("images.npy", _npy_member((1_000_000, 1000, 1000, 3), b"\0" * 100))
        z.writestr("labels.npy", _npy_member((3,), b"\0\1\2"))
    f["npz_big"] = data / "big.npz"
    np.savez_compressed(f["npz_big"], images=np.zeros((64, 64, 64, 3), np.uint8), labels=np.arange(64) % 3)

    # a store with a profile and a triage in it (its rows are damaged per row below)
    files = Files(ws.root, data, ws.home, f"npz:{ws.npz}", f)
    for args in (
        ["precompute", *M, "-d", files.npz, "-l", "fc1", *CPU],
        ["triage", *M, "-d", files.npz, "-l", "fc1", *CPU],
    ):
        code, _, err = cli(files, args)
        assert code == 0, err
    return files


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Files]:
    built = _build(tmp_path_factory.mktemp("hostile"))
    yield built
    with contextlib.suppress(ValueError):
        sys.path.remove(str(built.root / "code"))
    sys.modules.pop(FACTORY, None)


@dataclass(frozen=True)
class Row:
    """One hostile input: the command line, the fragments of its one error line, environment, store damage."""

    id: str
    args: Callable[[Files], list[str]]
    fragment: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    damage: str | None = None  # SQL run on a copy of the store before the command


def _profile(*extra: str) -> Callable[[Files], list[str]]:
    return lambda fs: ["profile", *M, "-d", fs.npz, "-l", "fc1", *CPU, "--no-cache", *extra]


def _stored_profile(fs: Files) -> list[str]:
    return ["profile", *M, "-d", fs.npz, "-l", "fc1", *CPU]  # served from the store


def _weights_row(name: str) -> Callable[[Files], list[str]]:
    return lambda fs: ["profile", *M, "--weights", fs[name], "-d", fs.npz, "-l", "fc1", *CPU, "--no-cache"]


def _recipe_row(name: str) -> Callable[[Files], list[str]]:
    return _lazy_profile("--preprocessing", name)


def _lazy_profile(option: str, name: str) -> Callable[[Files], list[str]]:
    return lambda fs: _profile(option, fs[name])(fs)


def _explain(option: str, name: str) -> Callable[[Files], list[str]]:
    def args(fs: Files) -> list[str]:
        image = fs[name] if option == "--image" else str(fs.data / "tree" / "c0" / "00.png")
        extra = [] if option == "--image" else [option, fs[name]]
        return ["explain", *M, "--image", image, "--class", "0", "-l", "fc1", *CPU, *extra]

    return args


def _data(spec: str, name: str) -> Callable[[Files], list[str]]:
    return lambda fs: ["profile", *M, "-d", f"{spec}:{fs[name]}", "-l", "fc1", *CPU, "--no-cache"]


ROWS = [
    # JSON: nested, not UTF-8, long numbers, wrong types
    Row("card nested 100,000 deep", _weights_row("card_deep"), ("card_deep.card.json", "nested too deeply")),
    Row("card not UTF-8", _weights_row("card_latin1"), ("card_latin1.card.json", "UTF-8")),
    Row("card class_names a string", _weights_row("card_names_str"), ("class_names must be a list",)),
    Row("card class_names a number", _weights_row("card_names_num"), ("class_names must be a list",)),
    Row("card that is a list", _weights_row("card_list"), ("a model card is a JSON object", "got list")),
    Row(
        "card input_size of strings", _explain("--weights", "card_size_str"), ("input_size", "whole numbers")
    ),
    Row("card input_size of nulls", _explain("--weights", "card_size_null"), ("input_size", "whole numbers")),
    Row("recipe nested 100,000 deep", _recipe_row("recipe_deep"), ("recipe_deep.json", "nested too deeply")),
    Row("recipe not UTF-8", _recipe_row("recipe_latin1"), ("recipe_latin1.json", "UTF-8")),
    Row("recipe with a 5,000-digit number", _recipe_row("recipe_digits"), ("preprocessing recipe JSON",)),
    Row("recipe blur of 1e300", _recipe_row("recipe_blur"), ("blur sigma", "above 8192 px")),
    Row("recipe that is a list", _recipe_row("recipe_list"), ("got list",)),
    Row("recipe size of nulls", _recipe_row("recipe_size_null"), ("wrong type",)),
    Row("explain recipe nested deep", _explain("--preprocessing", "recipe_deep"), ("nested too deeply",)),
    # state_dicts
    Row("sparse weights", _weights_row("sparse"), ("'fc1.weight'", "sparse")),
    Row("meta weights", _weights_row("meta"), ("'fc1.weight'", "meta tensor")),
    Row("complex weights (torch.save)", _weights_row("complex_pt"), ("'fc1.weight'", "complex")),
    Row("complex weights (safetensors)", _weights_row("complex_st"), ("'fc1.weight'", "complex")),
    Row("safetensors header of impossible shape", _weights_row("liar_st"), ("not a valid safetensors",)),
    # numbers that overflow
    Row(
        "--alphas 10^20",
        lambda fs: [
            "experts",
            *M,
            "-d",
            fs.npz,
            "-l",
            "fc1",
            "-c",
            "0",
            "--alphas",
            "100000000000000000000",
            *CPU,
        ],
        ("--alphas", "more than any layer has"),
    ),
    Row(
        "--alphas 1e20",
        lambda fs: ["experts", *M, "-d", fs.npz, "-l", "fc1", "-c", "0", "--alphas", "1e20", *CPU],
        ("--alphas", "whole numbers"),
    ),
    Row("--blur-sigma 1e9", _profile("--blur-sigma", "1e9"), ("blur sigma", "above 8192 px")),
    Row("--size 8192 8192, default batch", _profile("--size", "8192", "8192"), ("GiB", "use --batch-size")),
    Row(
        "prune --older-than inf", lambda fs: ["store", "prune", "--older-than", "inf"], ("--older-than inf",)
    ),
    Row(
        "prune --older-than 1e300", lambda fs: ["store", "prune", "--older-than", "1e300"], ("--older-than",)
    ),
    Row(
        "ESSENCE_STORE_TIMEOUT=nan",
        lambda fs: ["store", "info"],
        ("ESSENCE_STORE_TIMEOUT='nan'",),
        env={"ESSENCE_STORE_TIMEOUT": "nan"},
    ),
    Row(
        "ESSENCE_STORE_TIMEOUT=inf",
        lambda fs: ["store", "info"],
        ("ESSENCE_STORE_TIMEOUT='inf'",),
        env={"ESSENCE_STORE_TIMEOUT": "inf"},
    ),
    # the user's model
    Row(
        "model whose own forward raises",
        lambda fs: ["profile", "--model", f"{FACTORY}:forward_raises", "-d", fs.npz, "-l", "fc1", *CPU],
        ("forward raised KeyError", "fix the model"),
    ),
    # symlink loops
    Row("folder holding a symlink loop", _data("folder", "loop_tree"), ("symlink loop",)),
    Row("CSV row naming a symlink loop", _data("csv", "loop_csv"), ("row 1", "symlink loop")),
    Row("npz: a symlink loop", _data("npz", "loop"), ("symlink loop",)),
    Row("--weights a symlink loop", _weights_row("loop"), ("symlink loop",)),
    Row("--preprocessing a symlink loop", _recipe_row("loop"), ("symlink loop",)),
    Row("--image a symlink loop", _explain("--image", "loop"), ("symlink loop",)),
    Row(
        "data root a symlink loop",
        lambda fs: ["profile", *M, "-d", f"folder:{fs.data / 'tree'}", "-l", "fc1", *CPU, "--no-cache"],
        ("symlink loop",),
        env={"ESSENCE_DATA_ROOT": "LOOP"},
    ),
    # FIFOs where data is expected (each would block forever)
    Row("folder holding a link to a FIFO", _data("folder", "fifo_tree"), ("zz.png", "FIFO")),
    Row("npz: a FIFO", _data("npz", "fifo"), ("FIFO",)),
    Row("csv: a FIFO", _data("csv", "fifo"), ("FIFO",)),
    Row("--image a FIFO", _explain("--image", "fifo"), ("FIFO",)),
    Row("--preprocessing a FIFO", _recipe_row("fifo"), ("FIFO",)),
    Row("--weights a FIFO", _weights_row("fifo"), ("FIFO",)),
    Row(
        "--model a FIFO",
        lambda fs: ["profile", "--model", fs["fifo"] + ".pt", "-d", fs.npz, "-l", "fc1", *CPU],
        ("--model", "FIFO"),
    ),
    Row("model card a FIFO", _weights_row("fifo_card"), ("fifo_card.card.json", "FIFO")),
    # npz decompression and lying headers
    Row("npz header that lies about its size", _data("npz", "npz_liar"), ("images.npy", "damaged")),
    # hand-damaged store rows
    Row(
        "store: profile unit_shape not JSON",
        _stored_profile,
        ("damaged row",),
        damage="UPDATE profiles SET unit_shape='{'",
    ),
    Row(
        "store: class_names a number",
        _stored_profile,
        ("damaged row",),
        damage="UPDATE profiles SET class_names='7'",
    ),
    Row(
        "store: profile dtype unknown",
        _stored_profile,
        ("damaged row",),
        damage="UPDATE profiles SET dtype='zz'",
    ),
    Row(
        "store: profile date not a date",
        _stored_profile,
        ("damaged row",),
        damage="UPDATE profiles SET created_at='garbage'",
    ),
    Row(
        "store: run date not a date",
        lambda fs: ["store", "info"],
        ("damaged row",),
        damage="UPDATE runs SET created_at='garbage'",
    ),
    Row(
        "store: matrix shape not JSON",
        lambda fs: ["triage", *M, "-d", fs.npz, "-l", "fc1", *CPU],
        ("damaged row",),
        damage="UPDATE instance_matrices SET shape='x'",
    ),
]


def _home_with(files: Files, damage: str | None, where: Path) -> Path:
    if damage is None:
        return files.home
    home = shutil.copytree(files.home, where)
    with sqlite3.connect(home / "essence.sqlite") as conn:
        conn.execute(damage)
    return home


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_hostile_input_is_one_clear_line(row: Row, files: Files, tmp_path: Path) -> None:
    home = _home_with(files, row.damage, tmp_path / "home")
    env = {k: (files["loop"] if v == "LOOP" else v) for k, v in row.env.items()}
    code, _, err = cli(dataclass_replace(files, home=home), row.args(files), env)
    lines = err.splitlines()
    assert code == 2, (code, err[-1500:])
    assert len(lines) == 1 and lines[0].startswith("error: "), err[-1500:]
    assert "internal error" not in lines[0] and "Traceback" not in err
    for fragment in row.fragment:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"


def dataclass_replace(files: Files, **changes: object) -> Files:
    import dataclasses

    return dataclasses.replace(files, **changes)


def test_the_round_two_catalogue_covers_every_family() -> None:
    ids = " ".join(r.id for r in ROWS)
    for family in (
        "nested",
        "UTF-8",
        "sparse",
        "meta",
        "complex",
        "--alphas",
        "--blur-sigma",
        "--size",
        "--older-than",
        "TIMEOUT",
        "forward raises",
        "symlink loop",
        "FIFO",
        "lies",
        "store:",
    ):
        assert family in ids, family
    assert len({r.id for r in ROWS}) == len(ROWS) >= 45


# ------------------------------------------------------------------------------ inputs that now simply work


def test_rgba_channels_last_npz_is_read_with_alpha_dropped(files: Files, tmp_path: Path) -> None:
    """Item 12: an RGBA N×H×W×4 npz was refused as "8 channels" (its width); it is RGB plus alpha."""
    out = tmp_path / "rgba.json"
    code, _, err = cli(files, _data("npz", "rgba")(files) + ["--json", str(out)])
    assert code == 0, err
    rgb = tmp_path / "rgb.json"
    code, _, err = cli(files, _profile("--json", str(rgb))(files))
    assert code == 0, err
    # the alpha channel is dropped: the same images as the RGB npz, the same profiles
    assert json.loads(out.read_text())["profiles"] == json.loads(rgb.read_text())["profiles"]


def test_an_older_card_nested_deep_is_passed_over_with_a_warning(files: Files) -> None:
    """``W.json`` is only a card when it is one: one nested 100,000 deep is not read as one (it was a crash)."""
    code, _, err = cli(files, _weights_row("legacy_deep")(files))
    assert code == 0, err
    assert "legacy_deep.json is not read as the model card" in err


def test_paths_that_are_not_utf8_are_read_and_written(files: Files, tmp_path: Path) -> None:
    """A class folder and an npz whose names are not UTF-8: loaded, profiled, written to JSON."""
    tree = files.data / "tree"
    odd = Path(os.fsdecode(bytes(files.data) + b"/odd_\xff_tree"))
    if not odd.exists():
        shutil.copytree(tree, odd)
        os.rename(odd / "c0", Path(os.fsdecode(bytes(odd) + b"/c\xff")))
    out = tmp_path / "odd.json"
    names = ["--class-names", "c\udcff,c1,c2"]  # the factory model names no classes: its order is given
    code, _, err = cli(
        files, ["profile", *M, "-d", f"folder:{odd}", "-l", "fc1", *CPU, *names, "--json", str(out)]
    )
    assert code == 0, err
    assert "c\udcff" in json.loads(out.read_text(encoding="utf-8", errors="surrogateescape"))["classes"]


# ----------------------------------------------------------------------------------- npz decompression bound


def test_npz_arrays_beyond_the_bound_are_refused_before_reading(
    files: Files, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 5: a few kB of compressed zeros asking for more than the bound is refused from its headers alone
    (the bound is lowered here to 1 MB; the file holds 786 kB of images and labels in ~1 kB)."""
    from essence.core.base.errors import DataLoadError
    from essence.core.inputs import formats
    from essence.core.inputs.datasets import load_dataset

    assert files.f["npz_big"].stat().st_size < 20_000
    formats.check_npz_sizes(files.f["npz_big"])  # under the real bound
    monkeypatch.setattr(formats, "MAX_NPZ_BYTES", 500_000)
    read: list[str] = []
    monkeypatch.setattr(
        np, "load", lambda *a, **k: read.append("np.load") or pytest.fail("read past the bound")
    )
    with pytest.raises(DataLoadError, match="decompress to over"):
        load_dataset(f"npz:{files.f['npz_big']}", data_root=files.data)
    assert not read
