"""Faults a hostile or unlucky user finds at the command line (issue 15, round two).

What these prove (see docs/reliability.md):

- Ctrl-C (SIGINT) while computing, and during start-up, ends with exit status 130 and one line on stderr;
  nothing half-written is left (no JSON file, no temporary file, no profile row).
- ``--json`` writes through a FIFO and through a symlink (to a device or a file) instead of replacing what is
  at the path, keeps an existing file's mode, refuses a folder, and a closed stdout loses no result.
- A malformed store URL never echoes its password; a full disk is called full.
- Warnings from the user's model or from numpy never add lines before the one error line.
- Class names reaching the terminal cannot carry escape sequences.
- ``essence app`` exits non-zero when Streamlit fails and warns when bound beyond loopback.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from reliability_helpers import FACTORY_MODULE, Workspace, make_workspace, run_cli, run_main

M = ["--model", f"{FACTORY_MODULE}:cnn"]
CPU = ["--device", "cpu"]
SLOW_MODULE = "essence_rel_slow"

# A model that announces (through a marker file) that it is computing, and is slow enough to be interrupted
# there; one that warns before returning NaN; both built on the helpers' tiny CNN.
SLOW_SOURCE = f"""
import os
import time
import warnings

import numpy as np
import torch
from torch import nn

from {FACTORY_MODULE} import cnn


class _Slow(nn.Module):
    def forward(self, x):
        marker = os.environ.get("ESSENCE_TEST_MARKER")
        if marker and not os.path.exists(marker):
            open(marker, "w").close()
        time.sleep(0.05)
        return x


class _Noisy(nn.Module):
    def forward(self, x):
        warnings.warn("the user's model says something on the way", UserWarning)
        np.array([1e300]).astype(np.float32)  # numpy: overflow encountered in cast
        return x * float("nan")


def slow_cnn():
    model = cnn()
    model.add_module("slow", _Slow())
    return model


def noisy_nan_cnn():
    model = cnn()
    model.add_module("noisy", _Noisy())
    return model
