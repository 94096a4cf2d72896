"""``essence --help``, argument errors and the store's verdicts answer without importing PyTorch (DESIGN:
start-up is not torch's).

Each case runs ``python -m essence.cli ...`` in a fresh interpreter that reports, as it exits, whether ``torch``
and ``numpy`` were imported. A command that runs still imports them: the last test shows the probe can fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

MARK = "imported-modules: "
# ``python -m essence.cli ARGS`` with a report of the heavy modules on the last line of stderr, written at exit
# (after ``main`` has set the exit status).
PROBE = (
    "import atexit, json, runpy, sys\n"
    "atexit.register(lambda: sys.stderr.write("
    f"{MARK!r} + json.dumps({{m: m in sys.modules for m in ('torch', 'numpy')}}) + '\\n'))\n"
    "sys.argv[0] = 'essence'\n"
    "runpy.run_module('essence.cli', run_name='__main__', alter_sys=True)\n"
)


def run(*args: str, home: Path) -> tuple[int, str, list[str], dict[str, bool]]:
    """Exit status, stdout, stderr's lines (the report left out) and which heavy modules were imported."""
    env = {**os.environ, "ESSENCE_HOME": str(home), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=240, env=env
    )
    lines = done.stderr.splitlines()
    assert lines and lines[-1].startswith(MARK), done.stderr
    return done.returncode, done.stdout, lines[:-1], json.loads(lines[-1][len(MARK) :])


@pytest.mark.parametrize(
    "args",
    [
        ("--help",),
        ("profile", "--help"),
        ("triage", "--help"),
        ("store", "export", "--help"),
    ],
    ids=" ".join,
)
def test_help_imports_neither_torch_nor_numpy(args, tmp_path):
    code, out, err, imported = run(*args, home=tmp_path)
    assert code == 0, err
    assert "Usage: essence" in out
    assert err == []
    assert imported == {"torch": False, "numpy": False}


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (("profile", "--bogus"), "No such option: --bogus (see `essence profile --help`)"),
        (("--bogus",), "No such option: --bogus (see `essence --help`)"),
        (("profile", "--data", "digits"), "Missing option '--model'"),
        (("profile", "--model", "demo:blurred", "--data", "digits", "--batch-size", "lots"), "--batch-size"),
        (
            ("profile", "--model", "demo:blurred", "--data", "digits", "--kind", "bogus"),
            "--kind 'bogus' is not known: use logit or prob",
        ),
        (
            ("profile", "--model", "demo:blurred", "--data", "digits", "--granularity", "bogus"),
            "--granularity 'bogus' is not known: use channel or neuron",
        ),
        (("triage", "--model", "demo:blurred", "--data", "digits", "--score", "vibes"), "--score 'vibes'"),
        (
            ("explain", "--model", "demo:blurred", "--image", "x.png", "--class", "0", "--method", "lrp"),
            "--method 'lrp'",
        ),
    ],
    ids=[
        *("unknown option", "unknown top-level option", "missing option", "not a number"),
        *("bad kind", "bad granularity", "bad score", "bad method"),
    ],
)
def test_an_argument_error_is_one_line_without_torch(args, says, tmp_path):
    code, out, err, imported = run(*args, home=tmp_path)
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ") and says in err[0], err
    assert imported == {"torch": False, "numpy": False}


def test_the_error_types_import_alone():
    """``essence.core`` resolves its engine on first use: its error types (and the package) need no torch."""
    code = (
        "import sys\n"
        "from essence.core.base.errors import SpecError\n"
        "import essence.core\n"
        "assert essence.core.EssenceError is not None and issubclass(SpecError, essence.core.EssenceError)\n"
        "print('torch' in sys.modules, 'numpy' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.split() == ["False", "False"]


def test_verdicts_are_recorded_and_exported_without_torch(tmp_path):
    """The store's verdicts, runs and upkeep need no tensors: a script recording verdicts through the API, then
    ``essence store info``, ``store export --verdicts`` and ``store prune --dry-run`` import no PyTorch."""
    script = (
        "import sys\n"
        "from essence.storage import Store\n"
        "with Store.open(sys.argv[1]) as store:\n"
        "    for i, verdict in enumerate(['fine', 'label error', 'fine']):\n"
        "        store.record_verdict('d' * 64, i, verdict, reviewer='Dr. A')\n"
        "    store.record_verdict('d' * 64, 1, 'custom', note='blurred', reviewer='Dr. B')\n"
        "    print(len(store.latest_verdicts('d' * 64)), 'torch' in sys.modules)\n"
    )
    recorded = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=120, check=True
    )
    assert recorded.stdout.split() == ["3", "False"]
    code, out, err, imported = run("store", "info", home=tmp_path)
    assert code == 0, err
    assert "verdicts: 4," in out
    assert imported["torch"] is False
    csv = tmp_path / "verdicts.csv"
    code, out, err, imported = run("store", "export", "--verdicts", str(csv), home=tmp_path)
    assert code == 0, err
    assert imported["torch"] is False
    rows = csv.read_text().splitlines()
    assert len(rows) == 1 + 4 and "blurred" in csv.read_text()
    code, out, err, imported = run("store", "prune", "--dry-run", home=tmp_path)
    assert code == 0, err
    assert imported["torch"] is False


def test_a_command_that_runs_still_imports_torch(tmp_path):
    """The probe can fail: a real run (the demo model's layers) imports PyTorch and NumPy, and is reported."""
    code, out, err, imported = run("layers", "--model", "demo:blurred", home=tmp_path)
    assert code == 0, err
    assert "classifier" in out
    assert imported == {"torch": True, "numpy": True}
