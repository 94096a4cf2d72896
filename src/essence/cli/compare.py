"""``essence compare``: an old model against a retrained one on the same images."""

from __future__ import annotations

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
    JsonOpt,
    LayerOpt,
    ModelOpt,
    RecipeOpt,
    SizeOpt,
    SkipBadOpt,
    TrustPickleOpt,
    WeightsOpt,
    check_granularity_option,
    load_data,
    load_model_spec,
    parse_class_names,
    say_recipe,
)
from essence.cli.output import write_json
from essence.core.base.errors import LabelMismatchError, LayerNotFoundError, SpecError

if TYPE_CHECKING:
    from essence.core.inputs.models import LoadedModel


def _fmt(v: float) -> str:
    return "  —  " if v != v else f"{v:5.2f}"  # NaN: never predicted / no instances


def model_label(model: LoadedModel, weights: Path | None) -> str:
    """A model named by its spec (or card name) and its weights file: two models of one architecture differ.

    Examples:
        >>> from essence.core.inputs.models import LoadedModel
        >>> model_label(LoadedModel(None, "torchvision:resnet18", "0"), Path("runs/v2.safetensors"))
        'torchvision:resnet18 (v2.safetensors)'
    """
    return f"{model.name} ({Path(weights).name})" if weights is not None else model.name


def run_compare(
    model: str,
    against: str,
    data: str,
    *,
    weights: Path | None = None,
    weights_b: Path | None = None,
    trust_pickle: bool = False,
    layer: str | None = None,
    layer_b: str | None = None,
    granularity: str = "channel",
    kind: str = "logit",
    match: str = "signed",
    threshold: float = 0.5,
    partial: bool = False,
    diagnose: bool = True,
    device: str = "auto",
    batch_size: int = 64,
    json_path: Path | None = None,
    size: tuple[int, int] | None = None,
    blur: float | None = None,
    recipe: Path | None = None,
    skip_bad: bool = False,
    class_names: str | None = None,
) -> None:
    from essence.core.analyses.comparison import compare_models

    check_granularity_option(granularity)
    if kind not in ("logit", "prob"):
        raise SpecError(f"--kind {kind!r}: use logit or prob")
    names_given = parse_class_names(class_names)
    model_a = load_model_spec(model, weights, trust_pickle, names_given)
    model_b = load_model_spec(against, weights_b, trust_pickle, names_given)
    # the same images, each model with its own preprocessing recipe (the recipe is part of what changed)
    if model_a.class_names and model_b.class_names and model_a.class_names != model_b.class_names:
        raise LabelMismatchError(
            f"{model} and {against} name their classes differently ({model_a.class_names[:5]} vs "
            f"{model_b.class_names[:5]}): compare models of the same classes"
        )
    from essence.core.inputs.cards import class_order
    from essence.core.inputs.models import check_compatible

    options = {"size": size, "blur": blur, "recipe_file": recipe, "skip_bad_images": skip_bad}
    data_a = load_data(model_a, data, **options)  # type: ignore[arg-type]
    data_b = load_data(model_b, data, **options)  # type: ignore[arg-type]
    check_compatible(model_a, data_a)
    check_compatible(model_b, data_b)
    classes = {"a": class_order(model_a, data_a), "b": class_order(model_b, data_b)}
    say_recipe(data_a.preprocessing, "A")
    say_recipe(data_b.preprocessing, "B")
    typer.echo(f"A: {classes['a'].describe()}")
    typer.echo(f"B: {classes['b'].describe()}")
    la = layer if layer is not None else model_a.default_layer
    if la is None:
        raise LayerNotFoundError(
            f"{model} has no default slice: pass --layer (see `essence layers --model {model}`)"
        )
    lb = layer_b if layer_b is not None else (layer if layer is not None else model_b.default_layer or la)
    result = compare_models(
        model_a.module,
        model_b.module,
        data_a,
        la,
        lb,
        data_b=data_b,
        names=(model_label(model_a, weights), model_label(model_b, weights_b)),
        granularity=granularity,  # type: ignore[arg-type]
        kind=kind,  # type: ignore[arg-type]
        match=match,  # type: ignore[arg-type]
        threshold=threshold,
        allow_partial=partial,
        diagnose=diagnose,
        batch_size=batch_size,
        device=device,
    )
    typer.echo(
        f"A = {result.a} ({la})   B = {result.b} ({lb})   on {data}: accuracy {result.accuracy_a:.3f} → "
        f"{result.accuracy_b:.3f}"
    )
    typer.echo(
        f"{'class':<16}{'n':>5}  {'recall A→B':>14}  {'precision A→B':>15}  {'predicted':>11}  cos  rank-r"
    )
    for c in result.classes:
        typer.echo(
            f"{c.name:<16}{c.support:>5}  {_fmt(c.recall_a)} → {_fmt(c.recall_b)}  {_fmt(c.precision_a)} → "
            f"{_fmt(c.precision_b)}   {c.predicted_a:>4} → {c.predicted_b:<4} {_fmt(c.drift.cosine)} "
            f"{_fmt(c.drift.spearman)}"
        )
    m = result.matching
    assert m is not None
    typer.echo(
        f"units matched: {len(m.pairs_a)} of {m.units_a}/{m.units_b}, mean correlation {m.mean_corr:.2f}, "
        f"{m.share_above:.0%} ≥ {m.threshold:g} ({m.mode})"
    )
    typer.echo(
        f"predictions changed: {len(result.fixed)} fixed, {len(result.broken)} broken, "
        f"{len(result.changed)} wrong both times but differently"
    )
    if result.diagnosis_note:
        typer.echo(f"diagnosis: {result.diagnosis_note}")
    else:
        flagged = [c for c in result.classes if c.diagnosis_a != "ok" or c.diagnosis_b != "ok"]
        if not flagged:
            typer.echo("diagnosis: every class ok in both models")
        for c in flagged:
            yes = {True: "yes", False: "no", None: "?"}
            typer.echo(
                f"diagnosis of {c.name!r}: {c.diagnosis_a} → {c.diagnosis_b} "
                f"(expert found: {yes[c.expert_a]} → {yes[c.expert_b]})"
            )
    write_json(json_path, result.to_json(), {"a": data_a.preprocessing, "b": data_b.preprocessing}, classes)


