"""Round two (issue 15), the app's and the report's side: a class name that killed the process, uploads that
raced, upload names beyond the file system's limits, and report/explain outputs written like every other.
"""

from __future__ import annotations

import io
import os
import resource
import signal
import stat
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from reliability_helpers import (
    FACTORY_MODULE,
    images_and_labels,
    make_workspace,
    png_bytes,
    run_cli,
    run_main,
)

from essence.app import charts, uploads
from essence.core.base.errors import DataLoadError

CPU = ["--device", "cpu"]
CONTROL_NAMES = ["bell\x07", "tab\x0bbed", "esc\x1b[31m"]


# ------------------------------------------------------------------------ item 1: control characters in names


@pytest.mark.slow  # a real process builds the whole report
def test_the_report_survives_class_names_with_control_characters(tmp_path: Path) -> None:
    """The offline SVG renderer aborted the process (exit 134) on ``\\x01``/``\\x0b`` in a label: the report is
    built in a real process, written through a symlink onto an existing 0640 file, and shows each name escaped."""
    ws = make_workspace(tmp_path / "ws")
    images, labels = images_and_labels()
    npz = ws.data_root / "named.npz"
    np.savez(npz, images=images, labels=labels, class_names=np.array(CONTROL_NAMES))
    target = tmp_path / "kept" / "report.html"
    target.parent.mkdir()
    target.write_text("old report\n")
    os.chmod(target, 0o640)
    link = tmp_path / "report-link.html"
    link.symlink_to(target)
    args = ["report", "--model", f"{FACTORY_MODULE}:cnn", "-d", f"npz:{npz}", "-l", "fc1", "--out", str(link)]
    result = run_cli(ws, *args, *CPU, timeout=600)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
    assert link.is_symlink() and link.resolve() == target.resolve(), "the link was replaced"
    assert stat.S_IMODE(target.stat().st_mode) == 0o640, "the report's existing mode was not kept"
    html = target.read_text()
    for shown in ("bell\\x07", "tab\\x0bbed", "esc\\x1b[31m"):
        assert shown in html, shown
    assert not any(ch in html for ch in "\x07\x0b\x1b"), "a control character reached the report"


def test_printable_makes_every_control_character_visible_and_keeps_names_distinct() -> None:
    names = ["a\x01", "a\x02", "a\u202eb", "c\udcff", "plain é"]
    shown = [charts.printable(n) for n in names]
    assert shown == ["a\\x01", "a\\x02", "a\\u202eb", "c\\udcff", "plain é"]
    spec = charts.printable_spec({"data": {"values": [{"class": n} for n in names]}, "title": "t\x0b"})
    assert spec["title"] == "t\\x0b" and spec["data"]["values"][0]["class"] == "a\\x01"


# ---------------------------------------------------------------------------------- item 8: concurrent uploads


def _zip_of_classes() -> bytes:
    images, labels = images_and_labels()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for i, (img, y) in enumerate(zip(images, labels, strict=True)):
            z.writestr(f"mydata/c{y}/{i:02d}.png", png_bytes(img))
    return buf.getvalue()


def test_twenty_sessions_uploading_the_same_zip_at_once_all_succeed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each call extracts into its own temporary folder and renames it into place; before, they shared one
    (``DIGEST.part``) and deleted each other's files (11 of 20 calls failed)."""
    monkeypatch.setenv("ESSENCE_HOME", str(tmp_path / "home"))
    data = _zip_of_classes()
    with ThreadPoolExecutor(max_workers=20) as pool:
        results = list(pool.map(lambda _: _try(uploads.dataset_from_zip, data, "same.zip"), range(20)))
    failures = [r for r in results if isinstance(r, BaseException)]
    assert not failures, f"{len(failures)} of 20 failed: {failures[:2]}"
    assert len({r.spec for r in results}) == 1
    datasets = uploads.uploads_root() / "datasets"
    assert [p.name for p in datasets.iterdir() if p.name.startswith(".")] == [], "temporary folders left"
    with ThreadPoolExecutor(max_workers=20) as pool:
        saved = list(pool.map(lambda _: _try(uploads.save_upload, data, "same.zip", "models"), range(20)))
    assert not [r for r in saved if isinstance(r, BaseException)]
    assert len(set(saved)) == 1 and saved[0].read_bytes() == data
    assert sorted(p.name for p in saved[0].parent.iterdir()) == ["same.zip"]


