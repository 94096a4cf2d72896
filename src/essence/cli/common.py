"""Options and plumbing shared by the CLI's commands: specs → model, data and slice; model cards; progress.

Writing the outputs (``--json`` and the files of ``store export``) is :mod:`essence.cli.output`'s.

Model cards (docs/data.md): ``W.card.json`` beside the weights ``W.safetensors`` supplies class names, the
preprocessing recipe and the default slice. An older ``W.json`` is still read, but only when it is a valid card
(every key a card key) and not an Essence output: every JSON file Essence writes carries the marker key
``essence_output``, so ``--json W.json`` can never be taken for the model's card.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from essence.cli.output import OUTPUT_MARKER
from essence.cli.output import write_json as write_json  # re-exported from their former home, for callers
from essence.cli.output import write_text_file as write_text_file  # that still import them from here
from essence.core.data import ImageData
from essence.core.datasets import environment_data_root, load_dataset
from essence.core.errors import LayerNotFoundError, SpecError
from essence.core.files import read_json
from essence.core.models import LoadedModel, check_compatible, load_model
from essence.core.preprocessing import MAX_SIDE, Preprocessing
from essence.core.slices import resolve_layer

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="demo:blurred|sharp, torchvision:ARCH, timm:ARCH, monai:NETWORK, package.module:function (each with "
        "--weights), onnx:PATH.onnx, or PATH.pt2 (a torch.export program; TorchScript is refused)",
    ),
]
WeightsOpt = Annotated[
    Path | None, typer.Option("--weights", help="weights: .safetensors, or a state_dict .pt/.pth")
]
TrustPickleOpt = Annotated[
    bool,
    typer.Option("--trust-pickle", help="allow full pickles (they can run code): only for files you trust"),
]
DataOpt = Annotated[
    str,
    typer.Option(
        "--data", "-d", help="demo:train|val|test, digits, folder:PATH, csv:PATH, npz:PATH or dicom:PATH"
    ),
]
LayerOpt = Annotated[
    str | None, typer.Option("--layer", "-l", help="module path as model.named_modules() prints it")
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu or cuda")]
JsonOpt = Annotated[
    Path | None, typer.Option("--json", help="write the result as JSON to FILE ('-' for stdout)")
]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="instances per forward/backward pass")]
StoreOpt = Annotated[
    str | None,
    typer.Option("--store", help="store file or SQLAlchemy URL (default: $ESSENCE_HOME/essence.sqlite)"),
]
GranularityOpt = Annotated[
    str,
    typer.Option(
        "--granularity",
        help="channel (channels-first conv: summed over positions), neuron, or for [B,H,W,C] and [B,T,D] "
        "slices feature (last axis) or token",
    ),
]
SizeOpt = Annotated[
    tuple[int, int] | None, typer.Option("--size", help="resize images to H W (overrides the model's recipe)")
]
BlurOpt = Annotated[
    float | None, typer.Option("--blur-sigma", help="Gaussian blur σ in px (overrides the model's recipe)")
]
RecipeOpt = Annotated[
    Path | None, typer.Option("--preprocessing", help="JSON file of a preprocessing recipe")
]
SkipBadOpt = Annotated[
    bool, typer.Option("--skip-bad-images", help="leave unreadable images out (counted) instead of stopping")
]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="recompute even if the store has the answer")]


@dataclass
class Inputs:
    """A loaded model, dataset and slice, checked to fit each other."""

    model: LoadedModel
    data: ImageData
    layer: str


def read_recipe(path: Path | None) -> Preprocessing | None:
    if path is None:
        return None
    return Preprocessing.from_dict(read_json(path, "preprocessing recipe", SpecError))


def recipe_for(
    model: LoadedModel, size: tuple[int, int] | None, blur: float | None, recipe_file: Path | None
) -> Preprocessing | None:
    """The model's recipe, replaced by a recipe file, with --size/--blur-sigma applied on top."""
    recipe = read_recipe(recipe_file) or model.preprocessing
    if size is None and blur is None:
        return recipe
    recipe = recipe or Preprocessing()
    changes: dict[str, Any] = {}
    if size is not None:
        changes["size"] = tuple(size)
    if blur is not None:
        changes["blur_sigma"] = blur
    return dataclasses.replace(recipe, **changes)


def load_model_spec(model: str, weights: Path | None, trust_pickle: bool) -> LoadedModel:
    if weights is not None and Path(weights).is_dir():
        found = sorted(p.name for p in Path(weights).glob("*") if p.suffix in (".safetensors", ".pt", ".pth"))
        hint = f" (it holds {', '.join(found[:3])})" if found else ""
        raise SpecError(f"--weights {weights} is a folder{hint}: name the weights file inside it")
    loaded = load_model(model, weights, trust_pickle=trust_pickle)
    _apply_card(loaded, weights)
    return loaded


# A card may say which card schema it follows; 1 is the only one.
CARD_MARKER = "essence_card"
# What a card may hold: what Essence reads from it, and the facts the demo's cards record beside them.
CARD_KEYS = frozenset(
    {CARD_MARKER, "class_names", "preprocessing", "default_layer", "input_size", "image_size", "name"}
    | {"architecture", "arch_kwargs", "weights", "description", "seed", "data", "training", "metrics"}
)


def card_path(weights: Path) -> Path:
    """Where the model card of ``weights`` lies: ``W.card.json`` beside ``W.safetensors``."""
    return Path(weights).with_name(Path(weights).stem + ".card.json")


