"""``essence precompute`` sharded over processes: under torchrun, or ``--distributed --nproc N`` on this machine.

Every process loads the same model and data and computes its shard; one all-reduce merges the sums
(:mod:`essence.core.scale.distributed`); rank 0 alone reads and writes the store, in one transaction, and only after
a successful merge, so a process that fails leaves the store as it was.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from contextlib import nullcontext

import typer

from essence.cli.common import progress_bar
from essence.cli.output import write_json
from essence.cli.profile import ProfileRequest, check_no_empty_class, command_line, print_summary
from essence.core.analyses.profiles import ClassProfiles
from essence.core.base.errors import SpecError
from essence.core.scale.distributed import (
    DistEnv,
    DistributedError,
    agree,
    any_process,
    device_for,
    launched_by_torchrun,
    process_group,
    sharded_class_profiles,
)
from essence.core.scale.launch import launch_local


def wants_shards(distributed: bool) -> bool:
    """Whether ``precompute`` runs sharded: asked for, or started by torchrun with more than one process."""
    return distributed or launched_by_torchrun()


def precompute(request: ProfileRequest, *, force: bool, instances: bool, nproc: int) -> None:
    """Sharded ``precompute``: start ``nproc`` local processes, or be one process of a torchrun job.

    Raises:
        SpecError: ``--instances`` (per-instance vectors stay with their shard), a bad ``--nproc``.
        DistributedError: a process failed (the message names which and why); nothing was stored.
    """
    if instances:
        raise SpecError(
            "--instances cannot be sharded (each process keeps only its own instances' vectors): run "
            "precompute --instances without --distributed or torchrun"
        )
    if DistEnv.from_environ() is None:
        _launch(nproc, request.to_args() + (["--force"] if force else []))
    else:
        run_process(request, force=force)


def _launch(nproc: int, args: list[str]) -> None:
    if nproc < 1:
        raise SpecError(f"--nproc {nproc}: start at least 1 process")
    start = time.perf_counter()
    result = launch_local([sys.executable, "-m", "essence.cli", "precompute", *args], nproc)
    sys.stdout.write(result.stdout)
    if result.returncode != 0:
        raise DistributedError(f"{result.message} (nothing was stored)")
    typer.echo(f"{nproc} processes in {time.perf_counter() - start:.1f} s (start-up included)")


def run_process(request: ProfileRequest, *, force: bool) -> None:
    """One process of the job: its shard, the merge, and (rank 0) the store and the output."""
    from essence.storage import ProfileKey, RunInfo, Store

    inputs = request.load()
    granularity, kind, device, store = request.granularity, request.kind, request.device, request.store
    names = list(inputs.classes.names)
    with process_group(device) as env:
        key = ProfileKey.for_profiles(inputs.model, inputs.data, inputs.layer, granularity, kind)
        hit: ClassProfiles | None = None
        error: BaseException | None = None
        if env.is_writer and not force:
            try:
                with Store.open(store) as opened:
                    hit = opened.get_profiles(key)
            except Exception as exc:  # every process must hear of it, or they would wait for rank 0
                error = exc
        agree(error)
        start = time.perf_counter()
        if any_process(hit is not None):
            if env.is_writer and hit is not None:
                if names and len(names) == len(hit.class_names):
                    hit = dataclasses.replace(hit, class_names=list(names))
                if not request.allow_empty:
                    check_no_empty_class(hit)
                print_summary(hit, time.perf_counter() - start)
                write_json(request.json_path, hit.to_json(), inputs.data.preprocessing, inputs.classes)
            return
        shown = (
            progress_bar(f"shard 1/{env.world_size} at {inputs.layer}") if env.is_writer else nullcontext()
        )
        with shown as bar:
            profiles = sharded_class_profiles(
                inputs.model.module,
                inputs.data,
                inputs.layer,
                granularity=granularity,  # type: ignore[arg-type]
                kind=kind,  # type: ignore[arg-type]
                class_names=names,
                allow_empty=request.allow_empty,
                batch_size=request.batch_size,
                device=device,
                progress=bar,
            )
        seconds = time.perf_counter() - start
        if not env.is_writer:
            return
        dev = device_for(device, env)
        info = RunInfo(
            command=command_line(),
            device=f"{dev.type} ×{env.world_size}" if env.world_size > 1 else dev.type,
            seconds=seconds,
            description=f"class profiles of {inputs.model.name} on {inputs.data.spec} at {inputs.layer}, "
            f"sharded over {env.world_size} processes",
            preprocessing=inputs.data.preprocessing.to_dict(),
        )
        with Store.open(store) as opened:
            opened.put_profiles(key, profiles, info)
        print_summary(profiles, seconds, stored=True)
        write_json(request.json_path, profiles.to_json(), inputs.data.preprocessing, inputs.classes)
