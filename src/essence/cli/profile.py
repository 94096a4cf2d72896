"""``essence profile`` and ``essence precompute``: every class's influence profile at a slice."""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from essence.cli.common import (
    BatchOpt,
    BlurOpt,
    ClassNamesOpt,
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
    check_granularity_option,
    load_inputs,
    progress_bar,
)
from essence.cli.output import write_json
from essence.core.base.errors import SpecError

if TYPE_CHECKING:  # the engine is imported where it runs: ``essence profile --help`` needs no PyTorch
    from essence.core.analyses.profiles import ClassProfiles
    from essence.core.engine.quantities import Kind

# The options ``profile`` and ``precompute`` share beyond those of every command (see ``common``).
KindOpt = Annotated[str, typer.Option("--kind", help="class score differentiated: logit or prob")]
AllowEmptyOpt = Annotated[
    bool, typer.Option("--allow-empty", help="keep classes with no instances (NaN rows)")
]


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

    def compute() -> ClassProfiles:
        with progress_bar(f"profiles at {inputs.layer}") as bar:
            return class_profiles(
                inputs.model.module,
                inputs.data,
                inputs.layer,
                granularity=granularity,  # type: ignore[arg-type]
                kind=kind,
                class_names=inputs.model.class_names or inputs.data.class_names,
                allow_empty=allow_empty,
                keep_instances=keep_instances,
                batch_size=batch_size,
                device=device,
                progress=bar,
            )

    if no_cache:
        return compute()
    from essence.core.base.devices import resolve_device
    from essence.core.engine.activation_source import set_default_slices
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
        # The rest of this command (a sweep, the diagnosis) reads the slice's stored z too (docs/store.md).
        set_default_slices(opened.slice_source(inputs.model, inputs.data))
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
        # A unit at 0 pushes neither way: "none" rather than zeros listed as the top of a sign.
        pos = ", ".join(f"{int(u)}:{float(p.mean[c, u]):+.3g}" for u in order[:top] if p.mean[c, u] > 0)
        neg = ", ".join(
            f"{int(u)}:{float(p.mean[c, u]):+.3g}" for u in order.flip(0)[:top] if p.mean[c, u] < 0
        )
        typer.echo(f"  {name} (n={int(p.counts[c])})  top + [{pos or 'none'}]  top − [{neg or 'none'}]")


@dataclass(frozen=True)
class ProfileRequest:
    """What ``profile`` and ``precompute`` are asked for on the command line (the same options for both)."""

    model: str
    data: str
    weights: Path | None = None
    trust_pickle: bool = False
    layer: str | None = None
    granularity: str = "channel"
    kind: str = "logit"
    device: str = "auto"
    batch_size: int = 64
    json_path: Path | None = None
    store: str | None = None
    allow_empty: bool = False
    size: tuple[int, int] | None = None
    blur: float | None = None
    recipe: Path | None = None
    skip_bad: bool = False
    class_names: str | None = None

    @classmethod
    def from_options(cls, options: Mapping[str, object]) -> ProfileRequest:
        """The request out of a command's options (its ``locals()``): the fields by name, the rest ignored."""
        return cls(**{f.name: options[f.name] for f in dataclasses.fields(cls)})  # type: ignore[arg-type]

    def check(self) -> None:
        """Refuse an unknown granularity or quantity kind before anything is loaded."""
        check_granularity_option(self.granularity)
        if self.kind not in ("logit", "prob"):
            raise SpecError(f"--kind {self.kind!r} is not known: use logit or prob")

    def load(self) -> Inputs:
        """The model, data and slice, loaded and cross-checked."""
        return load_inputs(
            self.model,
            self.weights,
            self.trust_pickle,
            self.data,
            self.layer,
            size=self.size,
            blur=self.blur,
            recipe_file=self.recipe,
            skip_bad_images=self.skip_bad,
            batch_size=self.batch_size,
            class_names=self.class_names,
        )

    def to_args(self) -> list[str]:
        """The command-line options that reproduce this request (for the processes of a sharded run)."""
        args = ["--model", self.model, "--data", self.data, "--granularity", self.granularity]
        args += ["--kind", self.kind, "--device", self.device, "--batch-size", str(self.batch_size)]
        optional = {"--weights": self.weights, "--layer": self.layer, "--json": self.json_path}
        optional |= {"--store": self.store, "--blur-sigma": self.blur, "--preprocessing": self.recipe}
        optional |= {"--class-names": self.class_names}
        for flag, value in optional.items():
            if value is not None:
                args += [flag, str(value)]
        if self.size is not None:
            args += ["--size", str(self.size[0]), str(self.size[1])]
        flags = {"--trust-pickle": self.trust_pickle, "--allow-empty": self.allow_empty}
        flags["--skip-bad-images"] = self.skip_bad
        return args + [flag for flag, on in flags.items() if on]


def run_profiles(
    request: ProfileRequest, *, no_cache: bool = False, refresh: bool = False, keep_instances: bool = False
) -> None:
    """Load the inputs, get the profiles through the store, print a summary and write the JSON."""
    request.check()
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


def register(app: typer.Typer) -> None:
    @app.command("profile")
    def profile(
        model: ModelOpt,
        data: DataOpt,
        weights: WeightsOpt = None,
        trust_pickle: TrustPickleOpt = False,
        layer: LayerOpt = None,
        granularity: GranularityOpt = "channel",
        kind: KindOpt = "logit",
        device: DeviceOpt = "auto",
        batch_size: BatchOpt = 64,
        json_path: JsonOpt = None,
        store: StoreOpt = None,
        no_cache: NoCacheOpt = False,
        allow_empty: AllowEmptyOpt = False,
        size: SizeOpt = None,
        blur: BlurOpt = None,
        recipe: RecipeOpt = None,
        skip_bad: SkipBadOpt = False,
        class_names: ClassNamesOpt = None,
    ) -> None:
        """Every class's influence profile at a slice (q = the class's score, P = its instances)."""
        run_profiles(ProfileRequest.from_options(locals()), no_cache=no_cache)
