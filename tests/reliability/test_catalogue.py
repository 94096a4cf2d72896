"""The catalogue of bad inputs, end to end through the ``essence`` command line.

Each row is one thing a user can get wrong (or one hostile file). The command runs as a real subprocess with
its own ``ESSENCE_HOME`` holding a store filled by an earlier, successful ``precompute``. For every row:

- exit status 2;
- exactly one line on stderr, ``error: ...``, containing a fragment that names the problem (and, where the
  row says so, the fix); no traceback;
- the store byte-for-byte unchanged (hashes of every file of ``ESSENCE_HOME`` before and after), and still
  passing ``PRAGMA integrity_check``;
- where a row carries a check (a pickle's payload must not run), that too.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import sqlite3
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from reliability_helpers import (
    FACTORY_MODULE,
    PICKLE_PAYLOAD,
    Workspace,
    copy_tree,
    images_and_labels,
    make_workspace,
    png_bytes,
    png_header_bomb,
    run_cli,
    run_main,
    tree_digest,
)

M = ["--model", f"{FACTORY_MODULE}:cnn"]
CPU = ["--device", "cpu"]
# The factory model names no classes; on folders named c0..c2 its output order is given (never guessed).
NAMES = ("--class-names", "c0,c1,c2")


@dataclass(frozen=True)
class Bad:
    """Paths of the hostile and malformed files of the catalogue (all under the workspace)."""

    ws: Workspace
    files: dict[str, Path] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Path:
        return self.files[name]

    @property
    def npz(self) -> str:
        return f"npz:{self.ws.npz}"


def _folder_with(ws: Workspace, name: str, member: str, data: bytes) -> Path:
    """A copy of the workspace's image tree with one extra file ``c0/MEMBER``."""
    folder = copy_tree(ws.folder, ws.data_root / name)
    (folder / "c0" / member).write_bytes(data)
    return folder


