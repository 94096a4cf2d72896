"""``essence card``: write a model's card from the options a user already passed, so the next command needs none."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from essence.cli.common import load_model_spec, parse_class_names, recipe_for, with_options
from essence.cli.options import (
    IMAGE_MODE,
    BlurOpt,
    ClassNamesOpt,
    LayerOpt,
    ModelOpt,
    RecipeOpt,
    SizeOpt,
    TrustPickleOpt,
    WeightsOpt,
)
from essence.core.base.errors import SpecError

ModeOpt = Annotated[str | None, IMAGE_MODE.option("image mode the model takes: L (greyscale) or RGB")]


def run_card(
    model: str,
    *,
    weights: Path | None = None,
    trust_pickle: bool = False,
    class_names: str | None = None,
    layer: str | None = None,
    size: tuple[int, int] | None = None,
    blur: float | None = None,
    recipe: Path | None = None,
    mode: str | None = None,
) -> Path:
    """Write ``model.card.json`` beside the model file (``W.card.json`` beside ``--weights W``).

    What the model already knows (an existing card) is kept unless an option replaces it.

    Raises:
        SpecError: a model with no file to put a card beside, no class names, or a wrong layer.
    """
    from essence.core.engine.slices import resolve_layer
    from essence.core.inputs.cards import model_file_of, write_card
    from essence.core.inputs.preprocessing import Preprocessing

    loaded = load_model_spec(model, weights, trust_pickle, parse_class_names(class_names))
    target = model_file_of(model, weights)
    if target is None or not target.is_file():
        raise SpecError(
            f"{model} has no model file to put a card beside: a card belongs beside --weights W, model.pt2 "
            "or model.onnx"
        )
    if layer is not None:
        resolve_layer(loaded.module, layer)
        loaded.default_layer = layer
    chosen = recipe_for(loaded, size, blur, recipe)
    if chosen is None and (size is not None or blur is not None or mode is not None):
        chosen = with_options(Preprocessing(), size, blur)
    if mode is not None:
        base = (chosen or Preprocessing()).to_dict()
        want = 1 if mode == "L" else 3
        if len(base["mean"]) != want:  # one value per channel of the new mode: the first one, repeated
            base["mean"], base["std"] = [base["mean"][0]] * want, [base["std"][0]] * want
        chosen = Preprocessing.from_dict({**base, "mode": mode})
    if not loaded.class_names:
        raise SpecError(
            f"{model} names no classes: pass --class-names with its classes in output order to write its card"
        )
    return write_card(loaded, target, chosen)


def card(
    model: ModelOpt,
    weights: WeightsOpt = None,
    trust_pickle: TrustPickleOpt = False,
    class_names: ClassNamesOpt = None,
    layer: LayerOpt = None,
    size: SizeOpt = None,
    blur: BlurOpt = None,
    recipe: RecipeOpt = None,
    mode: ModeOpt = None,
) -> None:
    """Write the model's card (class names in output order, recipe, default slice) beside its file."""
    path = run_card(
        model,
        weights=weights,
        trust_pickle=trust_pickle,
        class_names=class_names,
        layer=layer,
        size=size,
        blur=blur,
        recipe=recipe,
        mode=mode,
    )
    typer.echo(f"wrote {path}: the next command on this model reads it (no --class-names needed)")


def register(app: typer.Typer) -> None:
    """Add ``card`` to the root app."""
    app.command("card")(card)
