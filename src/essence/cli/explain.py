"""``essence explain`` (one image: why class A, or A rather than B) and ``essence layers`` (which slice)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from essence.cli.common import (
    load_inputs,
    load_model_spec,
    parse_class_names,
    recipe_for,
    say_recipe,
    with_options,
)
from essence.cli.options import (
    METHOD,
    BatchOpt,
    BlurOpt,
    ClassNamesOpt,
    DeviceOpt,
    GranularityOpt,
    JsonOpt,
    KindOpt,
    LayerOpt,
    ModelOpt,
    RecipeOpt,
    SizeOpt,
    SkipBadOpt,
    TrustPickleOpt,
    WeightsOpt,
)
from essence.cli.output import write_json, write_text_file
from essence.core.base.errors import LayerNotFoundError

if TYPE_CHECKING:
    from essence.core.analyses.explanation import Explanation
    from essence.core.analyses.layer_choice import LayerSuggestion
    from essence.core.inputs.preprocessing import Preprocessing

ImageOpt = Annotated[Path, typer.Option("--image", help="the image file to explain")]
ClassAOpt = Annotated[str, typer.Option("--class", help="class A, by name or index")]
VsOpt = Annotated[str | None, typer.Option("--vs", help="class B: explain why A rather than B")]
TopUnitsOpt = Annotated[int, typer.Option("--top", min=1, help="top units to show (positive and negative)")]
MethodOpt = Annotated[str, METHOD.option("unit interpretation: saliency, guided or deconvnet")]
ConvertModeOpt = Annotated[
    bool, typer.Option("--convert-mode", help="convert a greyscale/colour image to the model's mode")
]
PanelOpt = Annotated[Path | None, typer.Option("--out", help="write a PNG panel to this path")]
ScoredDataOpt = Annotated[
    str | None, typer.Option("--data", "-d", help="data to score layers on (omit to only list them)")
]
LayersOpt = Annotated[
    str | None, typer.Option("--layers", help="comma-separated layers to score (default: top-level blocks)")
]
MassOpt = Annotated[float, typer.Option("--mass", help="share of |influence| counted (0.8: share80)")]
MinDepthOpt = Annotated[float, typer.Option("--min-depth", help="eligible depth window, lower end")]
MaxDepthOpt = Annotated[float, typer.Option("--max-depth", help="eligible depth window, upper end")]
MinUnitsOpt = Annotated[int, typer.Option("--min-units", help="fewest units of an eligible layer")]
MaxInstancesOpt = Annotated[
    int, typer.Option("--max-instances", help="score on a seeded sample of this many (0: all)")
]


def _as_applied(recipe: Preprocessing, image: Path) -> Preprocessing:
    """The recipe as applied to one image file: its scale by the file's bit depth, read from its header."""
    from PIL import Image

    from essence.core.inputs.preprocessing import image_depth

    if not image.is_file():  # opening a FIFO would block forever: read_image refuses it with its reason
        return recipe.for_container(None)
    try:
        with Image.open(image) as img:
            return recipe.for_files([image_depth(img)])
    except Exception:  # noqa: BLE001 - unreadable, or a bomb's header: read_image refuses it with its reason
        return recipe.for_container(None)


def _card_size(card: dict) -> tuple[int, ...] | None:
    """The input size (H, W) the model's card names, if any: an image of another size is refused, not guessed."""
    size = card.get("input_size") or card.get("image_size")
    return tuple(int(v) for v in size[-2:]) if isinstance(size, list | tuple) and len(size) >= 2 else None


def explain(
    model: ModelOpt,
    image: ImageOpt,
    cls: ClassAOpt,
    vs: VsOpt = None,
    weights: WeightsOpt = None,
    trust_pickle: TrustPickleOpt = False,
    layer: LayerOpt = None,
    top: TopUnitsOpt = 5,
    method: MethodOpt = "saliency",
    granularity: GranularityOpt = "channel",
    kind: KindOpt = "logit",
    size: SizeOpt = None,
    recipe_file: RecipeOpt = None,
    convert_mode: ConvertModeOpt = False,
    device: DeviceOpt = "auto",
    out: PanelOpt = None,
    json_path: JsonOpt = None,
    blur: BlurOpt = None,
    class_names: ClassNamesOpt = None,
) -> None:
    """Why the model gives one image class A (or A rather than B): top units and what they look at."""
    from essence.core.analyses.explanation import explain as explain_image
    from essence.core.analyses.render import render_panel
    from essence.core.inputs.cards import ClassOrder
    from essence.core.inputs.data import read_image
    from essence.core.inputs.preprocessing import Preprocessing

    loaded = load_model_spec(model, weights, trust_pickle, parse_class_names(class_names))
    recipe = recipe_for(loaded, size, blur, recipe_file) or with_options(Preprocessing(), size, blur)
    chosen = layer if layer is not None else loaded.default_layer
    if chosen is None:
        raise LayerNotFoundError(
            f"{model} has no default slice: pass --layer (see `essence layers --model {model}`)"
        )
    applied = _as_applied(recipe, image)  # the file's own range: / 255, or / 65535 for a 16-bit file
    say_recipe(applied)
    expected = _card_size(loaded.card)
    x = read_image(image, recipe, model=loaded.module, expected_size=expected, convert_mode=convert_mode)
    result = explain_image(
        loaded.module,
        x,
        cls,
        vs=vs,
        layer=chosen,
        top_k=top,
        method=method,  # type: ignore[arg-type]
        granularity=granularity,  # type: ignore[arg-type]
        kind=kind,  # type: ignore[arg-type]
        class_names=loaded.class_names,
        preprocessing=recipe,
        device=device,
    )
    # One image, no data: the outputs are the model's names, or only their indices ("index").
    classes = ClassOrder(
        tuple(result.class_names), loaded.class_source or ("model" if loaded.class_names else "index")
    )
    typer.echo(classes.describe())
    _print_explanation(result, image, chosen)
    if out is not None:
        png = io.BytesIO()
        render_panel(result).save(png, format="PNG")
        write_text_file(out, png.getvalue(), "--out")  # atomic; links and special files written through
        typer.echo(f"  panel written to {out}")
    write_json(json_path, result.to_json(), applied, classes)