"""


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    ws = make_workspace(tmp_path_factory.mktemp("cli_faults"))
    (ws.code / f"{SLOW_MODULE}.py").write_text(SLOW_SOURCE)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(1024, 8, 8, 3), dtype=np.uint8)
    np.savez(ws.data_root / "many.npz", images=images, labels=np.arange(1024) % 3)
    return ws


def one_error_line(result: subprocess.CompletedProcess[str], code: int = 2) -> str:
    lines = result.stderr.splitlines()
    assert result.returncode == code, (result.returncode, result.stderr[-2000:])
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{result.stderr[-2000:]}"
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr, lines[0]
    return lines[0]


def profile_rows(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT count(*) FROM profiles").fetchone()[0]


# ----------------------------------------------------------------------------------------------- interrupts


@pytest.mark.slow
def test_ctrl_c_while_computing_exits_130_with_one_line_and_writes_nothing(
    ws: Workspace, tmp_path: Path
) -> None:
    home, marker, out = tmp_path / "home", tmp_path / "computing", tmp_path / "out" / "p.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "essence.cli", "profile", "--model", f"{SLOW_MODULE}:slow_cnn",
         "-d", f"npz:{ws.data_root / 'many.npz'}", "-l", "fc1", "--batch-size", "8", "--json", str(out), *CPU],
        env=ws.env(ESSENCE_HOME=str(home), ESSENCE_TEST_MARKER=str(marker)),
        cwd=ws.root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), "the computation never started"
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, "", err)
    line = one_error_line(result, 130)
    assert "interrupted" in line
    assert not out.exists() and not (out.parent.exists() and any(out.parent.iterdir())), "half-written output"
    db = home / "essence.sqlite"
    if db.exists():
        assert profile_rows(db) == 0, "an interrupted run left a profile"


# Start-up is the import of essence.cli (torch and friends): well over a second, so a SIGINT sent right after
# the interpreter says it is about to import lands inside it.
# A command whose start-up imports PyTorch (``--help`` no longer does: it is done in a tenth of a second).
STARTUP = """
import sys
sys.argv = ["essence", "layers", "--model", "demo:blurred"]
print("importing", flush=True)
from essence.cli import main
sys.exit(main())
"""


@pytest.mark.slow
def test_ctrl_c_during_start_up_is_one_line_and_exit_130(ws: Workspace) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", STARTUP], env=ws.env(), cwd=ws.root,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stdout.readline().strip() == "importing"
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert "interrupted" in one_error_line(result, 130)


# --------------------------------------------------------------------------------------------- --json paths
# What --json does with the path it is given is the command's own doing: these run it in this process through
# the console script's entry point (run_main), except where the process's own descriptor is the point.


def test_json_writes_through_a_fifo_and_leaves_it_a_fifo(ws: Workspace, tmp_path: Path) -> None:
    fifo = tmp_path / "results.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader is there, so the writer does not block
    try:
        result = run_main(ws, "store", "info", "--json", str(fifo), ESSENCE_HOME=str(tmp_path / "home"))
        assert result.returncode == 0, result.stderr
        assert stat.S_ISFIFO(os.lstat(fifo).st_mode), "the FIFO was replaced by a file"
        chunks = []
        while True:
            try:
                chunk = os.read(reader, 65536)
            except BlockingIOError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(reader)
    assert "schema_version" in json.loads(b"".join(chunks))


def test_json_through_a_symlink_writes_its_target_and_keeps_the_link(ws: Workspace, tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    to_null = tmp_path / "null-link"
    os.symlink("/dev/null", to_null)
    result = run_main(ws, "store", "info", "--json", str(to_null), ESSENCE_HOME=home)
    assert result.returncode == 0, result.stderr
    assert os.path.islink(to_null) and os.readlink(to_null) == "/dev/null"
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)

    to_stdout = tmp_path / "stdout-link"  # what /dev/stdout is: a link to the process's own descriptor
    os.symlink("/proc/self/fd/1", to_stdout)
    result = run_cli(ws, "store", "info", "--json", str(to_stdout), ESSENCE_HOME=home)
    assert result.returncode == 0, result.stderr
    assert '"schema_version"' in result.stdout and os.path.islink(to_stdout)

    target = tmp_path / "real.json"
    target.write_text("old\n")
    link = tmp_path / "link.json"
    os.symlink(target, link)
    result = run_main(ws, "store", "info", "--json", str(link), ESSENCE_HOME=home)
    assert result.returncode == 0, result.stderr
    assert os.path.islink(link), "the symlink was replaced by a file"
    assert "schema_version" in json.loads(target.read_text())


def test_json_keeps_an_existing_files_mode_and_refuses_a_folder(ws: Workspace, tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    shared = tmp_path / "shared.json"
    shared.write_text("{}\n")
    shared.chmod(0o644)
    result = run_main(ws, "store", "info", "--json", str(shared), ESSENCE_HOME=home)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(shared.stat().st_mode) == 0o644
    assert "schema_version" in json.loads(shared.read_text())

    fresh = tmp_path / "fresh.json"
    result = run_main(ws, "store", "info", "--json", str(fresh), ESSENCE_HOME=home)
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~_umask()

    folder = tmp_path / "a-folder"
    folder.mkdir()
    line = one_error_line(run_main(ws, "store", "info", "--json", str(folder), ESSENCE_HOME=home))
    assert "a-folder" in line and "folder" in line.split("a-folder", 1)[1]
    assert folder.is_dir() and not any(folder.iterdir())


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@pytest.mark.slow  # a fresh interpreter importing torch
def test_a_closed_stdout_loses_no_json_and_prints_no_traceback(ws: Workspace, tmp_path: Path) -> None:
    """``essence profile --json F | head -0``: the reader is gone before the summary is printed."""
    out = tmp_path / "p.json"
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run(
            [sys.executable, "-m", "essence.cli", "profile", *M, "-d", f"npz:{ws.npz}", "-l", "fc1", *CPU,
             "--json", str(out)],
            env=ws.env(ESSENCE_HOME=str(tmp_path / "home")), cwd=ws.root, stdout=write_end,
            stderr=subprocess.PIPE, text=True, timeout=120,
        )  # fmt: skip
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    assert result.returncode == 0, result.stderr
    assert sum(json.loads(out.read_text())["counts"]) == 12


# ------------------------------------------------------------------------------------------------- the store


def test_a_malformed_store_url_never_echoes_its_password(ws: Workspace) -> None:
    for url in ("post gres://admin:hunter2@db.example/essence", "postgresql://admin:hunter2@db:port/essence"):
        result = run_main(ws, "store", "info", "--store", url)  # the command's wording, in this process
        line = one_error_line(result)
        assert "hunter2" not in result.stderr + result.stdout, line
        assert "--store" in line or "URL" in line


def _limit_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow  # a fresh interpreter importing torch
def test_a_full_disk_during_a_database_write_is_called_full(ws: Workspace, tmp_path: Path) -> None:
    """SQLite reports a short write as ``disk I/O error``; the user is told the disk (or a limit) is full."""
    result = subprocess.run(
        [sys.executable, "-m", "essence.cli", "store", "info"],
        env=ws.env(ESSENCE_HOME=str(tmp_path / "home")), cwd=ws.root, capture_output=True, text=True,
        timeout=120, preexec_fn=_limit_file_size(16 * 1024),
    )  # fmt: skip
    line = one_error_line(result)
    assert "full" in line.lower() and "free space" in line, line


# ------------------------------------------------------------------------------------------- one line, data


@pytest.mark.slow  # a fresh interpreter importing torch
def test_warnings_before_an_error_do_not_add_lines(ws: Workspace, tmp_path: Path) -> None:
    result = run_cli(
        ws, "profile", "--model", f"{SLOW_MODULE}:noisy_nan_cnn", "-d", f"npz:{ws.npz}", "-l", "fc1", *CPU,
        ESSENCE_HOME=str(tmp_path / "home"), PYTHONWARNINGS="always",
    )  # fmt: skip
    assert "NaN" in one_error_line(result)


HOSTILE_NAMES = ["\x1b]0;owned\x07cat", "\x1b[2J\x1b[Hdog", "bird\rzzz\x9b31m"]


@pytest.mark.slow  # a fresh interpreter importing torch
def test_class_names_with_escape_sequences_are_shown_not_obeyed(ws: Workspace, tmp_path: Path) -> None:
    from safetensors.torch import save_file

    sys.path.insert(0, str(ws.code))
    try:
        import importlib

        factories = importlib.import_module(FACTORY_MODULE)
    finally:
        sys.path.remove(str(ws.code))
    weights = tmp_path / "named.safetensors"
    save_file({k: v.clone() for k, v in factories.cnn().state_dict().items()}, str(weights))
    weights.with_suffix(".json").write_text(json.dumps({"class_names": HOSTILE_NAMES}))
    result = run_cli(
        ws, "profile", *M, "--weights", str(weights), "-d", f"npz:{ws.npz}", "-l", "fc1", *CPU,
        ESSENCE_HOME=str(tmp_path / "home"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    for bad in ("\x1b", "\x07", "\r", "\x9b"):
        assert bad not in result.stdout + result.stderr, f"{bad!r} reached the terminal"
    assert "\\x1b]0;owned\\x07cat" in result.stdout  # shown, escaped


# ------------------------------------------------------------------------------------------------- the app


@pytest.mark.slow  # two fresh interpreters importing Streamlit
def test_the_app_exits_non_zero_when_streamlit_fails_and_warns_beyond_loopback(ws: Workspace) -> None:
    result = run_cli(ws, "app", "--server.address", "0.0.0.0", "--server.port", "not-a-port", timeout=120)
    assert result.returncode != 0, result.stderr[-2000:]
    warnings_ = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings_) == 1 and "0.0.0.0" in warnings_[0] and "SECURITY.md" in warnings_[0], result.stderr
    quiet = run_cli(ws, "app", "--server.port", "not-a-port", timeout=120)
    assert quiet.returncode != 0
    assert not any(line.startswith("warning: ") for line in quiet.stderr.splitlines()), quiet.stderr


def test_the_app_accepts_only_loopback_host_names_by_default() -> None:
    from essence.cli.appcmd import streamlit_command

    cmd = streamlit_command([])
    hosts = [cmd[i + 1] for i, a in enumerate(cmd) if a == "--server.allowedHosts"]
    assert set(hosts) == {"localhost", "127.0.0.1", "::1"}
    # A user who names the hosts, or serves beyond loopback, chooses them.
    given = streamlit_command(["--server.allowedHosts", "essence.example.org"])
    assert [a for a in given if a == "--server.allowedHosts"] == ["--server.allowedHosts"]
    wide = streamlit_command(["--server.address=0.0.0.0"])
    assert "--server.allowedHosts" not in wide


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _websocket_status(port: int, host: str) -> str:
    """The status line the app answers a WebSocket handshake with, sent with ``Host: host``."""
    import socket

    request = (
        f"GET /_stcore/stream HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        f"Origin: http://{host}:{port}\r\n\r\n"
    )
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(request.encode())
        return s.recv(4096).decode("latin-1").splitlines()[0]


@pytest.mark.slow
def test_the_running_app_refuses_a_rebound_host_name_and_stops_on_ctrl_c(
    ws: Workspace, tmp_path: Path
) -> None:
    """DNS rebinding: a page of rebind.example resolved to 127.0.0.1 gets no WebSocket, so no session."""
    import urllib.request

    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "essence.cli", "app", "--server.port", str(port), "--server.headless", "true"],
        env=ws.env(ESSENCE_HOME=str(tmp_path / "home")), cwd=ws.root, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=True,
    )  # fmt: skip
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
            time.sleep(0.5)
        assert " 101 " in _websocket_status(port, "127.0.0.1") + " "
        assert " 101 " in _websocket_status(port, "localhost") + " "
        refused = _websocket_status(port, "rebind.example")
        assert " 101 " not in refused + " ", refused
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the whole process group
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-2000:]
    assert err.splitlines()[-1] == "error: interrupted; nothing half-written was kept", err[-2000:]
