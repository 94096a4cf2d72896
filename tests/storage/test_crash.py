"""Crash safety and concurrency with real processes: SIGKILL mid-write leaves no half profile and loses no
committed verdict; two processes recording verdicts at once lose nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from sqlalchemy import create_engine, text

from essence.storage import Store
from essence.storage.connect import resolve

# The child opens the store, commits verdicts (printing each after its commit), then writes a profile and
# stops inside that write's transaction (after the profile and run rows, during the matrices) until killed.
CHILD_MID_PROFILE = r"""
import sys, time
import numpy as np, torch
from essence.core.inputs.data import ImageData, hash_arrays
from essence.core.inputs.model_fingerprints import model_fingerprint
from essence.core.inputs.models import LoadedModel
from essence.core.inputs.preprocessing import Preprocessing
from essence.core.analyses.profiles import class_profiles
from essence.storage import ProfileKey, Store
from essence.storage import store as store_module

url, n_verdicts = sys.argv[1], int(sys.argv[2])
store = Store.open(url)
for i in range(n_verdicts):
    store.record_verdict("ds", i, "fine", reviewer="child")
    print("committed", i + 1, flush=True)

torch.manual_seed(0)
module = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 6), torch.nn.Softplus(), torch.nn.Linear(6, 3)).eval()
images = np.random.default_rng(0).integers(0, 256, (12, 4, 4, 3), dtype=np.uint8)
labels = np.arange(12) % 3
data = ImageData("t", labels, ["a", "b", "c"], Preprocessing(), hash_arrays(images, labels), arrays=images)
model = LoadedModel(module, "t", model_fingerprint(module))
profiles = class_profiles(module, data, "1", keep_instances=True)
key = ProfileKey.for_profiles(model, data, "1", "channel", "logit")

original = store_module.Store._add_matrices
def stall(self, s, *args):
    original(self, s, *args)          # profile, run and matrix rows written, not committed
    print("mid-write", flush=True)
    time.sleep(600)
store_module.Store._add_matrices = stall
store.put_profiles(key, profiles)
print("finished", flush=True)  # never reached
"""

# With a fourth argument, the other writer's name: after its first verdict the child waits until the other's first
# one is in the store, so the two write at the same time however the machine schedules them (released together
# on a loaded machine, one could otherwise write all its verdicts before the other had started).
CHILD_VERDICTS = r"""
import sys, time
from essence.storage import Store
url, who, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
other = sys.argv[4] if len(sys.argv) > 4 else None
store = Store.open(url, timeout=60)
print("ready", flush=True)
sys.stdin.readline()  # start together
for i in range(n):
    store.record_verdict("shared", i, "fine" if i % 2 else "ambiguous", note=who, reviewer=who)
    print("committed", i + 1, flush=True)
    if i == 0 and other is not None:
        deadline = time.monotonic() + 120
        while not any(v.reviewer == other for v in store.all_verdicts("shared")):
            if time.monotonic() > deadline:
                sys.exit(f"{other} wrote nothing in 120 s")
            time.sleep(0.005)
"""


def _spawn(code: str, *args: str, stdin: bool = False) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.PIPE if stdin else None,
        text=True,
    )


def _read_until(proc: subprocess.Popen, marker: str, timeout: float = 120) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"child ended before {marker!r}: {proc.stderr.read()}")
        lines.append(line.strip())
        if line.startswith(marker):
            return lines
    raise AssertionError(f"no {marker!r} within {timeout} s")


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _integrity_ok(url: str) -> None:
    location = resolve(url)
    if location.path is None:
        return  # PostgreSQL rolls back a dropped client's transaction itself
    engine = create_engine(location.url)
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
        assert conn.exec_driver_sql("PRAGMA foreign_key_check").fetchall() == []
    engine.dispose()


def _count(url: str, table: str) -> int:
    engine = create_engine(resolve(url).url)
    with engine.connect() as conn:
        n = conn.execute(text(f"SELECT count(*) FROM {table}")).scalar()
    engine.dispose()
    return int(n)


@pytest.mark.slow  # fresh interpreters, killed
def test_sigkill_in_the_middle_of_writing_a_profile(store_url):
    Store.open(store_url).close()
    child = _spawn(CHILD_MID_PROFILE, store_url, "25")
    try:
        lines = _read_until(child, "mid-write")
    finally:
        _kill(child)
    committed = [int(line.split()[1]) for line in lines if line.startswith("committed")]
    assert committed[-1] == 25

    _integrity_ok(store_url)
    assert _count(store_url, "profiles") == 0  # no half profile
    assert _count(store_url, "instance_matrices") == 0 and _count(store_url, "runs") == 0
    with Store.open(store_url, timeout=5) as store:  # the dead writer's lock is gone
        assert set(store.latest_verdicts("ds")) == set(range(25))
        assert all(v.reviewer == "child" for v in store.latest_verdicts("ds").values())
        store.record_verdict("ds", 99, "fine")
        info = store.info()
    assert (info.profiles, info.verdicts) == (0, 26)


@pytest.mark.slow  # fresh interpreters, killed
def test_sigkill_while_recording_verdicts_loses_none_committed(store_url):
    Store.open(store_url).close()
    child = _spawn(CHILD_VERDICTS, store_url, "solo", "100000", stdin=True)
    try:
        _read_until(child, "ready")
        child.stdin.write("go\n")
        child.stdin.flush()
        lines = _read_until(child, "committed 60")
    finally:
        _kill(child)
    last_printed = int(lines[-1].split()[1])
    _integrity_ok(store_url)
    n = _count(store_url, "verdicts")
    # Every verdict reported committed is there; at most one more (committed, killed before printing).
    assert last_printed <= n <= last_printed + 1
    with Store.open(store_url) as store:
        assert set(store.latest_verdicts("shared")) == set(range(n))


@pytest.mark.slow
def test_two_processes_recording_verdicts_at_once_lose_nothing(store_url):
    Store.open(store_url).close()
    n = 200
    pairs = (("ana", "ben"), ("ben", "ana"))
    children = [_spawn(CHILD_VERDICTS, store_url, who, str(n), other, stdin=True) for who, other in pairs]
    for child in children:
        _read_until(child, "ready")
    for child in children:  # release both at once
        child.stdin.write("go\n")
        child.stdin.flush()
    for child in children:
        _, err = child.communicate(timeout=300)
        assert child.returncode == 0, err
    _integrity_ok(store_url)
    with Store.open(store_url) as store:
        rows = store.all_verdicts("shared")
    assert len(rows) == 2 * n
    assert {(v.reviewer, v.instance_id) for v in rows} == {
        (who, i) for who in ("ana", "ben") for i in range(n)
    }
    assert len({v.id for v in rows}) == 2 * n
    # They really ran at the same time: each one's rows are interleaved with the other's.
    order = [v.reviewer for v in rows]
    switches = sum(a != b for a, b in zip(order, order[1:], strict=False))
    assert switches > 1, "the two writers did not overlap; the test proves nothing"
