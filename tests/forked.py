"""``python -m essence.cli ARGS`` as a real process, without paying an interpreter's start and PyTorch's import.

A fresh interpreter importing torch costs about 2 s of CPU before the command says anything; the bad-input
catalogue alone starts some sixty. This runner forks each command from a server process that has imported
the CLI and what its commands use, once (Python's ``multiprocessing`` fork server). What a test asserts about
the process still holds: it is a separate process with its own exit status, its own file descriptors 1 and 2
(everything written to them, by Python or by C code, is what the test reads), its own environment, working
folder and ``sys.path`` (``PYTHONPATH`` of the environment put first, as an interpreter would), and a test's
model factory module is imported afresh in it.

What a fork cannot give is what an interpreter decides while it starts: the variables of :data:`STARTUP`
(hash seed, warnings options, text encodings, locale). A command whose environment sets any of them otherwise
than the server had runs in a fresh interpreter instead, as does everything when the fork server is
unavailable. Tests of the start itself (what ``--help`` imports, signals, ``torchrun``) keep their own
``subprocess`` calls.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import locale
import multiprocessing
import os
import subprocess
import sys
import tempfile
import threading
import types
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

# Read by the interpreter (or libraries) while it starts: a fork inherits the server's values of these.
STARTUP = (
    "PYTHONHASHSEED",
    "PYTHONWARNINGS",
    "PYTHONIOENCODING",
    "PYTHONUTF8",
    "PYTHONDONTWRITEBYTECODE",
    "LANG",
    "LC_ALL",
    "LC_CTYPE",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)
# Imported once by the server: the CLI and the heavy modules its commands import on demand.
PRELOAD = [
    "torch",
    "torchvision",
    "numpy",
    "PIL.Image",
    "sqlalchemy",
    "essence.cli",
    "essence.cli.analyses",
    "essence.cli.diagnose",
    "essence.cli.profile",
    "essence.cli.store",
    "essence.core",
    "essence.storage",
]
_SERVER_ENV = {"PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1"}
_lock = threading.Lock()
_context: multiprocessing.context.ForkServerContext | None = None
_context_env: dict[str, str | None] = {}  # the server's values of STARTUP


def _server() -> multiprocessing.context.ForkServerContext | None:
    """The fork server's context, started on first use with :data:`_SERVER_ENV` (``None`` where unavailable)."""
    global _context
    with _lock:
        if _context is None:
            try:
                ctx = multiprocessing.get_context("forkserver")
            except ValueError:  # a platform without fork
                return None
            ctx.set_forkserver_preload(PRELOAD)
            saved = dict(os.environ)
            os.environ.update(_SERVER_ENV)
            try:
                from multiprocessing import forkserver

                forkserver.ensure_running()
            finally:
                os.environ.clear()
                os.environ.update(saved)
            _context = ctx
            _context_env.update({k: os.environ.get(k) for k in STARTUP} | _SERVER_ENV)
        return _context


def _startup_matches(env: Mapping[str, str]) -> bool:
    return all(env.get(k) == _context_env.get(k) for k in STARTUP)


@contextlib.contextmanager
def _no_script_main() -> Iterator[None]:
    """Hide a ``__main__`` that is a script file while a process starts.

    ``multiprocessing`` starts every child by re-running the parent's ``__main__`` when that is a file
    without a module spec. Streamlit's ``AppTest`` leaves the app's script there after a run (its script
    runner sets ``sys.modules["__main__"]`` and does not restore it). Every command forked after an app test
    then ran the whole app first: 2–3 s of CPU each, against 0.3 s for the command itself. A module
    without a file gives multiprocessing nothing to re-run.
    """
    main = sys.modules.get("__main__")
    if main is None or getattr(main, "__spec__", None) is not None or not getattr(main, "__file__", None):
        yield
        return
    sys.modules["__main__"] = types.ModuleType("__main__")
    try:
        yield
    finally:
        sys.modules["__main__"] = main