def _print_explanation(result: Explanation, image: Path, layer: str) -> None:
    """The prediction, the question asked, the units for and against, and integrated gradients' check."""
    names = result.class_names
    typer.echo(
        f"{image.name}: predicted {names[result.prediction]!r} (p={float(result.probabilities[result.prediction]):.3f}); "
        f"{result.question} at {layer} ({result.quantity} = {result.quantity_value:+.4g})"
    )
    typer.echo(
        "  units for:     "
        + ", ".join(
            f"{int(u)}:{float(v):+.3g}" for u, v in zip(result.unit_ids, result.unit_influence, strict=True)
        )
    )
    typer.echo(
        "  units against: "
        + ", ".join(
            f"{int(u)}:{float(v):+.3g}"
            for u, v in zip(result.negative_ids, result.negative_influence, strict=True)
        )
    )
    typer.echo(
        f"  integrated gradients: Σ = {float(result.ig.sum()):+.4g} (completeness error {result.ig_error:+.2g})"
    )


def layers(
    model: ModelOpt,
    data: ScoredDataOpt = None,
    weights: WeightsOpt = None,
    trust_pickle: TrustPickleOpt = False,
    scored: LayersOpt = None,
    granularity: GranularityOpt = "channel",
    kind: KindOpt = "logit",
    mass: MassOpt = 0.8,
    min_depth: MinDepthOpt = 0.25,
    max_depth: MaxDepthOpt = 0.75,
    min_units: MinUnitsOpt = 8,
    max_instances: MaxInstancesOpt = 512,
    device: DeviceOpt = "auto",
    batch_size: BatchOpt = 64,
    json_path: JsonOpt = None,
    size: SizeOpt = None,
    blur: BlurOpt = None,
    recipe: RecipeOpt = None,
    skip_bad: SkipBadOpt = False,
    class_names: ClassNamesOpt = None,
) -> None:
    """List the model's layers; with --data, score how concentrated class influence is and suggest one."""
    from essence.core.analyses.layer_choice import suggest_layer

    if data is None:
        _list_layers(model, weights, trust_pickle, json_path)
        return
    inputs = load_inputs(
        model, weights, trust_pickle, data, None, need_layer=False,
        size=size, blur=blur, recipe_file=recipe, skip_bad_images=skip_bad, class_names=class_names,
    )  # fmt: skip
    chosen = [s.strip() for s in scored.split(",") if s.strip()] if scored else None
    default = inputs.model.default_layer
    if chosen is not None and default and default not in chosen:
        chosen.append(default)  # the card's slice is always scored beside the ones asked for
    result = suggest_layer(
        inputs.model.module,
        inputs.data,
        layers=chosen,
        mass=mass,
        min_depth=min_depth,
        max_depth=max_depth,
        min_units=min_units,
        kind=kind,  # type: ignore[arg-type]
        granularity=granularity,  # type: ignore[arg-type]
        max_instances=max_instances if max_instances > 0 else None,
        batch_size=batch_size,
        device=device,
    )
    _print_layer_scores(result, default)
    out = result.to_json()
    out["default_layer"] = default
    write_json(json_path, out, inputs.data.preprocessing, inputs.classes)


def _list_layers(model: str, weights: Path | None, trust_pickle: bool, json_path: Path | None) -> None:
    """Every module path of the model, with its type (what ``--layer`` takes)."""
    from essence.core.engine.slices import layer_names

    loaded = load_model_spec(model, weights, trust_pickle)
    typer.echo(f"layers of {loaded.name} (module paths for --layer; pass --data to score them):")
    for name, module in loaded.module.named_modules():
        if name:
            typer.echo(f"  {name:<32} {type(module).__name__}")
    write_json(json_path, {"all_layers": layer_names(loaded.module)}, loaded.preprocessing)


def _print_layer_scores(result: LayerSuggestion, default: str | None) -> None:
    """Each scored layer's concentration of influence and depth, the suggested one and the card's marked."""
    typer.echo(f"all layers: {', '.join(result.all_layers)}")
    typer.echo(f"{'layer':<24}{'output shape':<18}{'units':>6}{'share80':>9}{'gini':>7}{'depth':>7}")
    for s in result.layers:
        mark = "  ← suggested" if s.name == result.suggested else ("" if s.eligible else "  (not eligible)")
        mark += "  ← the model's default slice" if s.name == default else ""
        shape = "×".join(str(d) for d in s.output_shape)
        typer.echo(f"{s.name:<24}{shape:<18}{s.units:>6}{s.share80:>9.3f}{s.gini:>7.3f}{s.depth:>7.2f}{mark}")
    typer.echo(f"suggested slice: {result.reason}")
    if default:
        typer.echo(f"the model's default slice (its card): {default} — used when --layer is not given")


def register(app: typer.Typer) -> None:
    """Add ``explain`` and ``layers`` to the root app."""
    app.command("explain")(explain)
    app.command("layers")(layers)
