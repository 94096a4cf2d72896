"""Sharded class profiles on PyTorch's own distributed engine (``torch.distributed``).

The per-class running sums (Σ v, Σ v², n) are additive, so a profile job splits the dataset over processes,
each computes its shard's sums, and one all-reduce (SUM) merges them: gloo on CPUs, NCCL on GPUs. Processes
are launched by ``torchrun``, or on one machine by ``essence precompute --distributed``
(:func:`~essence.core.scale.launch.launch_local`); either sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR`` and ``MASTER_PORT``, and this module reads them.

Failure model: before merging, every process says whether its shard succeeded (one small all-reduce), so a
Python error on one process stops all of them with a clear message; a process that dies outright (killed,
``os._exit``) breaks the collective on the others, which then raise :class:`DistributedError`; a process that
hangs is given up on after the collective timeout. In every case nothing is merged, so a caller that writes
only after :func:`sharded_class_profiles` returns writes nothing.

>>> with process_group():                                  # under torchrun
...     profiles = sharded_class_profiles(model, data, "layer3")
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from essence.core.analyses.profiles import ClassProfiles, checked_class_names
from essence.core.analyses.profiles import (
    merge_profiles as merge_profiles,  # its former home: the import still works
)
from essence.core.base.devices import resolve_device
from essence.core.base.errors import EssenceError, SpecError
from essence.core.engine.distributions import ClassConditional
from essence.core.engine.influence import Autocast, CancelFlag, Progress, influence
from essence.core.engine.quantities import Kind, OwnLabel
from essence.core.engine.slices import Granularity
from essence.core.engine.sums import InfluenceSums
from essence.core.inputs.data import labels_of

# Seconds a process waits in a collective for the others before giving up. Shards are balanced, so the
# wait is the difference between the slowest and the fastest shard plus rank 0's store look-up: 10 minutes
# leaves room for uneven machines, and a dead peer is noticed at once anyway (its sockets close).
DEFAULT_TIMEOUT_S = 600.0
TIMEOUT_ENV = "ESSENCE_DIST_TIMEOUT"
# Marks a failure that happened elsewhere (so a launcher can report the first cause, not its echoes).
PEER_FAILED = "another process"


class DistributedError(EssenceError):
    """The process group could not be formed, or another process failed: nothing was merged."""


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job.

    Attributes:
        rank: this process's index, ``0..world_size-1`` (rank 0 writes results).
        world_size: number of processes.
        local_rank: index on this machine (picks the GPU ``cuda:local_rank``).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environ(cls, environ: Mapping[str, str] | None = None) -> DistEnv | None:
        """The job read from torchrun's variables, or ``None`` when not launched by it.

        Raises:
            SpecError: the variables are present but malformed.
        """
        env = os.environ if environ is None else environ
        if "RANK" not in env or "WORLD_SIZE" not in env:
            return None
        try:
            rank, world = int(env["RANK"]), int(env["WORLD_SIZE"])
            local = int(env.get("LOCAL_RANK", rank))
        except ValueError as exc:
            raise SpecError(
                f"RANK/WORLD_SIZE/LOCAL_RANK must be integers ({exc}); launch with torchrun"
            ) from exc
        if world < 1 or not 0 <= rank < world:
            raise SpecError(f"RANK={rank} is not within WORLD_SIZE={world}; launch with torchrun")
        return cls(rank, world, local)


def launched_by_torchrun(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process is one of several started by torchrun (``WORLD_SIZE`` > 1)."""
    env = DistEnv.from_environ(environ)
    return env is not None and env.world_size > 1


