"""``essence compare``: an old model against a retrained one on the same images."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from essence.cli.common import load_data, load_model_spec, parse_class_names, say_recipe
from essence.cli.options import (
    MATCH,
    BatchOpt,
    DeviceOpt,
    GranularityOpt,
    InputOptions,
    JsonOpt,
    KindOpt,
    with_option_groups,
)
from essence.cli.output import write_json
from essence.core.base.errors import LabelMismatchError, LayerNotFoundError

if TYPE_CHECKING:
    from essence.core.analyses.comparison import Comparison
    from essence.core.inputs.cards import ClassOrder
    from essence.core.inputs.data import ImageData
    from essence.core.inputs.models import LoadedModel

AgainstOpt = Annotated[
    str, typer.Option("--against", help="the retrained model (same spec forms as --model)")
]
AgainstWeightsOpt = Annotated[Path | None, typer.Option("--against-weights", help="weights of --against")]
LayerBOpt = Annotated[str | None, typer.Option("--layer-b", help="B's slice (default: --layer)")]
MatchOpt = Annotated[str, MATCH.option("signed: maximise Σ corr (default); abs: maximise Σ |corr|")]
ThresholdOpt = Annotated[float, typer.Option("--threshold", help="correlation of a good unit match")]
PartialOpt = Annotated[
    bool, typer.Option("--partial", help="match slices of different widths (narrower side matched)")
]
NoDiagnoseOpt = Annotated[bool, typer.Option("--no-diagnose", help="skip each side's diagnosis")]


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


def _load_both(
    inputs: InputOptions, against: str, weights_b: Path | None
) -> tuple[dict[str, LoadedModel], dict[str, ImageData], dict[str, ClassOrder]]:
    """Both models and the same images, each read with its own model's recipe (the recipe is part of what
    changed), checked to fit their model and to name the same classes."""
    from essence.core.inputs.cards import class_order
    from essence.core.inputs.models import check_compatible

    names_given = parse_class_names(inputs.class_names)
    models = {
        "a": load_model_spec(inputs.model, inputs.weights, inputs.trust_pickle, names_given),
        "b": load_model_spec(against, weights_b, inputs.trust_pickle, names_given),
    }
    names_a, names_b = models["a"].class_names, models["b"].class_names
    if names_a and names_b and names_a != names_b:
        raise LabelMismatchError(
            f"{inputs.model} and {against} name their classes differently ({names_a[:5]} vs {names_b[:5]}): "
            "compare models of the same classes"
        )
    options = {"size": inputs.size, "blur": inputs.blur, "recipe_file": inputs.recipe}
    data = {
        k: load_data(m, inputs.data, skip_bad_images=inputs.skip_bad, **options) for k, m in models.items()
    }  # type: ignore[arg-type]
    for k, m in models.items():
        check_compatible(m, data[k])
    classes = {k: class_order(m, data[k]) for k, m in models.items()}
    say_recipe(data["a"].preprocessing, "A")
    say_recipe(data["b"].preprocessing, "B")
    typer.echo(f"A: {classes['a'].describe()}")
    typer.echo(f"B: {classes['b'].describe()}")
    return models, data, classes


@with_option_groups
def compare(
    inputs: InputOptions,
    against: AgainstOpt,
    weights_b: AgainstWeightsOpt = None,
    layer_b: LayerBOpt = None,
    granularity: GranularityOpt = "channel",
    kind: KindOpt = "logit",
    match: MatchOpt = "signed",
    threshold: ThresholdOpt = 0.5,
    partial: PartialOpt = False,
    no_diagnose: NoDiagnoseOpt = False,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 64,
    json_path: JsonOpt = None,
) -> None:
    """Old (--model) against retrained (--against) on the same images: deltas, changed predictions, units."""
    from essence.core.analyses.comparison import compare_models

    models, data, classes = _load_both(inputs, against, weights_b)
    layer = inputs.layer
    la = layer if layer is not None else models["a"].default_layer
    if la is None:
        raise LayerNotFoundError(
            f"{inputs.model} has no default slice: pass --layer (see `essence layers --model {inputs.model}`)"
        )
    lb = layer_b if layer_b is not None else (layer if layer is not None else models["b"].default_layer or la)
    result = compare_models(
        models["a"].module,
        models["b"].module,
        data["a"],
        la,
        lb,
        data_b=data["b"],
        names=(model_label(models["a"], inputs.weights), model_label(models["b"], weights_b)),
        granularity=granularity,  # type: ignore[arg-type]
        kind=kind,  # type: ignore[arg-type]
        match=match,  # type: ignore[arg-type]
        threshold=threshold,
        allow_partial=partial,
        diagnose=not no_diagnose,
        batch_size=batch_size,
        device=device,
    )
    _print_comparison(result, la, lb, inputs.data)
    preprocessing = {"a": data["a"].preprocessing, "b": data["b"].preprocessing}
    write_json(json_path, result.to_json(), preprocessing, classes)


def _print_comparison(result: Comparison, la: str, lb: str, data: str) -> None:
    """Per class A → B, the unit matching, the changed predictions and each side's diagnosis."""
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
    _print_diagnoses(result)


def _print_diagnoses(result: Comparison) -> None:
    if result.diagnosis_note:
        typer.echo(f"diagnosis: {result.diagnosis_note}")
        return
    flagged = [c for c in result.classes if c.diagnosis_a != "ok" or c.diagnosis_b != "ok"]
    if not flagged:
        typer.echo("diagnosis: every class ok in both models")
    for c in flagged:
        yes = {True: "yes", False: "no", None: "?"}
        typer.echo(
            f"diagnosis of {c.name!r}: {c.diagnosis_a} → {c.diagnosis_b} "
            f"(expert found: {yes[c.expert_a]} → {yes[c.expert_b]})"
        )


def register(app: typer.Typer) -> None:
    """Add ``compare`` to the root app."""
    app.command("compare")(compare)
