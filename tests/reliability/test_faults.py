"""Fault injection: a killed ``essence precompute``, concurrent reviewers, a full disk.

What these prove (see docs/reliability.md):

- SIGKILL at seeded random moments of a real ``precompute`` (loading, computing, writing the per-instance
  matrices, committing) never leaves the store damaged (``PRAGMA integrity_check``) nor a half profile
  visible: every profile row the store lists loads completely, with its matrices, and a rerun completes.
- Two and four processes recording 500 verdicts each at the same time lose none.
- A write that hits a file-size limit (``RLIMIT_FSIZE``, how a full disk looks to a process) ends with one
  clear error line and exit status 2, and what the store held before is intact.
"""

from __future__ import annotations

import json
import os
import random
import resource
import signal
import sqlite3
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
from forked import start_forked
from reliability_helpers import FACTORY_MODULE, Workspace, make_workspace, run_cli

N_IMAGES = 1536
KILLS = 10
M = ["--model", f"{FACTORY_MODULE}:cnn"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    ws = make_workspace(tmp_path_factory.mktemp("faults"))
    # One dataset per kill: each run then inserts a new profile with new matrix files (content-addressed
    # files of a profile already stored would not be written again).
    for seed in range(KILLS + 1):
        rng = np.random.default_rng(seed)
        images = rng.integers(0, 256, size=(N_IMAGES, 16, 16, 3), dtype=np.uint8)
        np.savez(ws.data_root / f"big{seed}.npz", images=images, labels=np.arange(N_IMAGES) % 3)
    return ws


def big_args(ws: Workspace, seed: int = 0) -> list[str]:
    # Neuron granularity at the conv layer: 4×16×16 = 1024 units, so the per-instance matrix is 6 MB and
    # writing it is a window worth hitting.
    return [
        *M, "-d", f"npz:{ws.data_root / f'big{seed}.npz'}", "-l", "conv", "--granularity", "neuron",
        "--instances", "--batch-size", "64", "--device", "cpu",
    ]  # fmt: skip


def integrity(db: Path) -> str:
    with sqlite3.connect(db) as conn:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]


def check_every_profile_is_whole(store_path: Path) -> int:
    """Load every stored profile with its matrices; returns how many there are.

    A half-written profile would show as a missing row of matrices, a matrix failing its hash (a warning
    and ``None``), counts that do not add up, or NaN in the sums.
    """
    from essence.storage import Store

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "matrix ... does not match; recomputed" would be a half profile
        with Store.open(store_path, timeout=30) as store:
            keys = store.profile_keys()
            for key in keys:
                p = store.get_profiles(key, with_instances=True)
                assert p is not None, f"a listed profile does not load: {key}"
                assert int(p.counts.sum()) == N_IMAGES
                assert bool(np.isfinite(p.mean.numpy()).all())
                assert p.instances is not None and p.instances.instance_vectors is not None
                assert tuple(p.instances.instance_vectors.shape) == (N_IMAGES, p.num_units)
    return len(keys)