def current() -> DistEnv:
    """This process's place in the initialised process group (a one-process job when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return DistEnv()
    env = DistEnv.from_environ()
    local = env.local_rank if env is not None else dist.get_rank()
    return DistEnv(dist.get_rank(), dist.get_world_size(), local)


def shard_indices(n: int, rank: int, world_size: int) -> np.ndarray:
    """The dataset positions of shard ``rank`` of ``world_size``: ``rank, rank + W, rank + 2W, ...``.

    Like ``DistributedSampler(shuffle=False)`` but without its padding: the shards are disjoint and cover
    ``0..n-1`` exactly once, so no instance is counted twice in the merged sums. Shard sizes differ by at most 1.

    Raises:
        SpecError: ``rank`` outside ``0..world_size-1``, or fewer instances than processes.
    """
    if world_size < 1 or not 0 <= rank < world_size:
        raise SpecError(f"rank {rank} is not within a world of {world_size} processes")
    if n < world_size:
        raise SpecError(
            f"{n} instances cannot be split over {world_size} processes: use at most {n} processes"
        )
    return np.arange(rank, n, world_size, dtype=np.int64)


def backend_for(device: torch.device) -> str:
    """NCCL for CUDA devices, gloo for the CPU."""
    return "nccl" if device.type == "cuda" else "gloo"


def device_for(device: str | torch.device, env: DistEnv) -> torch.device:
    """The device of this process: ``auto``/``cuda`` become ``cuda:LOCAL_RANK`` when CUDA is present."""
    dev = resolve_device(device)
    if dev.type == "cuda" and dev.index is None:
        count = torch.cuda.device_count()
        if env.world_size > 1 and env.local_rank >= count:
            raise SpecError(
                f"process {env.local_rank} on this machine has no GPU of its own ({count} present): start at "
                f"most {count} processes per machine, or use --device cpu"
            )
        return torch.device("cuda", env.local_rank % max(count, 1))
    return dev


def collective_timeout() -> float:
    """The collective timeout in seconds: ``$ESSENCE_DIST_TIMEOUT``, else :data:`DEFAULT_TIMEOUT_S`.

    Raises:
        SpecError: the variable is not a positive number.
    """
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        raise SpecError(f"{TIMEOUT_ENV}={raw!r}: give the collective timeout in seconds (a positive number)")
    return value


@contextmanager
def process_group(device: str | torch.device = "auto", *, timeout: float | None = None) -> Iterator[DistEnv]:
    """Join the job torchrun started (``env://``), and leave it on exit.

    A one-process run (no torchrun variables, or ``WORLD_SIZE=1``) forms no group and yields
    ``DistEnv()``; an already initialised group is used as it is (and left initialised).

    Args:
        device: the compute device; it picks the backend (NCCL for CUDA, gloo otherwise).
        timeout: seconds to wait in any collective (default :func:`collective_timeout`).

    Yields:
        This process's :class:`DistEnv`.

    Raises:
        DistributedError: the group cannot be formed (the others never arrived, a bad address).
    """
    if dist.is_available() and dist.is_initialized():
        yield current()
        return
    env = DistEnv.from_environ()
    if env is None or env.world_size == 1:
        yield env or DistEnv()
        return
    dev = device_for(device, env)
    wait = collective_timeout() if timeout is None else float(timeout)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    try:
        dist.init_process_group(
            backend_for(dev),
            init_method="env://",
            rank=env.rank,
            world_size=env.world_size,
            timeout=timedelta(seconds=wait),
        )
    except (RuntimeError, ValueError) as exc:
        raise DistributedError(
            f"process {env.rank} of {env.world_size} could not join the job at "
            f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')} within {wait:.0f} s: "
            f"{PEER_FAILED} did not arrive ({_first_line(exc)}); start every process with the same torchrun "
            "command"
        ) from exc
    try:
        yield env
    finally:
        dist.destroy_process_group()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def _reduce(tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> torch.Tensor:
    """All-reduce in place, turning a broken or timed-out collective into :class:`DistributedError`."""
    try:
        dist.all_reduce(tensor, op=op)
    except (RuntimeError, ValueError) as exc:  # gloo/NCCL report lost peers and timeouts as RuntimeError
        raise DistributedError(
            f"process {dist.get_rank()} of {dist.get_world_size()}: {PEER_FAILED} stopped or did not answer in "
            f"time ({_first_line(exc)}); nothing was merged or stored"
        ) from exc
    return tensor


def _comm_device() -> torch.device:
    """Where collective buffers live: NCCL reduces CUDA tensors only, gloo CPU ones."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree(error: BaseException | None) -> None:
    """Tell every process whether this one failed; raise if any did (its own error, or who failed).

    Every process must call it at the same point. A no-op without a process group (re-raises ``error``).

    Raises:
        The process's own ``error``; :class:`DistributedError` naming the failed processes otherwise.
    """
    if not (dist.is_available() and dist.is_initialized()):
        if error is not None:
            raise error
        return
    flags = torch.zeros(dist.get_world_size(), dtype=torch.float64, device=_comm_device())
    flags[dist.get_rank()] = float(error is not None)
    try:
        _reduce(flags)
    except DistributedError:
        if error is not None:
            raise error from None  # this process's own cause is the better message
        raise
    if error is not None:
        raise error
    failed = [int(r) for r in torch.nonzero(flags.cpu()).view(-1)]
    if failed:
        raise DistributedError(
            f"process {dist.get_rank()}: {PEER_FAILED} ({', '.join(map(str, failed))} of "
            f"{dist.get_world_size()}) failed; see its message. Nothing was merged or stored"
        )


def all_reduce_sums(sums: InfluenceSums) -> InfluenceSums:
    """The sums over every process's shard (identity without a process group).

    One all-reduce of one flat float64 buffer ``[sum | sumsq | count]``: counts are exact in float64 up to
    2**53 instances. Shapes are checked first, so mismatched shards fail with a message instead of a
    corrupted reduction.

    Raises:
        DistributedError: shards of different shapes, or a failed collective.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return sums
    dev = _comm_device()
    g, u = sums.sum.shape
    shape = torch.tensor([g, u, -g, -u], dtype=torch.float64, device=dev)
    _reduce(shape, dist.ReduceOp.MAX)
    if shape.tolist() != [g, u, -g, -u]:
        raise DistributedError(
            f"process {dist.get_rank()}: shards have different shapes (mine {g}×{u}; largest "
            f"{int(shape[0])}×{int(shape[1])}): every process must run the same model, slice and granularity"
        )
    flat = torch.cat([sums.sum.reshape(-1), sums.sumsq.reshape(-1), sums.count.to(torch.float64)]).to(
        dev, torch.float64
    )
    _reduce(flat)
    flat = flat.cpu()
    n = g * u
    return InfluenceSums(
        flat[:n].view(g, u).clone(),
        flat[n : 2 * n].view(g, u).clone(),
        flat[2 * n :].round().to(torch.int64),
    )


def sharded_class_profiles(
    model: nn.Module,
    data: object,
    layer: str,
    *,
    granularity: Granularity = "channel",
    kind: Kind = "logit",
    class_names: Sequence[str] | None = None,
    allow_empty: bool = False,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    autocast: Autocast = None,
    channels_last: bool = False,
    progress: Progress | None = None,
    cancel: CancelFlag = None,
) -> ClassProfiles:
    """Class profiles over the whole data, this process computing its shard; every process gets the result.

    Call it from every process of an initialised group (see :func:`process_group`); without one it computes
    everything in this process, so the same script runs alone and under torchrun. The result equals
    :func:`~essence.core.analyses.profiles.class_profiles` on the whole data up to float rounding (the same sums,
    added in another order).

    Args:
        model: the classifier (every process loads the same weights).
        data: an :class:`~essence.core.inputs.data.ImageData` or ``(x, labels)`` tensors: the *whole* dataset;
            each process reads only its shard (:func:`shard_indices`).
        layer, granularity, kind, class_names, allow_empty, batch_size, autocast: as in
            :func:`~essence.core.analyses.profiles.class_profiles`.
        device: ``auto`` picks ``cuda:LOCAL_RANK`` when CUDA is present, else the CPU.
        channels_last: see :func:`~essence.core.engine.influence.influence`.
        progress: ``(done, total)`` of this process's batches.
        cancel: as in :func:`~essence.core.engine.influence.influence` (cancelling one process stops all).

    Returns:
        :class:`~essence.core.analyses.profiles.ClassProfiles` ``[C, U]`` of the whole data (no instance vectors).

    Raises:
        EmptyClassError: a class has no instances in the whole data (unless ``allow_empty``).
        LabelMismatchError: the data's classes do not match the model's outputs.
        DistributedError: another process failed or did not answer; nothing was merged.
    """
    env = current()
    labels = labels_of(data)
    names = list(class_names or getattr(data, "class_names", None) or [])
    shard = shard_indices(len(labels), env.rank, env.world_size)
    dev = device_for(device, env)
    error: BaseException | None = None
    result = None
    try:
        result = influence(
            model,
            data,
            layer,
            OwnLabel(kind),
            ClassConditional(),
            granularity,
            batch_size=batch_size,
            device=dev,
            autocast=autocast,
            progress=progress,
            cancel=cancel,
            indices=shard if env.world_size > 1 else None,
            channels_last=channels_last,
        )
    except Exception as exc:  # told to the others before re-raising, so that no process waits in vain
        error = exc
    agree(error)
    assert result is not None
    sums = all_reduce_sums(result.sums)
    names = checked_class_names(names, sums.count, len(labels), allow_empty)
    return ClassProfiles.from_sums(
        sums,
        class_names=names,
        layer=layer,
        granularity=granularity,
        quantity=result.quantity,
        unit_shape=result.unit_shape,
    )


def any_process(flag: bool) -> bool:
    """Whether ``flag`` is true on any process (every process must call it; ``flag`` alone without a group).

    Raises:
        DistributedError: a failed collective.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return bool(flag)
    t = torch.tensor([float(flag)], dtype=torch.float64, device=_comm_device())
    return bool(_reduce(t, dist.ReduceOp.MAX).item() > 0)
