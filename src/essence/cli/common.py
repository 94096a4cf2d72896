"""Plumbing shared by the CLI's commands: specs → model, data and slice; model cards; progress.

The options themselves are declared in :mod:`essence.cli.options`; writing the outputs (``--json`` and the files
of ``store export``) is :mod:`essence.cli.output`'s.

Model cards (docs/data.md): ``W.card.json`` beside the weights ``W.safetensors`` supplies class names, the
preprocessing recipe and the default slice. An older ``W.json`` is still read, but only when it is a valid card
(every key a card key) and not an Essence output: every JSON file Essence writes carries the marker key
``essence_output``, so ``--json W.json`` can never be taken for the model's card.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from essence.cli.output import write_json as write_json  # re-exported from their former home, for callers
from essence.cli.output import write_text_file as write_text_file  # that still import them from here
from essence.core.base.errors import LayerNotFoundError, SpecError

# Core's engine is imported inside the functions that use it: every command module imports this one, and
# ``essence --help`` or a mistyped option must not wait for PyTorch.
if TYPE_CHECKING:
    from essence.core.inputs.cards import ClassOrder
    from essence.core.inputs.data import ImageData
    from essence.core.inputs.models import LoadedModel
    from essence.core.inputs.preprocessing import Preprocessing

# The cards' names this module once imported, still found here (resolved on first use: see ``__getattr__``).
_FROM_CARDS = (
    "CARD_KEYS",
    "CARD_MARKER",
    "OUTPUT_MARKER",
    "ClassOrder",
    "card_path",
    "check_class_names",
    "class_order",
    "read_card",
    "with_class_names",
)


def __getattr__(name: str) -> Any:
    if name in _FROM_CARDS:
        from essence.core.inputs import cards

        return getattr(cards, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass
class Inputs:
    """A loaded model, dataset and slice, checked to fit each other, and the class order of the model's outputs."""

    model: LoadedModel
    data: ImageData
    layer: str
    classes: ClassOrder


def read_recipe(path: Path | None) -> Preprocessing | None:
    if path is None:
        return None
    from essence.core.base.files import read_json
    from essence.core.inputs.preprocessing import Preprocessing

    return Preprocessing.from_dict(read_json(path, "preprocessing recipe", SpecError))


def recipe_for(
    model: LoadedModel, size: tuple[int, int] | None, blur: float | None, recipe_file: Path | None
) -> Preprocessing | None:
    """The recipe file, else the model's recipe, with --size/--blur-sigma applied on top (``None``: neither a
    file nor the model has one: the data's own default applies, and :func:`load_data` puts the options on it)."""
    recipe = read_recipe(recipe_file) or model.preprocessing
    if recipe is None:
        return None
    return with_options(recipe, size, blur)


def with_options(recipe: Preprocessing, size: tuple[int, int] | None, blur: float | None) -> Preprocessing:
    """``--size`` and ``--blur-sigma`` on a recipe: each changes what it names and nothing else."""
    changes: dict[str, Any] = {}
    if size is not None:
        changes["size"] = tuple(size)
    if blur is not None:
        changes["blur_sigma"] = blur
    return dataclasses.replace(recipe, **changes) if changes else recipe


def load_data(
    loaded: LoadedModel,
    data: str,
    *,
    size: tuple[int, int] | None = None,
    blur: float | None = None,
    recipe_file: Path | None = None,
    skip_bad_images: bool = False,
) -> ImageData:
    """The data spec loaded for ``loaded``: its class names, its recipe (or the data's default) with the options."""
    from essence.core.inputs.datasets import environment_data_root, load_dataset

    recipe = recipe_for(loaded, size, blur, recipe_file)

    def load(r: Preprocessing | None) -> ImageData:
        return load_dataset(
            data,
            r,
            class_names=loaded.class_names,
            on_bad_image="skip" if skip_bad_images else "error",
            data_root=environment_data_root(),
        )

    dataset = load(recipe)
    if recipe is None and (
        size is not None or blur is not None
    ):  # the data's default recipe, with the options
        dataset = load(with_options(dataset.preprocessing, size, blur))
    return dataset


def load_model_spec(
    model: str, weights: Path | None, trust_pickle: bool, class_names: list[str] | None = None
) -> LoadedModel:
    """The model, its card applied by core (:mod:`essence.core.inputs.cards`), and ``--class-names`` on top."""
    from essence.core.inputs.cards import with_class_names
    from essence.core.inputs.models import load_model

    return with_class_names(load_model(model, weights, trust_pickle=trust_pickle), class_names)


def parse_class_names(text: str | None) -> list[str] | None:
    """``--class-names normal,nodule,opacity`` → the names in output order (``None`` when not given).

    Raises:
        SpecError: an empty, repeated or unprintable name.
    """
    if text is None:
        return None
    from essence.core.inputs.cards import check_class_names

    return check_class_names([n.strip() for n in text.split(",")], "--class-names")


def load_inputs(
    model: str,
    weights: Path | None,
    trust_pickle: bool,
    data: str,
    layer: str | None,
    *,
    size: tuple[int, int] | None = None,
    blur: float | None = None,
    recipe_file: Path | None = None,
    skip_bad_images: bool = False,
    need_layer: bool = True,
    batch_size: int | None = None,
    class_names: str | None = None,
) -> Inputs:
    """Load and cross-check the model, data and slice named on the command line (and, given ``batch_size``,
    that one batch of the preprocessed images fits in memory, before the model runs on any).

    Raises:
        ClassOrderError: the model names no classes and the data's class order would be a guess.
    """
    from essence.core.engine.slices import resolve_layer
    from essence.core.inputs.cards import class_order
    from essence.core.inputs.models import check_compatible

    loaded = load_model_spec(model, weights, trust_pickle, parse_class_names(class_names))
    dataset = load_data(
        loaded, data, size=size, blur=blur, recipe_file=recipe_file, skip_bad_images=skip_bad_images
    )
    if batch_size is not None:
        dataset.check_batch_memory(batch_size)
    if dataset.skipped:
        typer.echo(f"note: {len(dataset.skipped)} unreadable images were skipped", err=True)
    say_recipe(dataset.preprocessing)
    check_compatible(loaded, dataset)
    classes = class_order(loaded, dataset)
    typer.echo(classes.describe())
    chosen = layer if layer is not None else loaded.default_layer
    if chosen is None and need_layer:
        raise LayerNotFoundError(
            f"{model} has no default slice: pass --layer (see `essence layers --model {model} --data {data}`)"
        )
    if chosen is not None:
        resolve_layer(loaded.module, chosen)
    return Inputs(loaded, dataset, chosen or "", classes)


def say_recipe(recipe: Preprocessing | None, who: str = "") -> None:
    """Print the recipe as applied (one line): it is part of the question asked of the model."""
    described = recipe.describe() if recipe is not None else "none (the inputs are used as they are)"
    typer.echo(f"preprocessing{f' of {who}' if who else ''}: {described}")


@contextlib.contextmanager
def progress_bar(description: str) -> Iterator[Callable[[int, int], None]]:
    """A rich progress bar on stderr (silent when stderr is not a terminal); yields a ``(done, total)`` callback."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    console = Console(stderr=True)
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as bar:
        task = bar.add_task(description, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update
