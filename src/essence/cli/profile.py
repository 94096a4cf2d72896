"""``essence profile`` and ``essence precompute``: every class's influence profile at a slice."""

from __future__ import annotations

import time
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
from essence.core.profiles import ClassProfiles, class_profiles
from essence.core.quantities import Kind


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
) -> ClassProfiles:
    """Class profiles for the CLI, with a progress bar."""
    with progress_bar(f"profiles at {inputs.layer}") as bar:
        return class_profiles(
            inputs.model.module,
            inputs.data,
            inputs.layer,
            granularity=granularity,  # type: ignore[arg-type]
            kind=kind,
            class_names=inputs.model.class_names or inputs.data.class_names,
            allow_empty=allow_empty,
            batch_size=batch_size,
            device=device,
            progress=bar,
        )


def print_summary(p: ClassProfiles, seconds: float, top: int = 5) -> None:
    origin = "served from the store" if p.cached else f"computed in {seconds:.1f} s"
    typer.echo(
        f"class profiles at {p.layer!r} ({p.granularity}, {p.quantity}, {p.num_units} units): {origin}"
    )
    for c, name in enumerate(p.class_names):
        order = p.order(c)
        pos = ", ".join(f"{int(u)}:{float(p.mean[c, u]):+.3g}" for u in order[:top])
        neg = ", ".join(f"{int(u)}:{float(p.mean[c, u]):+.3g}" for u in order.flip(0)[:top])
        typer.echo(f"  {name} (n={int(p.counts[c])})  top + [{pos}]  top − [{neg}]")


def _run(
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
) -> None:
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
    )
    print_summary(profiles, time.perf_counter() - start)
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
        _run(
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