def _try(fn, *args):  # noqa: ANN001, ANN202 - a thread's result or its exception
    try:
        return fn(*args)
    except BaseException as exc:  # noqa: BLE001 - collected and asserted on
        return exc


# ------------------------------------------------------------------ upload names beyond the file system's limits


def test_upload_names_beyond_the_file_system_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 300-character file name is shortened (suffix kept); a zip member whose name no file system takes is
    refused with a message naming the fix, not an internal ``OSError``."""
    monkeypatch.setenv("ESSENCE_HOME", str(tmp_path / "home"))
    long = "w" * 300 + ".safetensors"
    path = uploads.save_upload(b"weights", long, "models")
    assert path.name.endswith(".safetensors") and len(path.name) <= uploads.MAX_NAME
    assert path.read_bytes() == b"weights"

    images, _ = images_and_labels(2)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("c0/ok.png", png_bytes(images[0]))
        z.writestr("c1/" + "x" * 300 + ".png", png_bytes(images[1]))
    with pytest.raises(DataLoadError, match="longer than the file system allows"):
        uploads.dataset_from_zip(buf.getvalue(), "long.zip")
    with pytest.raises(DataLoadError, match="longer than the file system allows"):
        deep = io.BytesIO()
        with zipfile.ZipFile(deep, "w") as z:
            z.writestr("/".join(["d" * 200] * 30) + "/a.png", png_bytes(images[0]))
        uploads.dataset_from_zip(deep.getvalue(), "deep.zip")


# ---------------------------------------------------------------- explain's panel through the safe writer


def test_explain_writes_its_panel_through_a_symlink_keeping_the_mode(tmp_path: Path) -> None:
    """``essence explain --out`` replaced a symlink with a new file (and reset the mode); it now writes like
    ``--json``: through the link, atomically, keeping the existing file's mode."""
    ws = make_workspace(tmp_path / "ws")
    target = tmp_path / "panels" / "panel.png"
    target.parent.mkdir()
    target.write_bytes(b"old")
    os.chmod(target, 0o640)
    link = tmp_path / "panel-link.png"
    link.symlink_to(target)
    image = ws.folder / "c0" / "00.png"
    args = ["explain", "--model", f"{FACTORY_MODULE}:cnn", "--image", str(image), "--class", "0", "-l", "fc1"]
    result = run_main(ws, *args, *CPU, "--out", str(link))  # the writer is the command's: run in this process
    assert result.returncode == 0, result.stderr[-2000:]
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert target.read_bytes().startswith(b"\x89PNG") and stat.S_IMODE(target.stat().st_mode) == 0o640
    assert [p.name for p in target.parent.iterdir()] == ["panel.png"], "a temporary file was left"


def _file_size_limit(limit: int):  # noqa: ANN202 - a preexec_fn
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow  # a fresh interpreter importing torch
def test_a_failed_panel_write_leaves_the_previous_file_whole(tmp_path: Path) -> None:
    """The panel is written to a temporary file and renamed: when the write fails (here the file-size limit, as a
    full disk would), the previous panel is still there, whole, and no temporary file is left; the old code
    truncated it first and left a broken half."""
    ws = make_workspace(tmp_path / "ws")
    target = tmp_path / "panels" / "panel.png"
    target.parent.mkdir()
    target.write_bytes(b"the previous panel")
    image = ws.folder / "c0" / "00.png"
    args = ["explain", "--model", f"{FACTORY_MODULE}:cnn", "--image", str(image), "--class", "0", "-l", "fc1"]
    result = subprocess.run(
        [sys.executable, "-m", "essence.cli", *args, *CPU, "--out", str(target)],
        env=ws.env(),
        cwd=ws.root,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_file_size_limit(4096),
    )
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert result.stderr.startswith("error: cannot write") and len(result.stderr.splitlines()) == 1
    assert target.read_bytes() == b"the previous panel"
    assert [p.name for p in target.parent.iterdir()] == ["panel.png"], "a temporary file was left"