def _build_bad_files(ws: Workspace) -> dict[str, Path]:
    root, data = ws.root, ws.data_root
    images, _ = images_and_labels()
    good_png = png_bytes(images[0])
    f: dict[str, Path] = {}

    # images
    f["truncated"] = _folder_with(ws, "truncated", "t.png", good_png[: len(good_png) * 2 // 3])
    f["corrupt"] = _folder_with(ws, "corrupt", "c.png", b"\x89PNG\r\n\x1a\n" + os.urandom(200))
    f["not_image"] = _folder_with(ws, "not_image", "notes.jpg", b"meeting notes, not a picture\n")
    f["bomb"] = _folder_with(ws, "bomb", "bomb.png", png_header_bomb())
    big = np.zeros((16, 16, 3), dtype=np.uint8)
    f["mixed_sizes"] = _folder_with(ws, "mixed_sizes", "big.png", png_bytes(big))
    grey = io.BytesIO()
    Image.fromarray(images[0, :, :, 0]).save(grey, format="PNG")
    f["grey_png"] = root / "grey.png"
    f["grey_png"].write_bytes(grey.getvalue())
    f["bomb_png"] = root / "bomb.png"
    f["bomb_png"].write_bytes(png_header_bomb())

    # paths escaping the data root
    escape = copy_tree(ws.folder, data / "escape")
    os.symlink(ws.outside / "secret.png", escape / "c0" / "link.png")
    f["symlink_tree"] = escape
    linked_dir = copy_tree(ws.folder, data / "linked_dir")
    os.symlink(ws.outside, linked_dir / "c0" / "elsewhere")
    (ws.outside / "more.png").write_bytes(good_png)
    f["symlink_dir"] = linked_dir
    f["csv_dotdot"] = data / "dotdot.csv"
    f["csv_dotdot"].write_text("path,label\ntree/c0/00.png,0\n../outside/secret.png,1\n")
    f["csv_abs"] = data / "abs.csv"
    f["csv_abs"].write_text(f"path,label\ntree/c0/00.png,0\n{ws.outside / 'secret.png'},1\n")
    f["csv_missing"] = data / "missing.csv"
    f["csv_missing"].write_text("path,label\ntree/c0/00.png,0\ntree/c1/nowhere.png,1\n")
    f["csv_binary"] = data / "binary.csv"
    f["csv_binary"].write_bytes(b"\xff\xfe\x00p\x00a\x00t\x00h\x00\n\x80\x81")

    # npz
    f["npz_no_labels"] = data / "no_labels.npz"
    np.savez(f["npz_no_labels"], images=images)
    f["npz_truncated"] = data / "truncated.npz"
    f["npz_truncated"].write_bytes(ws.npz.read_bytes()[:300])
    f["npz_object"] = data / "object.npz"
    np.savez(f["npz_object"], images=np.array([None, 1], dtype=object), labels=np.array([0, 1]))
    f["npz_nan"] = data / "nan.npz"
    np.savez(f["npz_nan"], images=np.full((3, 8, 8, 3), np.nan, np.float32), labels=np.arange(3))
    f["npz_huge_label"] = data / "huge_label.npz"
    np.savez(f["npz_huge_label"], images=images[:3], labels=np.array([0, 1, 10**9]))
    f["npz_channels"] = data / "channels.npz"
    np.savez(f["npz_channels"], images=np.zeros((3, 5, 8, 7), np.uint8), labels=np.arange(3))
    f["npz_four_classes"] = data / "four.npz"
    np.savez(f["npz_four_classes"], images=np.zeros((8, 8, 8, 3), np.uint8), labels=np.arange(8) % 4)
    f["npz_empty_class"] = data / "empty_class.npz"
    np.savez(
        f["npz_empty_class"],
        images=images[:8],
        labels=np.arange(8) % 2,
        class_names=np.array(["0", "1", "2"]),
    )

    # models and weights
    sys.path.insert(0, str(ws.code))
    try:
        import importlib

        factories = importlib.import_module(FACTORY_MODULE)
    finally:
        sys.path.remove(str(ws.code))
    from safetensors.torch import save_file

    state = {k: v.clone() for k, v in factories.cnn().state_dict().items()}
    f["weights_card"] = root / "named.safetensors"
    save_file(state, str(f["weights_card"]))
    (root / "named.json").write_text(json.dumps({"class_names": ["cat", "dog", "bird"]}))
    wrong = dict(state, **{"fc2.weight": torch.zeros(5, 8), "fc2.bias": torch.zeros(5)})
    f["wrong_shapes"] = root / "wrong_shapes.safetensors"
    save_file(wrong, str(f["wrong_shapes"]))
    f["garbage_safetensors"] = root / "garbage.safetensors"
    f["garbage_safetensors"].write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    f["text_pt"] = root / "readme.pt"
    f["text_pt"].write_text("this is a text file with a .pt suffix\n")
    f["fake_torchscript"] = root / "fake_script.pt"
    with zipfile.ZipFile(f["fake_torchscript"], "w") as z:
        z.writestr("model/data.pkl", b"not a pickle")
        z.writestr("model/code/__torch__.py", "def forward(self, x):\n    return x\n")
    # A pickle whose unpickling would run ``touch SENTINEL``: as --weights and as --model.
    f["sentinel"] = root / "PAYLOAD_RAN"
    (root / "payload_module.py").write_text(PICKLE_PAYLOAD.format(sentinel=f["sentinel"]))
    sys.path.insert(0, str(root))
    try:
        import payload_module

        f["evil_weights"] = root / "evil_weights.pt"
        torch.save({"fc1.weight": payload_module.Payload()}, f["evil_weights"])
        f["evil_model"] = root / "evil_model.pt"
        f["evil_model"].write_bytes(pickle.dumps(payload_module.Payload()))
    finally:
        sys.path.remove(str(root))
        sys.modules.pop("payload_module", None)
    (root / "payload_module.py").unlink()  # the payload's class must not even be importable at load time

    # recipes, stores
    f["recipe_mode"] = root / "recipe_mode.json"
    f["recipe_mode"].write_text('{"mode": "CMYK"}')
    f["recipe_grey"] = root / "recipe_grey.json"
    f["recipe_grey"].write_text('{"mode": "L", "mean": [0], "std": [1]}')
    f["recipe_type"] = root / "recipe_type.json"
    f["recipe_type"].write_text('{"size": "large"}')
    f["recipe_json"] = root / "recipe_json.json"
    f["recipe_json"].write_text('{"mode": "RGB",')
    f["not_a_db"] = root / "notes.sqlite"
    f["not_a_db"].write_text("these are my notes, not a database\n" * 20)
    f["foreign_db"] = root / "foreign.sqlite"
    with sqlite3.connect(f["foreign_db"]) as conn:
        conn.execute("CREATE TABLE patients (id INTEGER PRIMARY KEY, name TEXT)")
    return f


@dataclass(frozen=True)
class Case:
    """One bad input: the command line, the fragment its one-line error must contain, extra environment."""

    id: str
    args: Callable[[Bad], list[str]]
    fragment: str | tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    lock_store: bool = False  # hold an exclusive write lock on the store while the command runs
    after: Callable[[Bad], None] | None = None


def _sentinel_absent(bad: Bad) -> None:
    assert not bad["sentinel"].exists(), "the pickle's payload ran"


CASES = [
    # slices and classes
    Case("wrong layer", lambda b: ["profile", *M, "-d", b.npz, "--layer", "fc9", *CPU], ("'fc9'", "closest")),
    Case("no layer, no default", lambda b: ["profile", *M, "-d", b.npz, *CPU], "pass --layer"),
    Case(
        "unknown class name",
        lambda b: ["experts", *M, "-d", b.npz, "-l", "fc1", "-c", "zebra", *CPU],
        ("unknown class 'zebra'", "the classes are"),
    ),
    Case(
        "class index out of range",
        lambda b: ["experts", *M, "-d", b.npz, "-l", "fc1", "-c", "7", *CPU],
        "out of range",
    ),
    Case(
        "labels do not match the outputs",
        lambda b: ["profile", *M, "-d", f"npz:{b['npz_four_classes']}", "-l", "fc1", *CPU],
        ("3 outputs", "4 classes"),
    ),
    Case(
        "label names not the model's classes",
        lambda b: [
            "profile",
            *M,
            "--weights",
            str(b["weights_card"]),
            "-d",
            f"folder:{b.ws.folder}",
            "-l",
            "fc1",
            *CPU,
        ],
        ("'c0'", "not among the model's classes"),
    ),
    Case(
        "empty class",
        lambda b: ["profile", *M, "-d", f"npz:{b['npz_empty_class']}", "-l", "fc1", *CPU],
        ("'2'", "no instances"),
    ),
    Case(
        "model outputs NaN",
        lambda b: ["profile", "--model", f"{FACTORY_MODULE}:nan_cnn", "-d", b.npz, "-l", "fc1", *CPU],
        "NaN",
    ),
    # images
    Case(
        "truncated image",
        lambda b: ["profile", *M, "-d", f"folder:{b['truncated']}", "-l", "fc1", *CPU],
        ("t.png", "--skip-bad-images"),
    ),
    Case(
        "corrupt image",
        lambda b: ["profile", *M, "-d", f"folder:{b['corrupt']}", "-l", "fc1", *CPU],
        ("c.png", "not a readable image"),
    ),
    Case(
        "not an image",
        lambda b: ["profile", *M, "-d", f"folder:{b['not_image']}", "-l", "fc1", *CPU],
        ("notes.jpg", "not a readable image"),
    ),
    Case(
        "decompression bomb in a folder",
        lambda b: ["profile", *M, "-d", f"folder:{b['bomb']}", "-l", "fc1", *CPU],
        ("bomb.png", "remove or replace it"),
    ),
    Case(
        "decompression bomb to explain",
        lambda b: ["explain", *M, "--image", str(b["bomb_png"]), "--class", "0", "-l", "fc1", *CPU],
        "bomb.png",
    ),
    Case(
        "images of mixed sizes",
        lambda b: ["profile", *M, "-d", f"folder:{b['mixed_sizes']}", "-l", "fc1", *CPU, *NAMES],
        ("different sizes", "--size"),
    ),
    Case(
        "greyscale image, RGB model",
        lambda b: ["explain", *M, "--image", str(b["grey_png"]), "--class", "0", "-l", "fc1", *CPU],
        "--convert-mode",
    ),
    Case(
        "greyscale recipe, RGB model",
        lambda b: ["profile", *M, "-d", b.npz, "-l", "fc1", "--preprocessing", str(b["recipe_grey"]), *CPU],
        ("cannot run", "channels"),
    ),
    # paths out of the data root
    Case(
        "folder: symlinked file out of the root",
        lambda b: ["profile", *M, "-d", f"folder:{b['symlink_tree']}", "-l", "fc1", *CPU],
        ("link.png", "outside the data root"),
    ),
    Case(
        "folder: the folder itself outside",
        lambda b: ["profile", *M, "-d", f"folder:{b.ws.outside}", "-l", "fc1", *CPU],
        "outside the data root",
    ),
    Case(
        "csv: ../ path",
        lambda b: ["profile", *M, "-d", f"csv:{b['csv_dotdot']}", "-l", "fc1", *CPU],
        ("row 2", "outside the data root"),
    ),
    Case(
        "csv: absolute path outside",
        lambda b: ["profile", *M, "-d", f"csv:{b['csv_abs']}", "-l", "fc1", *CPU],
        "outside the data root",
    ),
    Case(
        "csv: missing files",
        lambda b: ["profile", *M, "-d", f"csv:{b['csv_missing']}", "-l", "fc1", *CPU],
        ("nowhere.png", "not found"),
    ),
    Case(
        "csv: not UTF-8",
        lambda b: ["profile", *M, "-d", f"csv:{b['csv_binary']}", "-l", "fc1", *CPU],
        "UTF-8",
    ),
    # npz
    Case(
        "npz without labels",
        lambda b: ["profile", *M, "-d", f"npz:{b['npz_no_labels']}", "-l", "fc1", *CPU],
        "'labels'",
    ),
    Case(
        "npz truncated",
        lambda b: ["profile", *M, "-d", f"npz:{b['npz_truncated']}", "-l", "fc1", *CPU],
        "np.savez",
    ),
    Case(
        "npz of pickled objects",
        lambda b: ["profile", *M, "-d", f"npz:{b['npz_object']}", "-l", "fc1", *CPU],
        "allow_pickle",
    ),
    Case(
        "npz with a label of 10⁹",
        lambda b: ["profile", *M, "-d", f"npz:{b['npz_huge_label']}", "-l", "fc1", *CPU],
        ("label 1000000000", "0..K-1"),
    ),
    Case("npz holding NaN", lambda b: ["profile", *M, "-d", f"npz:{b['npz_nan']}", "-l", "fc1", *CPU], "NaN"),
    Case(
        "npz without a channel axis",
        lambda b: ["profile", *M, "-d", f"npz:{b['npz_channels']}", "-l", "fc1", *CPU],
        "channel axis",
    ),
    # models and weights
    Case(
        "weights of the wrong shapes",
        lambda b: ["profile", *M, "--weights", str(b["wrong_shapes"]), "-d", b.npz, "-l", "fc1", *CPU],
        ("fc2.weight (5, 8)", "do not fit"),
    ),
    Case(
        "weights not safetensors",
        lambda b: ["profile", *M, "--weights", str(b["garbage_safetensors"]), "-d", b.npz, "-l", "fc1", *CPU],
        "not a valid safetensors file",
    ),
    Case(
        "pickle payload as weights",
        lambda b: ["profile", *M, "--weights", str(b["evil_weights"]), "-d", b.npz, "-l", "fc1", *CPU],
        ("full pickle", "--trust-pickle"),
        after=_sentinel_absent,
    ),
    Case(
        "pickle payload as model",
        lambda b: ["profile", "--model", str(b["evil_model"]), "-d", b.npz, "-l", "fc1", *CPU],
        ("full pickle", "refused"),
        after=_sentinel_absent,
    ),
    Case(
        "TorchScript file that is not one",
        lambda b: ["profile", "--model", str(b["fake_torchscript"]), "-d", b.npz, "-l", "fc1", *CPU],
        "fake_script.pt",
    ),
    Case(
        "text file as a model",
        lambda b: ["profile", "--model", str(b["text_pt"]), "-d", b.npz, "-l", "fc1", *CPU],
        "readme.pt",
    ),
    Case(
        "factory that is not a module",
        lambda b: ["profile", "--model", f"{FACTORY_MODULE}:not_a_module", "-d", b.npz, "-l", "fc1", *CPU],
        "not a torch.nn.Module",
    ),
    Case(
        "factory that needs arguments",
        lambda b: ["profile", "--model", f"{FACTORY_MODULE}:needs_arguments", "-d", b.npz, "-l", "fc1", *CPU],
        ("needs_arguments", "takes no arguments"),
    ),
    Case(
        "factory that raises",
        lambda b: ["profile", "--model", f"{FACTORY_MODULE}:raises", "-d", b.npz, "-l", "fc1", *CPU],
        "factory failed on purpose",
    ),
    Case(
        "module not importable",
        lambda b: ["profile", "--model", "no_such_pkg_xyz:build", "-d", b.npz, "-l", "fc1", *CPU],
        "PYTHONPATH",
    ),
    Case(
        "torchvision without weights",
        lambda b: ["profile", "--model", "torchvision:resnet18", "-d", b.npz, *CPU],
        ("--weights", "nothing is downloaded"),
    ),
    Case(
        "torchvision unknown architecture",
        lambda b: [
            "profile",
            "--model",
            "torchvision:resnet19",
            "--weights",
            str(b["weights_card"]),
            "-d",
            b.npz,
            *CPU,
        ],
        ("resnet19", "closest"),
    ),
    # specs and options
    Case(
        "unknown data prefix",
        lambda b: ["profile", *M, "-d", "s3:bucket/images", "-l", "fc1", *CPU],
        ("s3:bucket/images", "folder:PATH"),
    ),
    Case(
        "unknown model spec",
        lambda b: ["profile", "--model", "my model!", "-d", b.npz, *CPU],
        "is not understood",
    ),
    Case(
        "unknown demo split", lambda b: ["profile", *M, "-d", "demo:holdout", "-l", "fc1", *CPU], "demo:train"
    ),
    Case(
        "bad --device",
        lambda b: ["profile", *M, "-d", b.npz, "-l", "fc1", "--device", "tpu"],
        ("'tpu'", "auto, cpu or cuda"),
    ),
    Case(
        "--device cuda without CUDA",
        lambda b: ["profile", *M, "-d", b.npz, "-l", "fc1", "--device", "cuda"],
        "--device cpu",
    ),
    Case(
        "bad --batch-size",
        lambda b: ["profile", *M, "-d", b.npz, "-l", "fc1", "--batch-size", "0", *CPU],
        "--batch-size",
    ),
    Case(
        "non-numeric --batch-size",
        lambda b: ["profile", *M, "-d", b.npz, "-l", "fc1", "--batch-size", "lots", *CPU],
        "--batch-size",
    ),
    Case("unknown option", lambda b: ["profile", *M, "-d", b.npz, "--layr", "fc1"], "--layr"),
    Case(
        "bad --granularity",
        lambda b: ["profile", *M, "-d", b.npz, "-l", "fc1", "--granularity", "pixel", *CPU],
        ("'pixel'", "channel or neuron"),
    ),
    Case(
        "recipe with an unknown mode",
        lambda b: ["profile", *M, "-d", b.npz, "-l", "fc1", "--preprocessing", str(b["recipe_mode"]), *CPU],
        "'CMYK'",
    ),
    Case(
        "recipe value of the wrong type",
        lambda b: ["profile", *M, "-d", b.npz, "-l", "fc1", "--preprocessing", str(b["recipe_type"]), *CPU],
        "wrong type",
    ),
    Case(
        "recipe not JSON",
        lambda b: ["profile", *M, "-d", b.npz, "-l", "fc1", "--preprocessing", str(b["recipe_json"]), *CPU],
        "preprocessing recipe JSON",
    ),
    # the store
    Case(
        "store that is not a database",
        lambda b: ["profile", *M, "-d", b.npz, "-l", "conv", "--store", str(b["not_a_db"]), *CPU],
        ("not an SQLite database", "nothing was changed"),
    ),
    Case(
        "store that is another program's database",
        lambda b: ["profile", *M, "-d", b.npz, "-l", "conv", "--store", str(b["foreign_db"]), *CPU],
        ("not an Essence store", "patients"),
    ),
    Case(
        "another program's database as a SQLite URI",
        lambda b: [
            "profile",
            *M,
            "-d",
            b.npz,
            "-l",
            "conv",
            "--store",
            f"sqlite:///file:{b['foreign_db']}?uri=true",
        ],
        ("not an Essence store", "patients"),
    ),
    Case(
        "another program's database as a percent-encoded file URI",
        lambda b: [
            "store",
            "info",
            "--store",
            f"sqlite:///file://localhost{str(b['foreign_db']).replace('.sqlite', '%252Esqlite')}?uri=true",
        ],
        ("not an Essence store", "patients"),
    ),
    Case(
        "SQLite URL options past the checks",
        lambda b: ["store", "info", "--store", f"sqlite:///file:{b['foreign_db']}?uri=true&immutable=1"],
        ("query parameters (immutable)", "sqlite:////abs/path.sqlite"),
    ),
    Case(
        "store URL that does not parse",
        lambda b: ["store", "info", "--store", "post gres://admin:hunter2@db.example/essence"],
        ("not a database URL", "admin:***@"),
    ),
    Case(
        "weights given as a folder",
        lambda b: ["profile", *M, "--weights", str(b.ws.root), "-d", b.npz, "-l", "fc1", *CPU],
        ("is a folder", "it holds", "name the weights file inside it"),
    ),
    Case(
        "store locked by another process",
        lambda b: ["profile", *M, "-d", b.npz, "-l", "conv", *CPU],
        ("locked by another process", "ESSENCE_STORE_TIMEOUT"),
        env={"ESSENCE_STORE_TIMEOUT": "1"},
        lock_store=True,
    ),
    Case(
        "bad ESSENCE_STORE_TIMEOUT",
        lambda b: ["store", "info"],
        "ESSENCE_STORE_TIMEOUT",
        env={"ESSENCE_STORE_TIMEOUT": "soon"},
    ),
]

# Holds SQLite's write lock (BEGIN EXCLUSIVE) on the store until its stdin closes.
LOCKER = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.read()
conn.execute("ROLLBACK")
"""


@pytest.fixture(scope="module")
def bad(tmp_path_factory: pytest.TempPathFactory) -> Bad:
    ws = make_workspace(tmp_path_factory.mktemp("catalogue"))
    bad = Bad(ws, _build_bad_files(ws))
    # A store with one cached profile in it: what a user has after a day's work.
    done = run_cli(ws, "precompute", *M, "-d", bad.npz, "-l", "fc1", *CPU)
    assert done.returncode == 0, done.stderr
    assert (ws.home / "essence.sqlite").is_file()
    return bad


def integrity(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def _store_files(home: Path) -> dict[str, str]:
    # SQLite's shared-memory index is scratch space any reader may touch; the database, its journal and
    # the matrix files are what must not change.
    return {k: v for k, v in tree_digest(home).items() if not k.endswith("-shm")}


@dataclass
class Outcome:
    """What one row's command did."""

    result: subprocess.CompletedProcess[str]
    seconds: float
    home: Path
    before: dict[str, str]
    before_extra: dict[Path, bytes]


def _run_case(case: Case, bad: Bad, home: Path) -> Outcome:
    home = copy_tree(bad.ws.home, home)
    before = _store_files(home)
    before_extra = {p: p.read_bytes() for p in bad.files.values() if p.suffix == ".sqlite"}
    locker = None
    if case.lock_store:
        locker = subprocess.Popen(
            [sys.executable, "-c", LOCKER, str(home / "essence.sqlite")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert locker.stdout is not None and locker.stdout.readline().strip() == "locked"
    try:
        start = time.perf_counter()
        result = run_cli(bad.ws, *case.args(bad), ESSENCE_HOME=str(home), **case.env)
        seconds = time.perf_counter() - start
    finally:
        if locker is not None:
            locker.communicate("", timeout=30)
    return Outcome(result, seconds, home, before, before_extra)


@pytest.fixture(scope="module")
def outcomes(bad: Bad, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Outcome]:
    """Every row run once, a few at a time: each is a fresh interpreter, so starting it dominates the time."""
    homes = tmp_path_factory.mktemp("homes")
    with ThreadPoolExecutor(max_workers=max(2, min(4, os.cpu_count() or 2))) as pool:
        futures = {c.id: pool.submit(_run_case, c, bad, homes / f"h{i}") for i, c in enumerate(CASES)}
        return {k: f.result() for k, f in futures.items()}


# ~2 s of CPU per row (a fresh interpreter importing torch): ~1 min for the table on 2 idle cores.
@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_clear_line_and_changes_nothing(
    case: Case, bad: Bad, outcomes: dict[str, Outcome]
) -> None:
    got = outcomes[case.id]
    result = got.result
    lines = result.stderr.splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr[-2000:]}"
    assert lines[0].startswith("error: "), lines[0]
    assert "Traceback" not in result.stderr and "internal error" not in lines[0]
    fragments = (case.fragment,) if isinstance(case.fragment, str) else case.fragment
    for fragment in fragments:
        assert fragment in lines[0], f"{fragment!r} not in {lines[0]!r}"
    assert _store_files(got.home) == got.before, "the store changed"
    assert integrity(got.home / "essence.sqlite") == "ok"
    for p, data in got.before_extra.items():
        assert p.read_bytes() == data, f"{p} changed"
    if case.lock_store:
        assert got.seconds < 60, "the locked store was waited on far past its timeout"
    if case.after is not None:
        case.after(bad)


def test_the_catalogue_is_large_enough() -> None:
    assert len(CASES) >= 25
    assert len({c.id for c in CASES}) == len(CASES)


# ----------------------------------------------------------------------------------- train mode with dropout


def _profiles_json(bad: Bad, home: Path, model: str, out: Path) -> dict:
    # In this process through the console script's entry point: the model's mode is the command's doing.
    result = run_main(
        bad.ws,
        "profile",
        "--model",
        model,
        "-d",
        bad.npz,
        "-l",
        "fc1",
        *CPU,
        "--json",
        str(out),
        ESSENCE_HOME=str(home),
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(out.read_text())


def test_a_train_mode_model_with_dropout_is_profiled_in_eval_mode(bad: Bad, tmp_path: Path) -> None:
    """Not an error: the factory hands back a model in train mode with dropout; the numbers are eval mode's.

    With dropout active two runs would differ from each other and from the eval-mode model's numbers.
    """
    from essence.core.analyses.profiles import class_profiles
    from essence.core.inputs.data import ImageData
    from essence.core.inputs.preprocessing import Preprocessing

    first = _profiles_json(bad, tmp_path / "h1", f"{FACTORY_MODULE}:dropout_cnn", tmp_path / "a.json")
    second = _profiles_json(bad, tmp_path / "h2", f"{FACTORY_MODULE}:dropout_cnn", tmp_path / "b.json")
    assert first["profiles"] == second["profiles"]

    sys.path.insert(0, str(bad.ws.code))
    try:
        import importlib

        factories = importlib.import_module(FACTORY_MODULE)
        model = factories.dropout_cnn()
    finally:
        sys.path.remove(str(bad.ws.code))
    assert model.training
    images, labels = images_and_labels()
    data = ImageData("npz", labels, ["0", "1", "2"], Preprocessing(), "x", arrays=images)
    with pytest.warns(UserWarning, match="train mode"):
        in_train = class_profiles(model, data, "fc1")
    assert model.training, "the model's own mode is restored"
    expected = class_profiles(model.eval(), data, "fc1")
    torch.testing.assert_close(in_train.mean, expected.mean)
    np.testing.assert_allclose(np.array(first["profiles"]), expected.mean.numpy(), rtol=1e-5, atol=1e-7)
    # and dropout really would have changed the numbers
    torch.manual_seed(1)
    with torch.no_grad():
        x = data.tensors(np.arange(len(data)))
        assert not torch.equal(model.train()(x), model.eval()(x))


@pytest.mark.slow  # a fresh interpreter importing torch
def test_a_symlinked_folder_out_of_the_root_is_not_followed(bad: Bad, tmp_path: Path) -> None:
    """A class folder holding a link to a folder outside the root: the link is not walked, nothing outside read."""
    out = tmp_path / "p.json"
    result = run_cli(
        bad.ws,
        "profile",
        *M,
        "-d",
        f"folder:{bad['symlink_dir']}",
        "-l",
        "fc1",
        *CPU,
        *NAMES,
        "--json",
        str(out),
        ESSENCE_HOME=str(tmp_path / "home"),
    )
    assert result.returncode == 0, result.stderr
    assert sum(json.loads(out.read_text())["counts"]) == 12  # the tree's own images only
