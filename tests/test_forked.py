"""The suite's fork-server runner (``tests/forked.py``) starts commands without re-running the test process's
``__main__``: Streamlit's ``AppTest`` leaves its app script there, and each command forked after an app test
once ran the whole app before its own work."""

from __future__ import annotations

import os
import sys
import types
from pathlib import Path

import pytest
from forked import start_forked


@pytest.mark.slow  # starts the fork server: an interpreter importing torch and the CLI
def test_a_script_left_as_main_is_not_run_again_by_a_forked_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sentinel = tmp_path / "the script ran"
    script = tmp_path / "app_script.py"
    script.write_text(f"open({str(sentinel)!r}, 'w').close()\n")
    # What AppTest leaves behind: a module of a file, with no module spec.
    left = types.ModuleType("__main__")
    left.__file__ = str(script)
    left.__spec__ = None
    monkeypatch.setitem(sys.modules, "__main__", left)

    # The environment of the fork server (start_forked refuses any other rather than start an interpreter).
    env = dict(os.environ, PYTHONHASHSEED="0", OMP_NUM_THREADS="1")
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    proc = start_forked(["--help"], env, cwd=tmp_path, out=str(out), err=str(err))
    proc.join(120)

    assert proc.exitcode == 0, err.read_text()
    assert "usage" in out.read_text().lower()
    assert not sentinel.exists(), "the forked command re-ran the script left as __main__"
    assert sys.modules["__main__"] is left  # put back as it was
