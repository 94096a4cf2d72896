"""``essence store info|export|prune`` and ``essence precompute``: look after the store and fill it."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Annotated

import typer

from essence.cli.options import JsonOpt, StoreOpt, with_option_groups
from essence.cli.output import write_json, write_text_file
from essence.cli.profile import ProfileRequest, run_profiles
from essence.core.base.errors import SpecError

VerdictsOpt = Annotated[
    Path | None,
    typer.Option(
        "--verdicts",
        help="write every verdict (full history) to FILE.csv, FILE.json or FILE.parquet; column latest marks "
        "each image's current verdict, reviewer_latest every reviewer's own latest verdict on it",
    ),
]
ProfilesOpt = Annotated[
    Path | None, typer.Option("--profiles", help="write every cached profile as JSON into folder DIR")
]
DatasetOpt = Annotated[str | None, typer.Option("--dataset", help="only this dataset fingerprint")]
OlderThanOpt = Annotated[
    float | None, typer.Option("--older-than", min=0, help="remove cached profiles older than DAYS")
]
ModelFingerprintOpt = Annotated[
    str | None,
    typer.Option(
        "--model", help="remove cached profiles of this model fingerprint (see `essence store info`)"
    ),
]
DryRunOpt = Annotated[bool, typer.Option("--dry-run", help="say what would be removed, remove nothing")]
SlicesOpt = Annotated[
    bool,
    typer.Option("--slices", help="remove every stored slice (z kept for follow-up questions; recomputed)"),
]
ForceOpt = Annotated[bool, typer.Option("--force", help="recompute and replace what the store holds")]
InstancesOpt = Annotated[
    bool, typer.Option("--instances", help="also store each instance's vector and outputs (for triage)")
]
DistributedOpt = Annotated[
    bool,
    typer.Option(
        "--distributed", help="shard the data over --nproc local processes (torch.distributed, gloo)"
    ),
]
NprocOpt = Annotated[int, typer.Option("--nproc", min=1, help="processes with --distributed")]


def _size(n: int | None) -> str:
    if n is None:
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n} B"


def info(store: str | None, json_path: Path | None) -> None:
    from essence.storage import Store
    from essence.storage.activations import LIMIT_ENV, slice_limit_bytes

    with Store.open(store) as opened:
        facts = opened.info()
    typer.echo(f"store: {facts.path or facts.url}")
    typer.echo(f"schema version: {facts.schema_version}")
    typer.echo(
        f"profiles: {facts.profiles} (per-instance matrices: {facts.matrices}), verdicts: {facts.verdicts}, "
        f"runs: {facts.runs}, size: {_size(facts.size_bytes)}"
    )
    typer.echo(
        f"stored slices (z for follow-up questions): {facts.slices}, {_size(facts.slice_bytes)} "
        f"(limit {_size(slice_limit_bytes())}, {LIMIT_ENV})"
    )
    if facts.recent_runs:
        typer.echo("recent runs:")
        for run in facts.recent_runs:
            took = f"{run.seconds:.1f} s" if run.seconds is not None else "—"
            typer.echo(
                f"  {run.created_at:%Y-%m-%d %H:%M} UTC  {run.kind}  {took} on {run.device or '?'}"
                f"@{run.host or '?'}  model {run.model_fp}  data {run.dataset_fp}  layer {run.layer}"
            )
            if run.command:
                typer.echo(f"      {run.command}")
    write_json(json_path, facts.to_json())


def export(store: str | None, verdicts: Path | None, profiles: Path | None, dataset: str | None) -> None:
    from essence.storage import Store

    if verdicts is None and profiles is None:
        raise SpecError("nothing to export: pass --verdicts FILE.csv|FILE.json and/or --profiles DIR")
    fmt = None
    if verdicts is not None:
        fmt = verdicts.suffix.lower().lstrip(".")
        if fmt not in ("csv", "json", "parquet"):
            raise SpecError(f"--verdicts {verdicts}: name a .csv or .json file (or .parquet)")
    with Store.open(store) as opened:
        if verdicts is not None:
            if fmt == "parquet":  # the JSON export's records, as a table with the same columns
                from essence.core.analyses.exports import VERDICT_COLUMNS, table_bytes

                records = json.loads(opened.export_verdicts("json", dataset_fp=dataset))["verdicts"]
                write_text_file(verdicts, table_bytes(records, VERDICT_COLUMNS, "parquet"), "--verdicts")
            else:
                write_text_file(verdicts, opened.export_verdicts(fmt, dataset_fp=dataset), "--verdicts")  # type: ignore[arg-type]
            written = opened.all_verdicts(dataset)
            reviewers = len({v.reviewer or "" for v in written})
            typer.echo(
                f"wrote {len(written)} verdicts (full history) to {verdicts}; {reviewers} reviewer(s), each one's "
                "latest verdict per image marked reviewer_latest"
            )
        if profiles is not None:
            written = 0
            for key in opened.profile_keys():
                if dataset is not None and key.dataset_fp != dataset:
                    continue
                got = opened.get_profiles(key)
                if got is None:  # pruned meanwhile
                    continue
                record = {**got.to_json(), "key": key.__dict__ | {"digest": key.digest()}}
                write_text_file(
                    profiles / f"profile-{key.digest()[:16]}.json",
                    json.dumps(record, indent=2) + "\n",
                    "--profiles",
                )
                written += 1
            typer.echo(f"wrote {written} profiles to {profiles}")


# Python's dates end in the year 9999: an age beyond that is no date at all (``inf`` or ``1e300`` overflowed).
MAX_AGE_DAYS = 1_000_000


def prune(
    store: str | None, older_than: float | None, model_fp: str | None, dry_run: bool, slices: bool = False
) -> None:
    from essence.storage import Store

    if older_than is not None and not (math.isfinite(older_than) and older_than <= MAX_AGE_DAYS):
        raise SpecError(
            f"--older-than {older_than:g} is not a number of days Essence can count back (at most "
            f"{MAX_AGE_DAYS:,}): give a finite age in days, e.g. --older-than 30"
        )
    with Store.open(store) as opened:
        report = opened.prune(older_than_days=older_than, model_fp=model_fp, slices=slices, dry_run=dry_run)
    verb = "would remove" if dry_run else "removed"
    typer.echo(
        f"{verb} {report.profiles} profiles ({report.matrices} per-instance matrices) and {report.blobs} "
        f"unreferenced matrix blobs ({_size(report.bytes_freed)}); verdicts are never removed"
    )
    typer.echo(f"{verb} {report.slices} stored slices ({_size(report.slice_bytes)})")
    if older_than is None and model_fp is None and not slices:
        typer.echo("(no --older-than, --model or --slices given: only unreferenced blobs are removed)")


def info_cmd(store: StoreOpt = None, json_path: JsonOpt = None) -> None:
    """Where the store is, its schema version, what it holds, and the recent runs."""
    info(store, json_path)


def export_cmd(
    verdicts: VerdictsOpt = None,
    profiles: ProfilesOpt = None,
    dataset: DatasetOpt = None,
    store: StoreOpt = None,
) -> None:
    """Export review verdicts (CSV or JSON, full history) and/or cached profiles (JSON files)."""
    export(store, verdicts, profiles, dataset)


def prune_cmd(
    older_than: OlderThanOpt = None,
    model_fp: ModelFingerprintOpt = None,
    dry_run: DryRunOpt = False,
    slices: SlicesOpt = False,
    store: StoreOpt = None,
) -> None:
    """Remove cached profiles (never verdicts) and stored slices by age (slices: last use) and/or model,
    and unreferenced matrix files."""
    prune(store, older_than, model_fp, dry_run, slices)


@with_option_groups
def precompute(
    request: ProfileRequest,
    force: ForceOpt = False,
    instances: InstancesOpt = False,
    distributed: DistributedOpt = False,
    nproc: NprocOpt = 2,
) -> None:
    """Compute class profiles into the store (with a progress bar) so later questions are instant.

    Also runs sharded: under ``torchrun --nproc-per-node N -m essence.cli precompute ...`` or with
    ``--distributed --nproc N`` (see docs/scale.md).
    """
    from essence.cli import shard

    if shard.wants_shards(distributed):
        shard.precompute(request, force=force, instances=instances, nproc=nproc)
        return
    run_profiles(request, refresh=force, keep_instances=instances)


def register(app: typer.Typer) -> None:
    """Add ``store info|export|prune`` and ``precompute`` to the root app."""
    store_app = typer.Typer(
        help="The store of cached profiles, runs and review verdicts.", no_args_is_help=True
    )
    store_app.command("info")(info_cmd)
    store_app.command("export")(export_cmd)
    store_app.command("prune")(prune_cmd)
    app.add_typer(store_app, name="store")
    app.command("precompute")(precompute)
