"""``essence ARGS`` run in the test's own process, through the console script's entry point.

For tests of what a command does rather than of the process that runs it: no fresh interpreter importing
PyTorch (about 2 s each). The environment, working folder and ``sys.path`` are restored afterwards.
(Importable from every test folder: pytest puts ``tests/``, the folder of the root conftest, on ``sys.path``.)
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path


def run_essence(
    args: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    replace_env: bool = False,
    cwd: Path | str | None = None,
    code_path: Path | str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``essence.cli.main(args)`` with stdout and stderr captured.

    Args:
        args: the command line after ``essence``.
        env: variables to set for the run (``ESSENCE_DEBUG`` is always unset first).
        replace_env: run with exactly ``env`` instead of the current environment updated by it.
        cwd: the working folder for the run.
        code_path: a folder put first on ``sys.path`` (where a test's model factory module lives).

    Returns:
        The exit status (0 when ``main`` returns), stdout and stderr, as a subprocess would give them.
    """
    from essence.cli import main

    saved_env, saved_cwd, saved_path = dict(os.environ), os.getcwd(), list(sys.path)
    if replace_env:
        os.environ.clear()
    os.environ.pop("ESSENCE_DEBUG", None)
    os.environ.update(env or {})
    if code_path is not None:
        sys.path.insert(0, str(code_path))
    out, err = io.StringIO(), io.StringIO()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(list(args))
                code = 0
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 1
    finally:
        os.chdir(saved_cwd)
        sys.path[:] = saved_path
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(["essence", *args], code, out.getvalue(), err.getvalue())
