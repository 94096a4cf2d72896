"""Launching a job of local processes, as ``torchrun`` would, and naming the process that failed first.

``essence precompute --distributed --nproc N`` and the tests start their processes here. Each process gets the
variables torchrun sets; the launcher watches them, stops the others as soon as one fails (so none waits for the
collective timeout), and reports the first process that failed for its own reason rather than the echoes of its
failure on the others (their errors carry :data:`~essence.core.scale.distributed.PEER_FAILED`). The job itself, its
process group and collectives, is :mod:`essence.core.scale.distributed`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import IO

from essence.core.base.errors import SpecError
from essence.core.scale.distributed import PEER_FAILED


@dataclass(frozen=True)
class LaunchResult:
    """How a job of local processes ended.

    Attributes:
        returncode: 0 when every process succeeded, else the exit status of the process that failed first
            for its own reason (1 when it was killed by a signal).
        failed_rank: that process's rank, or ``None``.
        message: one line saying which process failed and why (empty on success).
        stdout: what rank 0 printed (the others' output is the same job's and is dropped).
        stderr: what each process wrote on stderr, by rank.
    """

    returncode: int
    failed_rank: int | None
    message: str
    stdout: str
    stderr: list[str]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _error_line(text: str) -> str | None:
    """A process's last ``error: ...`` line (the CLI's one-line errors), else its last line."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    marked = [ln for ln in lines if ln.startswith("error:")]
    if marked:
        return marked[-1][len("error:") :].strip()
    return lines[-1][:300] if lines else None


def launch_local(
    command: Sequence[str],
    nproc: int,
    *,
    env: Mapping[str, str] | None = None,
    threads: int | None = None,
    poll_s: float = 0.05,
    grace_s: float = 2.0,
) -> LaunchResult:
    """Run ``command`` as ``nproc`` processes of one job on this machine, as torchrun would.

    Each process gets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``, ``MASTER_ADDR`` and
    ``MASTER_PORT`` (a free local port), and ``OMP_NUM_THREADS`` (CPU cores divided among the processes,
    unless set). As soon as one process fails the others are terminated, so none waits for the collective
    timeout. Output is collected and returned (rank 0's stdout is the job's).

    Args:
        command: the program and its arguments (e.g. ``[python, -m, essence.cli, precompute, ...]``).
        nproc: number of processes (≥ 1).
        env: the environment to start from (default: this process's).
        threads: intra-op threads per process (default: cores // nproc, at least 1).
        poll_s: how often the processes are checked.
        grace_s: after a failure, how long the others may take to end by themselves before being terminated.

    Returns:
        A :class:`LaunchResult`.

    Raises:
        SpecError: ``nproc`` < 1.
    """
    if nproc < 1:
        raise SpecError(f"--nproc {nproc}: start at least 1 process")
    children = _rank_environments(dict(os.environ if env is None else env), nproc, threads)
    procs: list[subprocess.Popen[bytes]] = []
    with ExitStack() as files:
        outs = [files.enter_context(tempfile.TemporaryFile(mode="w+")) for _ in range(nproc)]
        errs = [files.enter_context(tempfile.TemporaryFile(mode="w+")) for _ in range(nproc)]
        try:
            for rank, child in enumerate(children):
                procs.append(subprocess.Popen(list(command), env=child, stdout=outs[rank], stderr=errs[rank]))
            seen = _watch(procs, poll_s, grace_s)
            terminated = _stop_the_rest(procs)
        finally:
            for p in procs:  # an interrupt of the launcher must not leave orphans
                if p.poll() is None:
                    p.kill()
                    p.wait()
        texts = [_read(f) for f in errs]
        stdout = _read(outs[0])
    return _outcome(procs, seen, terminated, texts, stdout)


def _rank_environments(base: dict[str, str], nproc: int, threads: int | None) -> list[dict[str, str]]:
    """Each process's environment: ``base`` with the variables torchrun sets, and its share of the cores."""
    port = _free_port()
    per = threads or max(1, (os.cpu_count() or 1) // nproc)
    children = []
    for rank in range(nproc):
        child = {
            **base,
            "RANK": str(rank),
            "WORLD_SIZE": str(nproc),
            "LOCAL_RANK": str(rank),
            "LOCAL_WORLD_SIZE": str(nproc),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
        }
        child.setdefault("OMP_NUM_THREADS", str(per))
        children.append(child)
    return children


def _watch(procs: list[subprocess.Popen[bytes]], poll_s: float, grace_s: float) -> list[int]:
    """Wait until every process has ended, or until ``grace_s`` after the first failure.

    Returns:
        The failed ranks, in the order their failure was noticed.
    """
    seen: list[int] = []
    deadline = float("inf")
    # Poll every process each time, noting failures in the order they are seen; after the first, let the
    # others end by themselves briefly: the one that failed for its own reason then says why, instead of
    # being cut off by its echo on another process.
    while None in (codes := [p.poll() for p in procs]) and time.monotonic() < deadline:
        seen += [r for r, c in enumerate(codes) if c not in (None, 0) and r not in seen]
        if seen and deadline == float("inf"):
            deadline = time.monotonic() + grace_s
        time.sleep(poll_s)
    return seen + [r for r, c in enumerate(codes) if c not in (None, 0) and r not in seen]


def _stop_the_rest(procs: list[subprocess.Popen[bytes]]) -> set[int]:
    """Terminate the processes still running (killing those that do not end); returns their ranks."""
    terminated: set[int] = set()
    for r, p in enumerate(procs):
        if p.poll() is None:
            p.terminate()
            terminated.add(r)
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return terminated


def _read(f: IO[str]) -> str:
    f.seek(0)
    return f.read()


def _outcome(
    procs: list[subprocess.Popen[bytes]], seen: list[int], terminated: set[int], texts: list[str], stdout: str
) -> LaunchResult:
    """How the job ended: success, or the first process that failed for its own reason and why."""
    nproc = len(procs)
    failed = seen + [r for r, p in enumerate(procs) if p.returncode != 0 and r not in terminated | set(seen)]
    if not failed:
        return LaunchResult(0, None, "", stdout, texts)
    # The cause is the first process that failed for its own reason; the others' errors are echoes of it.
    own = [r for r in failed if PEER_FAILED not in (_error_line(texts[r]) or "")]
    rank = (own or failed)[0]
    code = procs[rank].returncode
    line = _error_line(texts[rank])
    if line is None:
        line = f"stopped with exit code {code}" if code > 0 else f"was killed by signal {-code}"
    prefix = f"process {rank} of {nproc}"
    message = line if line.startswith(f"process {rank}") else f"{prefix}: {line}"
    return LaunchResult(code if code > 0 else 1, rank, message, stdout, texts)
