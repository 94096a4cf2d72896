"""Model arguments that load files, names that are not UTF-8, the app's shutdown, and a FIFO without a reader.

What these prove (see docs/reliability.md):

- A ``timm:``/``monai:`` spec argument that downloads or reads files (``pretrained``, ``checkpoint_path``,
  ``pretrained_cfg_overlay``...), or that is not the network class's own constructor parameter, is refused by
  name in one line before the library is handed it: through the API and through the CLI (exit status 2).
- A class folder whose name is not valid UTF-8 is exported to CSV and Parquet as backslash escapes.
- ``essence app`` stopped by SIGTERM or SIGINT stops its Streamlit server and every process under it, says so
  in one line, and leaves the port free.
- ``--export`` to a FIFO that no program reads ends with one line instead of blocking forever.
"""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import inspect
import io
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from reliability_helpers import FACTORY_MODULE, Workspace, make_workspace, run_main

from essence.core import load_model
from essence.core.base.errors import ModelLoadError, SpecError

timm = pytest.importorskip("timm", reason="the timm extra is part of dev")
monai_nets = pytest.importorskip("monai.networks.nets", reason="the monai extra is part of dev")

CPU = ["--device", "cpu"]
LINUX = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc and uses FIFOs")


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return make_workspace(tmp_path_factory.mktemp("process_and_args"))


def one_error_line(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    lines = result.stderr.splitlines()
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr[-2000:]}"
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr, lines[0]
    return lines[0]


# ------------------------------------------------------------------------------------- library model arguments


@pytest.fixture(scope="module")
def timm_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from safetensors.torch import save_file

    torch.manual_seed(0)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=3, in_chans=1)
    path = tmp_path_factory.mktemp("zoo") / "net.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(path))
    return path


# spec → the argument the one-line refusal must name
REFUSED = {
    "timm:test_resnet(checkpoint_path='/etc/shadow')": "checkpoint_path",
    "timm:test_resnet(pretrained=True)": "pretrained",
    "timm:test_resnet(pretrained_cfg={'url': 'https://example.org/w.pth'})": "pretrained_cfg",
    "timm:test_resnet(pretrained_cfg_overlay={'file': '/etc/shadow'})": "pretrained_cfg_overlay",
    "timm:test_resnet(cache_dir='cache')": "cache_dir",
    "timm:test_resnet(features_only=True)": "features_only",  # not ResNet's own parameter
    "timm:test_resnet(global_pool='/etc/shadow')": "global_pool",  # a path as a value
    "monai:DenseNet121(pretrained=True)": "pretrained",
    "monai:DenseNet121(progress=True)": "progress",
    "monai:DenseNet121(spatial_dims=2, no_such=1)": "no_such",
    "monai:TorchVisionFCModel(weights='IMAGENET1K_V1')": "weights",
}


