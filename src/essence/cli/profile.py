"""``essence profile`` and ``essence precompute``: every class's influence profile at a slice."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import typer

from essence.cli.common import Inputs, progress_bar
from essence.cli.options import (
    AllowEmptyOpt,
    BatchOpt,
    DeviceOpt,
    GranularityOpt,
    InputOptions,
    JsonOpt,
    KindOpt,
    NoCacheOpt,
    StoreOpt,
    as_args,
    with_option_groups,
)
from essence.cli.output import write_json

if TYPE_CHECKING:  # the engine is imported where it runs: ``essence profile --help`` needs no PyTorch
    from essence.core.analyses.profiles import ClassProfiles
    from essence.core.engine.activation_source import ActivationSource
    from essence.core.engine.quantities import Kind


def command_line() -> str:
    """The command as typed, for the store's runs table."""
    return " ".join(["essence", *sys.argv[1:]])


def check_no_empty_class(p: ClassProfiles) -> None:
    """Refuse stored profiles with an empty class (stored by a run that allowed them; this one does not).

    Raises:
        EmptyClassError: naming the empty classes and the fix.
    """
    from essence.core.analyses.profiles import checked_class_names

    checked_class_names(p.class_names, p.counts, int(p.counts.sum()), allow_empty=False)


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
) -> ClassProfiles:
    """Class profiles for the CLI, read through the store (``cached=True`` when served from it).

    Args:
        inputs: the model, data and slice.
        granularity, kind, batch_size, device: as in :func:`essence.core.class_profiles`.
        allow_empty: keep classes without instances.
        keep_instances: also keep each instance's vector and outputs.
        store: the store's path or URL (default: ``$ESSENCE_HOME/essence.sqlite``).
        no_cache: neither read nor write the store.
        refresh: recompute and replace what the store holds.

    Returns:
        :class:`ClassProfiles` ``[C, U]``.

    Raises:
        EmptyClassError: a class has no instances and ``allow_empty`` is off.
        StoreError: the store cannot be opened or written (``--no-cache`` works without it).
    """
    from essence.core.analyses.profiles import class_profiles

    def compute(activations: ActivationSource | None = None) -> ClassProfiles:
        with progress_bar(f"profiles at {inputs.layer}") as bar:
            return class_profiles(
                inputs.model.module,
                inputs.data,
                inputs.layer,
                granularity=granularity,  # type: ignore[arg-type]
                kind=kind,
                class_names=list(inputs.classes.names),
                allow_empty=allow_empty,
                keep_instances=keep_instances,
                batch_size=batch_size,
                device=device,
                progress=bar,
                activations=activations,
            )

    if no_cache:
        return compute()
    from essence.core.base.devices import resolve_device
    from essence.storage import RunInfo, Store

    with Store.open(store) as opened:
        source = opened.slice_source(inputs.model, inputs.data)  # the first pass at the slice stores its z
        profiles = opened.cached_profiles(
            inputs.model,
            inputs.data,
            inputs.layer,
            granularity,
            kind,
            lambda: compute(source),
            keep_instances=keep_instances,
            refresh=refresh,
            run_info=RunInfo(command=command_line(), device=resolve_device(device).type),
            activations=source,
        )
    if profiles.cached and not allow_empty:
        check_no_empty_class(profiles)  # stored by a run that allowed them; this one does not
    return profiles


def stored_activations(inputs: Inputs, store: str | None, no_cache: bool = False) -> ActivationSource | None:
    """The store's source of the stored z of ``inputs``' model and data, for the analyses that follow the profiles.

    A sweep or a diagnosis after :func:`compute_profiles` reads the slice's z from the store instead of running
    the layers below it (docs/store.md); pass the source as their ``activations=``.

    Args:
        inputs: the model, data and slice.
        store: the store's path or URL (default: ``$ESSENCE_HOME/essence.sqlite``).
        no_cache: the command bypasses the store: no source (``None``).

    Raises:
        StoreError: the store cannot be opened.
    """
    if no_cache:
        return None
    from essence.storage import Store

    with Store.open(store) as opened:
        return opened.slice_source(inputs.model, inputs.data)  # it reads the slice folder, not the database


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
        # A unit at 0 pushes neither way: "none" rather than zeros listed as the top of a sign.
        pos = ", ".join(f"{int(u)}:{float(p.mean[c, u]):+.3g}" for u in order[:top] if p.mean[c, u] > 0)
        neg = ", ".join(
            f"{int(u)}:{float(p.mean[c, u]):+.3g}" for u in order.flip(0)[:top] if p.mean[c, u] < 0
        )
        typer.echo(f"  {name} (n={int(p.counts[c])})  top + [{pos or 'none'}]  top − [{neg or 'none'}]")


@dataclass(frozen=True)
class ProfileRequest:
    """What ``profile`` and ``precompute`` are asked for on the command line (the same options for both)."""

    inputs: InputOptions
    granularity: GranularityOpt = "channel"
    kind: KindOpt = "logit"
    device: DeviceOpt = "auto"
    batch_size: BatchOpt = 64
    json_path: JsonOpt = None
    store: StoreOpt = None
    allow_empty: AllowEmptyOpt = False

    def load(self) -> Inputs:
        """The model, data and slice, loaded and cross-checked."""
        return self.inputs.load(batch_size=self.batch_size)

    def to_args(self) -> list[str]:
        """The command-line options that reproduce this request (for the processes of a sharded run)."""
        return as_args(self)


def run_profiles(
    request: ProfileRequest, *, no_cache: bool = False, refresh: bool = False, keep_instances: bool = False
) -> None:
    """Load the inputs, get the profiles through the store, print a summary and write the JSON."""
    inputs = request.load()
    import essence.storage  # noqa: F401  # imported before the clock starts: the time printed is the store's alone

    start = time.perf_counter()
    profiles = compute_profiles(
        inputs,
        granularity=request.granularity,
        kind=request.kind,  # type: ignore[arg-type]
        batch_size=request.batch_size,
        device=request.device,
        allow_empty=request.allow_empty,
        store=request.store,
        no_cache=no_cache,
        refresh=refresh,
        keep_instances=keep_instances,
    )
    print_summary(profiles, time.perf_counter() - start, stored=not no_cache)
    write_json(request.json_path, profiles.to_json(), inputs.data.preprocessing, inputs.classes)


@with_option_groups
def profile(request: ProfileRequest, no_cache: NoCacheOpt = False) -> None:
    """Every class's influence profile at a slice (q = the class's score, P = its instances)."""
    run_profiles(request, no_cache=no_cache)


def register(app: typer.Typer) -> None:
    """Add ``profile`` to the root app (``precompute``, its twin, is the store's: :mod:`essence.cli.store`)."""
    app.command("profile")(profile)