def _start(ctx: multiprocessing.context.ForkServerContext, *args: object) -> multiprocessing.process.BaseProcess:
    """A forked process running ``_child(*args)``, started."""
    proc = ctx.Process(target=_child, args=args)
    with _lock, _no_script_main():  # one start at a time: ``__main__`` is process-wide
        proc.start()
    return proc


def _child(args: list[str], env: dict[str, str], cwd: str, out: str, err: str, script: str | None = None) -> None:
    """In the forked process: become ``python -m essence.cli ARGS`` (or ``python -c SCRIPT ARGS``) with ``env``
    in ``cwd``; never returns."""
    code = 1
    try:
        os.environ.clear()
        os.environ.update(env)
        extra = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:0] = extra
        os.chdir(cwd)
        for fd, path in ((1, out), (2, err)):
            target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.dup2(target, fd)
            os.close(target)
        encoding = sys.stdout.encoding if sys.stdout is not None else "utf-8"
        # The streams a started interpreter would have on descriptors 1 and 2 (open for the process's life).
        stdout, stderr = open(1, "wb", closefd=False), open(2, "wb", closefd=False)  # noqa: SIM115
        sys.stdout = io.TextIOWrapper(stdout, encoding=encoding)
        sys.stderr = io.TextIOWrapper(stderr, encoding=encoding, errors="backslashreplace", line_buffering=True)
        try:
            if script is None:
                from essence.cli import main

                main(list(args))
            else:
                sys.argv = ["-c", *args]
                exec(compile(script, "<string>", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # what an interpreter does with an uncaught exception: the traceback, status 1
        import traceback

        traceback.print_exc()
        code = 1
    finally:
        atexit._run_exitfuncs()
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)


def start_forked(
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    cwd: Path | str,
    out: str = os.devnull,
    err: str = os.devnull,
    script: str | None = None,
) -> multiprocessing.process.BaseProcess:
    """Start ``python -m essence.cli ARGS`` as a forked process and return it (``pid``, ``join``, ``exitcode``);
    with ``script``, ``python -c SCRIPT ARGS`` (what it imports from :data:`PRELOAD` is already imported).

    For tests that stop a command part-way (a signal at a chosen moment): the moment falls in the command's own
    work, not in an interpreter's start. Needs the fork server and the environment's :data:`STARTUP` values
    to match it (else :class:`RuntimeError`: such a test cannot mean the same thing with a fresh interpreter).
    """
    ctx = _server()
    if ctx is None or not _startup_matches(env):
        raise RuntimeError("no fork server for this environment: start a fresh interpreter instead")
    return _start(ctx, list(args), dict(env), str(cwd), out, err, script)


def run_forked(
    args: Sequence[str], env: Mapping[str, str], *, cwd: Path | str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m essence.cli ARGS`` as a forked process (a fresh interpreter where :data:`STARTUP` differs).

    Args:
        args: the command line after ``essence``.
        env: the process's whole environment.
        cwd: its working folder.
        timeout: seconds before it is killed and :class:`subprocess.TimeoutExpired` is raised.

    Returns:
        Its exit status, stdout and stderr, as :func:`subprocess.run` gives them.
    """
    ctx = _server()
    if ctx is None or not _startup_matches(env):
        return subprocess.run(
            [sys.executable, "-m", "essence.cli", *args],
            env=dict(env),
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    with tempfile.TemporaryDirectory(prefix="essence-forked-") as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        proc = _start(ctx, list(args), dict(env), str(cwd), out, err)
        proc.join(timeout)
        if proc.exitcode is None:
            proc.kill()
            proc.join()
            raise subprocess.TimeoutExpired(["essence", *args], timeout)
        # killed by signal N: -N, as subprocess gives it
        return subprocess.CompletedProcess(
            [sys.executable, "-m", "essence.cli", *args], proc.exitcode, _text(out), _text(err)
        )


def _text(path: str) -> str:
    """A captured stream decoded as ``subprocess.run(text=True)`` decodes it (locale encoding, strict, newlines)."""
    data = Path(path).read_bytes() if os.path.exists(path) else b""
    return data.decode(locale.getpreferredencoding(False)).replace("\r\n", "\n").replace("\r", "\n")