@pytest.mark.parametrize("spec", list(REFUSED))
def test_a_loading_or_foreign_argument_is_refused_by_name_before_anything_is_built(
    spec: str, timm_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    handed: list[dict] = []  # every set of arguments a library was handed

    real_create = timm.create_model

    def create_model(arch: str, **kwargs: object) -> torch.nn.Module:
        handed.append(kwargs)
        return real_create(arch, **kwargs)

    monkeypatch.setattr(timm, "create_model", create_model)
    for name in ("DenseNet121", "TorchVisionFCModel"):
        real = getattr(monai_nets, name)

        class Recording(real):  # type: ignore[misc, valid-type]
            def __init__(self, **kwargs: object) -> None:
                handed.append(kwargs)
                if kwargs.get("pretrained") or kwargs.get("progress") or kwargs.get("weights"):
                    raise RuntimeError("would download weights")
                super().__init__(**kwargs)

        Recording.__name__, Recording.__signature__ = name, inspect.signature(real)  # type: ignore[attr-defined]
        monkeypatch.setattr(monai_nets, name, Recording)

    with pytest.raises(SpecError) as caught:
        load_model(spec, timm_weights)
    message = str(caught.value)
    assert "\n" not in message and REFUSED[spec] in message, message
    assert not any(REFUSED[spec] in kwargs for kwargs in handed), handed
    assert not any(kwargs.get("pretrained") for kwargs in handed), handed


def test_allowed_arguments_still_build_and_pretrained_stays_false(
    timm_weights: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = load_model("timm:test_resnet(drop_rate=0.1, drop_path_rate=0.05)", timm_weights)
    assert model.module.drop_rate == 0.1
    handed: list[dict] = []
    real = monai_nets.DenseNet121

    class Recording(real):  # type: ignore[misc, valid-type]
        def __init__(self, **kwargs: object) -> None:
            handed.append(kwargs)
            super().__init__(**kwargs)

    Recording.__signature__ = inspect.signature(real)  # type: ignore[attr-defined]
    monkeypatch.setattr(monai_nets, "DenseNet121", Recording)
    with pytest.raises(ModelLoadError, match="do not fit"):  # timm's weights, but built first: the probe ran
        load_model("monai:DenseNet121(init_features=8, growth_rate=8)", timm_weights)
    assert handed and all(kwargs["pretrained"] is False for kwargs in handed), handed


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("monai:DenseNet121(pretrained=True)", "pretrained"),
        ("timm:resnet18(checkpoint_path='/etc/shadow')", "checkpoint_path"),
        ("timm:resnet18(pretrained_cfg_overlay={'file': '/etc/shadow'})", "pretrained_cfg_overlay"),
    ],
)
def test_the_cli_refuses_a_loading_argument_in_one_line(ws: Workspace, spec: str, named: str) -> None:
    # In this process through the console script's entry point: the refusal is the command's, not the process's.
    result = run_main(ws, "profile", "--model", spec, "--data", "digits", "--layer", "layer1", *CPU)
    line = one_error_line(result)
    assert f"the argument {named} downloads or reads files" in line and "--weights" in line, line


# ------------------------------------------------------------------------------------- names that are not UTF-8