@pytest.mark.slow
def test_sigkill_at_random_moments_leaves_no_half_profile(ws: Workspace, tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = {"ESSENCE_HOME": str(home)}
    assert run_cli(ws, "--help", **env).returncode == 0  # the fork server up (tests/forked.py)
    began = time.perf_counter()
    assert run_cli(ws, "--help", **env).returncode == 0
    startup = time.perf_counter() - began  # a process's start: nothing to kill yet
    reference_json = tmp_path / "reference.json"
    began = time.perf_counter()
    done = run_cli(ws, "precompute", *big_args(ws), "--json", str(reference_json), **env)
    full = time.perf_counter() - began
    assert done.returncode == 0, done.stderr
    reference = json.loads(reference_json.read_text())
    store = home / "essence.sqlite"
    assert check_every_profile_is_whole(store) == 1

    # Seeded moments spread over loading the data, computing, writing the matrices and committing: each a seeded
    # fraction of the way from the start to just past the end of a whole run. A run that completes before its
    # moment says how long a whole run takes now, and the later moments follow it: on a shared machine the
    # reference run can be slowed by a neighbour that then stops, and moments drawn from it alone once all fell
    # after their runs had ended (no kill landed).
    rng = random.Random(20240611)
    fractions = [rng.random() for _ in range(KILLS)]
    finished = 0
    timeline = []  # (moment, seconds the run took or None if killed), for the failure message
    for i, fraction in enumerate(fractions, start=1):
        moment = 0.9 * startup + fraction * (1.05 * full - 0.9 * startup)
        # Started as run_cli starts the reference run (forked: its start is the same short one measured).
        err = tmp_path / f"run{i}.err"
        began = time.perf_counter()
        proc = start_forked(["precompute", *big_args(ws, i)], ws.env(**env), cwd=ws.root, err=str(err))
        proc.join(timeout=max(0.0, began + moment - time.perf_counter()))  # the moment, from the start
        if proc.exitcode is not None:
            # It ended before its moment: a completed run (a whole profile, also fine), never a failed one.
            assert proc.exitcode == 0, f"run {i} failed (exit {proc.exitcode}): {err.read_text()[-2000:]}"
            finished += 1
            full = time.perf_counter() - began
            timeline.append((round(moment, 2), round(full, 2)))
        else:
            timeline.append((round(moment, 2), None))
            os.kill(proc.pid, signal.SIGKILL)
            proc.join(timeout=30)
            if proc.exitcode == 0:  # it completed in the instant between the wait and the kill
                finished += 1
            else:
                assert proc.exitcode == -signal.SIGKILL, proc.exitcode
        assert integrity(store) == "ok", f"kill {i} at {moment:.2f} s damaged the store"
        assert check_every_profile_is_whole(store) >= 1
    assert finished < KILLS, f"no kill landed inside a run: (moment, run's seconds) {timeline}"
    print(f"startup {startup:.2f} s, full run {full:.2f} s, {KILLS - finished} of {KILLS} runs killed, "
          f"{check_every_profile_is_whole(store)} whole profiles stored")  # fmt: skip

    # Reruns complete: the reference dataset again (served or recomputed, same numbers) and a killed one.
    for seed, extra in ((0, ["--force"]), (KILLS, [])):
        out = tmp_path / f"again{seed}.json"
        rerun = run_cli(ws, "precompute", *big_args(ws, seed), *extra, "--json", str(out), **env)
        assert rerun.returncode == 0, rerun.stderr
        if seed == 0:
            assert json.loads(out.read_text())["profiles"] == reference["profiles"]
    assert integrity(store) == "ok"
    assert check_every_profile_is_whole(store) >= 2


REVIEWER = """
import sys
from essence.storage import Store

store_path, reviewer, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
verdicts = ["label error", "model error", "ambiguous", "fine"]
with Store.open(store_path, timeout=60) as store:
    for i in range(count):
        store.record_verdict("dataset-under-review", i % 50, verdicts[i % 4], note=f"{reviewer}:{i}",
                             reviewer=reviewer)
print("done", flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("processes", [2, 4])
def test_concurrent_reviewers_lose_no_verdict(ws: Workspace, tmp_path: Path, processes: int) -> None:
    from essence.storage import Store

    store_path = tmp_path / "essence.sqlite"
    Store.open(store_path).close()  # created once, so that the reviewers race on writes, not on creation
    count = 500
    # Each reviewer a process of its own (forked: their interpreters' start and imports are not what races).
    outs = [tmp_path / f"reviewer{k}.out" for k in range(processes)]
    errs = [tmp_path / f"reviewer{k}.err" for k in range(processes)]
    procs = [
        start_forked(
            [str(store_path), f"reviewer{k}", str(count)],
            ws.env(),
            cwd=tmp_path,
            out=str(outs[k]),
            err=str(errs[k]),
            script=REVIEWER,
        )
        for k in range(processes)
    ]
    for p, out, err in zip(procs, outs, errs, strict=True):
        p.join(300)
        assert p.exitcode == 0, err.read_text()[-2000:]
        assert out.read_text().strip() == "done"
    with Store.open(store_path) as store:
        every = store.all_verdicts("dataset-under-review")
        latest = store.latest_verdicts("dataset-under-review")
    notes = {v.note for v in every}
    assert len(every) == processes * count
    assert notes == {f"reviewer{k}:{i}" for k in range(processes) for i in range(count)}
    assert set(latest) == set(range(50))
    assert integrity(store_path) == "ok"


def _limit_file_size(limit: int):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


@pytest.mark.slow  # fresh interpreters under a file-size limit
def test_a_full_disk_is_one_clear_error_and_the_store_keeps_what_it_had(
    ws: Workspace, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    small = run_cli(ws, "precompute", *M, "-d", f"npz:{ws.npz}", "-l", "fc1", "--device", "cpu",
                    ESSENCE_HOME=str(home))  # fmt: skip
    assert small.returncode == 0, small.stderr
    store = home / "essence.sqlite"
    # Room for a few pages more than the store holds, nowhere near the 6 MB matrix the next run writes.
    limit = max(p.stat().st_size for p in home.rglob("*") if p.is_file()) + 64 * 1024
    result = subprocess.run(
        [sys.executable, "-m", "essence.cli", "precompute", *big_args(ws)],
        env=ws.env(ESSENCE_HOME=str(home)),
        cwd=ws.root,
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_limit_file_size(limit),
    )
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert any(word in lines[0].lower() for word in ("full", "too large", "space")), lines[0]
    assert integrity(store) == "ok"
    from essence.storage import Store

    with Store.open(store) as opened:
        keys = opened.profile_keys()
        assert len(keys) == 1 and keys[0].layer == "fc1"
        assert opened.get_profiles(keys[0]) is not None