def read_card(weights: Path | None) -> tuple[dict[str, Any], Path] | None:
    """The model card beside ``weights``, if there is one (see the module docstring).

    Returns:
        ``(card, its path)``, or ``None``: no card, or only an older ``W.json`` that is not a card (an Essence
        output is passed over silently; any other such file with one warning line that names the fix).

    Raises:
        SpecError: a ``W.card.json`` that is not valid JSON, not an object, an Essence output, of an unknown
            schema, or with values of the wrong type.
    """
    if weights is None:
        return None
    path = card_path(weights)
    if os.path.lexists(path):  # a FIFO or a dangling link is refused by name, not passed over
        card = _read_json_object(path)
        if OUTPUT_MARKER in card:
            raise SpecError(
                f"{path} is an Essence output (it has {OUTPUT_MARKER!r}), not a model card: write the card "
                "(class_names, preprocessing, default_layer) there, and --json outputs elsewhere"
            )
        _check_card(card, path)
        return card, path
    legacy = Path(weights).with_suffix(".json")
    if not legacy.is_file():  # only a regular file is ever taken for an older card
        return None
    try:
        card = read_json(legacy, "model card", SpecError)
    except SpecError:
        card = None
    if isinstance(card, dict) and OUTPUT_MARKER in card:
        return None  # an Essence output written beside the weights: never a card
    unknown = sorted(map(str, set(card) - CARD_KEYS)) if isinstance(card, dict) else None
    if unknown is None or unknown:
        what = f"it has keys {unknown[:4]} that no card has" if unknown else "it is not a JSON object"
        warnings.warn(
            f"{legacy} is not read as the model card ({what}); a card beside {Path(weights).name} is named "
            f"{path.name}",
            UserWarning,
            stacklevel=2,
        )
        return None
    _check_card(card, legacy)
    return card, legacy


def _read_json_object(path: Path) -> dict[str, Any]:
    card = read_json(path, "model card", SpecError)
    if not isinstance(card, dict):
        raise SpecError(
            f"{path}: a model card is a JSON object of {sorted(CARD_KEYS)[:6]}..., got {type(card).__name__}"
        )
    return card


def _check_card(card: dict[str, Any], path: Path) -> None:
    """Refuse a card of another schema or with values of the wrong type, naming the key."""
    if card.get(CARD_MARKER, 1) != 1:
        raise SpecError(
            f"{path}: card schema {card[CARD_MARKER]!r} is not known: this Essence reads schema 1"
        )
    names = card.get("class_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str | int) for n in names)):
        raise SpecError(f"{path}: class_names must be a list of names, got {type(names).__name__}")
    if card.get("default_layer") is not None and not isinstance(card["default_layer"], str):
        raise SpecError(f"{path}: default_layer must be a module path (a string)")
    for key in ("input_size", "image_size"):
        size = card.get(key)
        if size is not None and not (
            isinstance(size, list)
            and 2 <= len(size) <= 4
            and all(isinstance(v, int) and not isinstance(v, bool) and 0 < v <= MAX_SIDE for v in size)
        ):
            raise SpecError(
                f"{path}: {key} must be a list of 2 to 4 positive whole numbers ([H, W] or [C, H, W]), got "
                f"{size!r:.60}; fix or remove it"
            )
    if card.get("preprocessing") is not None:
        try:
            Preprocessing.from_dict(card["preprocessing"])
        except SpecError as exc:
            raise SpecError(f"{path}: {exc}") from exc


def _apply_card(loaded: LoadedModel, weights: Path | None) -> None:
    """The model card beside the weights (:func:`read_card`) supplies class names, recipe and default slice."""
    found = read_card(weights)
    if found is None:
        return
    card, _ = found
    loaded.card = {**loaded.card, **card}
    if card.get("class_names"):
        loaded.class_names = [str(c) for c in card["class_names"]]
    if card.get("preprocessing"):
        loaded.preprocessing = Preprocessing.from_dict(card["preprocessing"])
    if card.get("default_layer"):
        loaded.default_layer = str(card["default_layer"])


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
) -> Inputs:
    """Load and cross-check the model, data and slice named on the command line (and, given ``batch_size``,
    that one batch of the preprocessed images fits in memory, before the model runs on any)."""
    loaded = load_model_spec(model, weights, trust_pickle)
    recipe = recipe_for(loaded, size, blur, recipe_file)
    dataset = load_dataset(
        data,
        recipe,
        class_names=loaded.class_names,
        on_bad_image="skip" if skip_bad_images else "error",
        data_root=environment_data_root(),
    )
    if batch_size is not None:
        dataset.check_batch_memory(batch_size)
    if dataset.skipped:
        typer.echo(f"note: {len(dataset.skipped)} unreadable images were skipped", err=True)
    say_recipe(dataset.preprocessing)
    check_compatible(loaded, dataset)
    chosen = layer if layer is not None else loaded.default_layer
    if chosen is None and need_layer:
        raise LayerNotFoundError(
            f"{model} has no default slice: pass --layer (see `essence layers --model {model} --data {data}`)"
        )
    if chosen is not None:
        resolve_layer(loaded.module, chosen)
    return Inputs(loaded, dataset, chosen or "")


def say_recipe(recipe: Preprocessing | None, who: str = "") -> None:
    """Print the recipe as applied (one line): it is part of the question asked of the model."""
    described = recipe.describe() if recipe is not None else "none (the inputs are used as they are)"
    typer.echo(f"preprocessing{f' of {who}' if who else ''}: {described}")


def check_granularity(value: str) -> str:
    from essence.core.slices import GRANULARITIES

    if value not in GRANULARITIES:
        raise SpecError(
            f"--granularity {value!r} is not known: use channel or neuron, or feature or token on [B, H, W, C] "
            "and [B, T, D] slices"
        )
    return value


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