@LINUX
@pytest.mark.slow  # a fresh interpreter importing torch
def test_a_class_folder_named_in_another_encoding_exports_to_csv_and_parquet(
    ws: Workspace, tmp_path: Path
) -> None:
    import pyarrow.parquet as pq
    from safetensors.torch import save_file

    tree = tmp_path / "data" / "tree"
    for i, name in enumerate((b"c0", b"c\xff1", b"c2")):
        folder = os.fsencode(tree) + b"/" + name
        os.makedirs(os.fsencode(tree), exist_ok=True)
        os.mkdir(folder)
        for image in sorted((ws.folder / f"c{i}").iterdir()):
            with open(folder + b"/" + os.fsencode(image.name), "wb") as f:
                f.write(image.read_bytes())
    # The model's card names its classes in output order (a folder's own order is never guessed).
    factory = importlib.util.spec_from_file_location("factory", ws.code / f"{FACTORY_MODULE}.py")
    module = importlib.util.module_from_spec(factory)  # type: ignore[arg-type]
    factory.loader.exec_module(module)  # type: ignore[union-attr]
    weights = tmp_path / "cnn.safetensors"
    save_file({k: v.contiguous() for k, v in module.cnn().state_dict().items()}, str(weights))
    names = ["c0", os.fsdecode(b"c\xff1"), "c2"]  # as Python reads the folders' names
    (tmp_path / "cnn.card.json").write_text(json.dumps({"class_names": names}))
    out = tmp_path / "out"
    result = subprocess.run(
        [sys.executable, "-m", "essence.cli", "triage", "--model", f"{FACTORY_MODULE}:cnn", "--weights",
         str(weights), "--data", f"folder:{tree}", "--layer", "fc1", *CPU,
         "--export", str(out / "t.csv"), "--export", str(out / "t.parquet")],
        env=ws.env(ESSENCE_DATA_ROOT=str(tmp_path / "data"), ESSENCE_HOME=str(tmp_path / "home")),
        cwd=ws.root, capture_output=True, text=True, errors="backslashreplace", timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    rows = list(csv.DictReader(io.StringIO((out / "t.csv").read_bytes().decode("utf-8"))))  # strict UTF-8
    assert {r["label_name"] for r in rows} == {"c0", "c\\xff1", "c2"}
    assert sum("c\\xff1/" in r["source"] for r in rows) == 4
    table = pq.read_table(out / "t.parquet").to_pydict()
    assert set(table["label_name"]) == {"c0", "c\\xff1", "c2"}
    assert sum("c\\xff1/" in s for s in table["source"]) == 4


# ---------------------------------------------------------------------------------------------- the app stops


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _live_processes() -> dict[int, tuple[int, int, bytes]]:
    """pid → (parent pid, process group, start time) of every process that is not a zombie."""
    table = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = Path(f"/proc/{name}/stat").read_bytes().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != b"Z":
                table[int(name)] = (int(fields[1]), int(fields[2]), fields[19])
    return table


def _descendants(pid: int) -> dict[int, bytes]:
    """Every live process under ``pid``, with its start time (so that a reused pid is not taken for it)."""
    table, found, parents = _live_processes(), {}, {pid}
    while parents:
        parents = {p for p, (ppid, _, _) in table.items() if ppid in parents} - set(found)
        found.update({p: table[p][2] for p in parents})
    return found


def _still_running(processes: dict[int, bytes]) -> dict[int, bytes]:
    table = _live_processes()
    return {p: start for p, start in processes.items() if p in table and table[p][2] == start}


@LINUX
@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_the_app_stopped_by_a_signal_stops_its_server_and_frees_the_port(
    ws: Workspace, tmp_path: Path, sig: signal.Signals
) -> None:
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "essence.cli", "app", "--server.port", str(port), "--server.headless", "true"],
        env=ws.env(ESSENCE_HOME=str(tmp_path / "home")), cwd=ws.root, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
    children: dict[int, bytes] = {}
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[1][-2000:]
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=5) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the app did not come up"
            time.sleep(0.3)
        children = _descendants(proc.pid)
        assert children, "the app runs Streamlit in a process of its own"
        os.kill(proc.pid, sig)  # the essence process only, as a service manager or `kill` does
        try:
            _, err = proc.communicate(timeout=9)
        except subprocess.TimeoutExpired:
            pytest.fail(f"essence app was still running 9 s after {sig.name}")
        assert proc.returncode == 128 + sig, (proc.returncode, err[-2000:])
        stopped = [line for line in err.splitlines() if line.startswith(f"stopped the app on {sig.name}")]
        assert len(stopped) == 1, err[-2000:]
        if sig == signal.SIGINT:
            assert err.splitlines()[-1] == "error: interrupted; nothing half-written was kept", err[-2000:]
        left = _still_running(children)
        assert not left, f"processes left running: {sorted(left)}"
        group = [p for p, (_, pgrp, _) in _live_processes().items() if pgrp == proc.pid]
        assert not group, f"processes left in the app's process group: {group}"
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, "the port still answers"
    finally:
        for pid in _still_running({**children, **_descendants(proc.pid)}):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()


# ----------------------------------------------------------------------------------- a FIFO without a reader


@LINUX
@pytest.mark.timeout(180)  # a hang fails the test (pytest-timeout) instead of blocking the suite
def test_export_to_a_fifo_without_a_reader_is_one_line_not_a_hang(ws: Workspace, tmp_path: Path) -> None:
    # In this process through the console script's entry point (run_main): what --export does with a FIFO is the
    # command's doing.
    fifo = tmp_path / "triage.csv"
    os.mkfifo(fifo)
    args = ["triage", "--model", f"{FACTORY_MODULE}:cnn", "--data", f"npz:{ws.npz}", "--layer", "fc1", *CPU]
    result = run_main(ws, *args, "--export", str(fifo), ESSENCE_HOME=str(tmp_path / "home"))
    line = one_error_line(result)
    assert "FIFO" in line and "reader" in line and str(fifo) in line, line
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)

    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # with a reader, it is written through
    try:
        result = run_main(ws, *args, "--export", str(fifo), ESSENCE_HOME=str(tmp_path / "home"))
        assert result.returncode == 0, result.stderr[-2000:]
        got = b""
        while chunk := os.read(reader, 65536):
            got += chunk
    finally:
        os.close(reader)
    assert got.startswith(b"rank,index,label,") and stat.S_ISFIFO(os.lstat(fifo).st_mode)
