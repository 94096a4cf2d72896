"""``essence profile`` and ``essence precompute``: every class's influence profile at a slice."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import typer

from essence.cli.common import (
    BatchOpt,
    BlurOpt,
    DataOpt,
    DeviceOpt,
    GranularityOpt,
    Inputs,
    JsonOpt,
    LayerOpt,
    ModelOpt,
    NoCacheOpt,
    RecipeOpt,
    SizeOpt,
    SkipBadOpt,
    StoreOpt,
    TrustPickleOpt,
    WeightsOpt,
    check_granularity,
    load_inputs,
    progress_bar,
    write_json,
)
from essence.core.devices import resolve_device
from essence.core.errors import EmptyClassError
from essence.core.influence import InfluenceSums, Progress
from essence.core.profiles import ClassProfiles, class_profiles
from essence.core.quantities import Kind

# Combines this process's running sums with the other processes' (e.g. an all-reduce under torchrun).
MergeHook = Callable[[InfluenceSums], InfluenceSums]


def command_line() -> str:
    """The command as typed, for the store's runs table."""
    return " ".join(["essence", *sys.argv[1:]])


def compute_class_profiles(
    inputs: Inputs,
    *,
    granularity: str,
    kind: Kind,
    batch_size: int,
    device: str,
    allow_empty: bool = False,
    keep_instances: bool = False,
    progress: Progress | None = None,
    merge: MergeHook | None = None,
) -> ClassProfiles:
    """The computation behind ``profile`` and ``precompute``, without the store.

    Args:
        inputs: the model, data (this process's shard of it, when ``merge`` is given) and slice.
        granularity, kind, batch_size, device: as in :func:`essence.core.class_profiles`.
        allow_empty: keep classes without instances (checked after merging, when merging).
        keep_instances: also keep each instance's vector and outputs (not merged: they stay per shard).
        progress: a ``(done, total)`` callback.
        merge: combines the shard's :class:`InfluenceSums` with the other shards' (the sums are additive);
            the profiles are finalised from what it returns.

    Returns:
        :class:`ClassProfiles` ``[C, U]``.

    Raises:
        EmptyClassError: a class has no instances (after merging) and ``allow_empty`` is off.
    """
    names = inputs.model.class_names or inputs.data.class_names
    profiles = class_profiles(
        inputs.model.module,
        inputs.data,
        inputs.layer,
        granularity=granularity,  # type: ignore[arg-type]
        kind=kind,
        class_names=names,
        allow_empty=allow_empty or merge is not None,  # a shard may lack a class the whole data has
        keep_instances=keep_instances,
        batch_size=batch_size,
        device=device,
        progress=progress,
    )
    if merge is None:
        return profiles
    merged = ClassProfiles.from_sums(
        merge(profiles.sums),
        class_names=profiles.class_names,
        layer=profiles.layer,
        granularity=profiles.granularity,
        quantity=profiles.quantity,
        unit_shape=profiles.unit_shape,
    )
    if not allow_empty:
        check_no_empty_class(merged)
    return merged


def check_no_empty_class(p: ClassProfiles) -> None:
    empty = [p.class_names[i] for i in range(len(p.class_names)) if int(p.counts[i]) == 0]
    if empty:
        raise EmptyClassError(
            f"classes {empty} have no instances in the data: add their images, or allow empty classes "
            "(--allow-empty)"
        )


def compute_profiles(
    inputs: Inputs,
    *,
    granularity: str,
    kind: Kind,
    batch_size: int,
    device: str,
    allow_empty: bool = False,
    store: str | None = None,
    no_cache: bool = False,
    refresh: bool = False,
    keep_instances: bool = False,
    merge: MergeHook | None = None,
) -> ClassProfiles:
    """Class profiles for the CLI, read through the store (``cached=True`` when served from it).

    Args:
        inputs, granularity, kind, batch_size, device, allow_empty, keep_instances, merge: as in
            :func:`compute_class_profiles`.
        store: the store's path or URL (default: ``$ESSENCE_HOME/essence.sqlite``).
        no_cache: neither read nor write the store.
        refresh: recompute and replace what the store holds.

    Raises:
        StoreError: the store cannot be opened or written (``--no-cache`` works without it).
    """

    def compute() -> ClassProfiles:
        with progress_bar(f"profiles at {inputs.layer}") as bar:
            return compute_class_profiles(
                inputs,
                granularity=granularity,
                kind=kind,
                batch_size=batch_size,
                device=device,
                allow_empty=allow_empty,
                keep_instances=keep_instances,
                progress=bar,
                merge=merge,
            )

    if no_cache:
        return compute()
    from essence.storage import RunInfo, Store

    with Store.open(store) as opened:
        profiles = opened.cached_profiles(
            inputs.model,
            inputs.data,
            inputs.layer,
            granularity,
            kind,
            compute,
            keep_instances=keep_instances,
            refresh=refresh,
            run_info=RunInfo(command=command_line(), device=resolve_device(device).type),
        )
    if profiles.cached and not allow_empty:
        check_no_empty_class(profiles)  # stored by a run that allowed them; this one does not
    return profiles


