"""Sharded class profiles: shards, the merge across real processes (gloo), and failures that merge nothing."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from essence.core.analyses.profiles import class_profiles
from essence.core.base.errors import EmptyClassError, SpecError
from essence.core.engine.sums import InfluenceSums
from essence.core.scale.distributed import (
    DistEnv,
    DistributedError,
    agree,
    all_reduce_sums,
    launched_by_torchrun,
    shard_indices,
    sharded_class_profiles,
)
from essence.core.scale.launch import launch_local

WORKER = Path(__file__).with_name("shard_worker.py")
sys.path.insert(0, str(WORKER.parent))
import shard_worker  # noqa: E402  (the worker's model and data, also used in-process here)


@pytest.mark.parametrize("n,world", [(1, 1), (10, 3), (37, 2), (64, 8), (7, 7)])
def test_shards_cover_every_instance_exactly_once(n, world):
    shards = [shard_indices(n, r, world) for r in range(world)]
    joined = np.concatenate(shards)
    assert sorted(joined.tolist()) == list(range(n))  # no duplicates (no padding), nothing left out
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1
    assert all(np.array_equal(s, shard_indices(n, r, world)) for r, s in enumerate(shards))  # deterministic


def test_shards_refuse_a_bad_rank_or_too_many_processes():
    with pytest.raises(SpecError, match="at most 3 processes"):
        shard_indices(3, 0, 4)
    with pytest.raises(SpecError, match="rank 2"):
        shard_indices(10, 2, 2)


def test_environment_of_torchrun_is_read():
    assert DistEnv.from_environ({}) is None
    env = DistEnv.from_environ({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert env == DistEnv(1, 4, 1) and not env.is_writer
    assert launched_by_torchrun({"RANK": "0", "WORLD_SIZE": "2"})
    assert not launched_by_torchrun({"RANK": "0", "WORLD_SIZE": "1"})
    with pytest.raises(SpecError, match="RANK=5"):
        DistEnv.from_environ({"RANK": "5", "WORLD_SIZE": "2"})
    with pytest.raises(SpecError, match="integers"):
        DistEnv.from_environ({"RANK": "x", "WORLD_SIZE": "2"})


def test_one_process_without_a_group_is_class_profiles(rel_close):
    model, (x, y) = shard_worker.model(), shard_worker.data()
    alone = sharded_class_profiles(model, (x, y), "3", batch_size=5, device="cpu")
    plain = class_profiles(model, (x, y), "3", batch_size=5, device="cpu")
    rel_close(alone.mean, plain.mean, 1e-6)
    rel_close(alone.stderr, plain.stderr, 1e-6)
    assert torch.equal(alone.counts, plain.counts)
    agree(None)  # no group: nothing to agree on
    sums = plain.sums
    assert all_reduce_sums(sums) is sums


def test_sums_of_disjoint_shards_are_the_sums_of_the_whole(rel_close):
    """The merge is addition: shards computed separately and added give the whole data's profiles."""
    model, (x, y) = shard_worker.model(), shard_worker.data()
    whole = class_profiles(model, (x, y), "3", batch_size=4, device="cpu")
    merged = InfluenceSums.zeros(*whole.sums.sum.shape)
    from essence.core.engine.distributions import ClassConditional
    from essence.core.engine.influence import influence
    from essence.core.engine.quantities import OwnLabel

    for r in range(3):
        part = influence(
            model,
            (x, y),
            "3",
            OwnLabel(),
            ClassConditional(),
            indices=shard_indices(len(y), r, 3),
            device="cpu",
        )
        merged = merged.merge(part.sums)
    assert torch.equal(merged.count, whole.sums.count)
    rel_close(merged.sum, whole.sums.sum, 1e-6)
    rel_close(merged.sumsq, whole.sums.sumsq, 1e-6)


def test_an_empty_class_of_the_whole_data_is_refused_after_merging():
    model = shard_worker.model()
    x, _ = shard_worker.data()
    y = torch.zeros(len(x), dtype=torch.long)  # classes 1 and 2 have no instances
    with pytest.raises(EmptyClassError, match="no instances"):
        sharded_class_profiles(model, (x, y), "3", device="cpu")
    p = sharded_class_profiles(model, (x, y), "3", device="cpu", allow_empty=True)
    assert p.counts.tolist() == [len(x), 0, 0]


# ----------------------------------------------------------------------------------- real processes (gloo)


def _launch(tmp_path: Path, mode: str = "none", nproc: int = 2, **env: str):
    out = tmp_path / f"merged-{mode}.pt"
    import os

    result = launch_local([sys.executable, str(WORKER), str(out), mode], nproc, env={**os.environ, **env})
    return result, out


@pytest.mark.slow
def test_two_gloo_processes_give_the_single_process_result(tmp_path, rel_close):
    result, out = _launch(tmp_path)
    assert result.returncode == 0, result.stderr
    assert "rank 0 of 2 done" in result.stdout
    merged = torch.load(out)
    net = torch.nn.Sequential(shard_worker.Fault("none"), shard_worker.model()).eval()
    single = class_profiles(net, shard_worker.data(), "1.3", batch_size=4, device="cpu")
    assert torch.equal(merged["count"], single.sums.count)  # each instance counted exactly once
    rel_close(merged["sum"], single.sums.sum, 1e-6)  # the same sum, added in another order
    rel_close(merged["sumsq"], single.sums.sumsq, 1e-6)
    rel_close(merged["mean"], single.mean, 1e-6)


@pytest.mark.slow
def test_a_rank_that_dies_merges_nothing_and_is_named(tmp_path):
    result, out = _launch(tmp_path, "exit")
    assert result.returncode == 3 and result.failed_rank == 1
    assert result.message == "process 1 of 2: stopped with exit code 3"
    assert not out.exists()  # rank 0 saves only after a successful merge
    assert "another process stopped" in result.stderr[0]  # rank 0 saw the lost peer instead of waiting


@pytest.mark.slow
def test_an_error_in_one_rank_stops_all_with_its_message(tmp_path):
    result, out = _launch(tmp_path, "raise")
    assert result.returncode == 2 and result.failed_rank == 1
    assert result.message == "process 1 of 2: injected failure in rank 1"
    assert "\n" not in result.message
    assert not out.exists()
    assert "another process (1 of 2) failed" in result.stderr[0]


@pytest.mark.slow
def test_a_rank_that_hangs_is_given_up_after_the_timeout(tmp_path):
    result, out = _launch(tmp_path, "hang", ESSENCE_DIST_TIMEOUT="3")
    assert result.returncode == 2 and result.failed_rank == 0  # the survivor, with a clear error
    assert "did not answer in time" in result.message and "nothing was merged" in result.message
    assert not out.exists()


def test_a_broken_collective_becomes_a_distributed_error(monkeypatch):
    import torch.distributed as dist

    def fail(*_a, **_k):
        raise RuntimeError("Connection closed by peer")

    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda: 0)
    monkeypatch.setattr(dist, "get_world_size", lambda: 2)
    monkeypatch.setattr(dist, "get_backend", lambda: "gloo")
    monkeypatch.setattr(dist, "all_reduce", fail)
    with pytest.raises(DistributedError, match="another process stopped.*Connection closed by peer"):
        agree(None)
    own = SpecError("my own cause")
    with pytest.raises(SpecError, match="my own cause"):  # a process's own error beats the echo
        agree(own)