def register(app: typer.Typer) -> None:
    @app.command("compare")
    def compare(
        model: ModelOpt,
        against: Annotated[
            str, typer.Option("--against", help="the retrained model (same spec forms as --model)")
        ],
        data: DataOpt,
        weights: WeightsOpt = None,
        weights_b: Annotated[
            Path | None, typer.Option("--against-weights", help="weights of --against")
        ] = None,
        trust_pickle: TrustPickleOpt = False,
        layer: LayerOpt = None,
        layer_b: Annotated[str | None, typer.Option("--layer-b", help="B's slice (default: --layer)")] = None,
        granularity: GranularityOpt = "channel",
        kind: Annotated[
            str, typer.Option("--kind", help="class score of the profiles: logit or prob")
        ] = "logit",
        match: Annotated[
            str, typer.Option("--match", help="signed: maximise Σ corr (default); abs: maximise Σ |corr|")
        ] = "signed",
        threshold: Annotated[
            float, typer.Option("--threshold", help="correlation of a good unit match")
        ] = 0.5,
        partial: Annotated[
            bool, typer.Option("--partial", help="match slices of different widths (narrower side matched)")
        ] = False,
        no_diagnose: Annotated[
            bool, typer.Option("--no-diagnose", help="skip each side's diagnosis")
        ] = False,
        device: DeviceOpt = "auto",
        batch_size: BatchOpt = 64,
        json_path: JsonOpt = None,
        size: SizeOpt = None,
        blur: BlurOpt = None,
        recipe: RecipeOpt = None,
        skip_bad: SkipBadOpt = False,
        class_names: ClassNamesOpt = None,
    ) -> None:
        """Old (--model) against retrained (--against) on the same images: deltas, changed predictions, units."""
        if match not in ("signed", "abs"):
            raise SpecError(f"--match {match!r}: use signed or abs")
        run_compare(
            model,
            against,
            data,
            weights=weights,
            weights_b=weights_b,
            trust_pickle=trust_pickle,
            layer=layer,
            layer_b=layer_b,
            granularity=granularity,
            kind=kind,
            match=match,
            threshold=threshold,
            partial=partial,
            diagnose=not no_diagnose,
            device=device,
            batch_size=batch_size,
            json_path=json_path,
            size=size,
            blur=blur,
            recipe=recipe,
            skip_bad=skip_bad,
            class_names=class_names,
        )