def print_summary(p: ClassProfiles, seconds: float, top: int = 5, stored: bool = False) -> None:
    """Print where the profiles came from and each class's top units."""
    if p.cached:
        origin = f"served from the store in {seconds:.2f} s"
    else:
        origin = f"computed in {seconds:.1f} s" + (", stored" if stored else "")
    typer.echo(
        f"class profiles at {p.layer!r} ({p.granularity}, {p.quantity}, {p.num_units} units): {origin}"
    )
    for c, name in enumerate(p.class_names):
        order = p.order(c)
        pos = ", ".join(f"{int(u)}:{float(p.mean[c, u]):+.3g}" for u in order[:top])
        neg = ", ".join(f"{int(u)}:{float(p.mean[c, u]):+.3g}" for u in order.flip(0)[:top])
        typer.echo(f"  {name} (n={int(p.counts[c])})  top + [{pos}]  top − [{neg}]")


def run_profiles(
    model: str,
    weights: Path | None,
    trust_pickle: bool,
    data: str,
    layer: str | None,
    granularity: str,
    kind: str,
    device: str,
    batch_size: int,
    json_path: Path | None,
    store: str | None,
    no_cache: bool,
    allow_empty: bool,
    size: tuple[int, int] | None,
    blur: float | None,
    recipe: Path | None,
    skip_bad: bool,
    *,
    refresh: bool = False,
    keep_instances: bool = False,
) -> None:
    """Load the inputs, get the profiles through the store, print a summary and write the JSON."""
    check_granularity(granularity)
    if kind not in ("logit", "prob"):
        raise typer.BadParameter(f"--kind {kind!r}: use logit or prob")
    inputs = load_inputs(
        model,
        weights,
        trust_pickle,
        data,
        layer,
        size=size,
        blur=blur,
        recipe_file=recipe,
        skip_bad_images=skip_bad,
    )
    start = time.perf_counter()
    profiles = compute_profiles(
        inputs,
        granularity=granularity,
        kind=kind,
        batch_size=batch_size,
        device=device,  # type: ignore[arg-type]
        allow_empty=allow_empty,
        store=store,
        no_cache=no_cache,
        refresh=refresh,
        keep_instances=keep_instances,
    )
    print_summary(profiles, time.perf_counter() - start, stored=not no_cache)
    write_json(json_path, profiles.to_json())


def register(app: typer.Typer) -> None:
    @app.command("profile")
    def profile(
        model: ModelOpt,
        data: DataOpt,
        weights: WeightsOpt = None,
        trust_pickle: TrustPickleOpt = False,
        layer: LayerOpt = None,
        granularity: GranularityOpt = "channel",
        kind: str = typer.Option("logit", "--kind", help="class score differentiated: logit or prob"),
        device: DeviceOpt = "auto",
        batch_size: BatchOpt = 64,
        json_path: JsonOpt = None,
        store: StoreOpt = None,
        no_cache: NoCacheOpt = False,
        allow_empty: bool = typer.Option(
            False, "--allow-empty", help="keep classes with no instances (NaN rows)"
        ),
        size: SizeOpt = None,
        blur: BlurOpt = None,
        recipe: RecipeOpt = None,
        skip_bad: SkipBadOpt = False,
    ) -> None:
        """Every class's influence profile at a slice (q = the class's score, P = its instances)."""
        run_profiles(
            model,
            weights,
            trust_pickle,
            data,
            layer,
            granularity,
            kind,
            device,
            batch_size,
            json_path,
            store,
            no_cache,
            allow_empty,
            size,
            blur,
            recipe,
            skip_bad,
        )
