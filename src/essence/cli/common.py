"""Options and plumbing shared by the CLI's commands: specs → model, data and slice; JSON; progress."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import stat
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from essence.core.data import ImageData
from essence.core.datasets import environment_data_root, load_dataset
from essence.core.errors import LayerNotFoundError, SpecError
from essence.core.models import LoadedModel, check_compatible, load_model
from essence.core.preprocessing import Preprocessing
from essence.core.slices import resolve_layer

ModelOpt = Annotated[
    str,
    typer.Option(
        "--model",
        "-m",
        help="demo:blurred|sharp, torchvision:ARCH, package.module:function (both with --weights), or PATH.pt",
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
    str, typer.Option("--data", "-d", help="demo:train|val|test, digits, folder:PATH, csv:PATH or npz:PATH")
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
    str, typer.Option("--granularity", help="channel (conv: summed over positions) or neuron")
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
    try:
        return Preprocessing.from_dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise SpecError(f"{path}: not a readable preprocessing recipe JSON ({exc})") from exc


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


def _apply_card(loaded: LoadedModel, weights: Path | None) -> None:
    """A JSON card beside the weights (``W.json``) supplies class names, recipe and default slice."""
    if weights is None:
        return
    card_path = Path(weights).with_suffix(".json")
    if not card_path.is_file():
        return
    try:
        card = json.loads(card_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SpecError(f"{card_path}: the model card beside the weights is not valid JSON ({exc})") from exc
    if not isinstance(card, dict):
        return
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
) -> Inputs:
    """Load and cross-check the model, data and slice named on the command line."""
    loaded = load_model_spec(model, weights, trust_pickle)
    recipe = recipe_for(loaded, size, blur, recipe_file)
    dataset = load_dataset(
        data,
        recipe,
        class_names=loaded.class_names,
        on_bad_image="skip" if skip_bad_images else "error",
        data_root=environment_data_root(),
    )
    if dataset.skipped:
        typer.echo(f"note: {len(dataset.skipped)} unreadable images were skipped", err=True)
    check_compatible(loaded, dataset)
    chosen = layer if layer is not None else loaded.default_layer
    if chosen is None and need_layer:
        raise LayerNotFoundError(
            f"{model} has no default slice: pass --layer (see `essence layers --model {model} --data {data}`)"
        )
    if chosen is not None:
        resolve_layer(loaded.module, chosen)
    return Inputs(loaded, dataset, chosen or "")


def check_granularity(value: str) -> str:
    if value not in ("channel", "neuron"):
        raise SpecError(f"--granularity {value!r} is not known: use channel or neuron")
    return value


def _clean(obj: Any) -> Any:
    """JSON-safe: NaN/inf → null, tuples → lists, numpy/torch scalars → Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, str):
        return _clean(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: Path | None, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` (see :func:`write_text_file`); ``-`` writes to stdout."""
    if path is None:
        return
    text = json.dumps(_clean(obj), indent=2, allow_nan=False) + "\n"
    if str(path) == "-":
        sys.stdout.write(text)
        return
    write_text_file(Path(path), text, "--json")


def write_text_file(path: Path, text: str, option: str) -> None:
    """Write ``text`` to ``path`` without replacing what is there with something of another kind.

    - A symlink is followed: its target is written, the link stays.
    - A FIFO, a character device (``/dev/null``, ``/dev/stdout``) or a socket is written through, never
      replaced (as root, replacing ``/dev/null`` would break the machine).
    - A regular file, or a new one, is written atomically: a temporary file beside it, flushed to disk and
      renamed into place, so a reader (or Ctrl-C) never sees half a file. An existing file keeps its mode;
      a new one gets the usual ``0666 & ~umask``.
    - A folder is refused.

    Raises:
        SpecError: the path is a folder, or cannot be written; the message names ``option`` and the fix.
    """
    target = Path(os.path.realpath(path))
    try:
        info: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        info = None
    except OSError as exc:
        raise SpecError(f"cannot write {path}: {exc.strerror or exc}; choose another {option} path") from exc
    try:
        if info is not None and stat.S_ISDIR(info.st_mode):
            raise SpecError(f"{option} {path} is a folder: name a file inside it")
        if info is not None and not stat.S_ISREG(info.st_mode):
            with open(target, "w", newline="") as f:
                f.write(text)
            return
        _replace_atomically(target, text, stat.S_IMODE(info.st_mode) if info is not None else None)
    except OSError as exc:
        raise SpecError(
            f"cannot write {path}: {exc.strerror or exc}; choose a writable {option} path (or free space)"
        ) from exc


def _replace_atomically(target: Path, text: str, mode: int | None) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode if mode is not None else 0o666 & ~_umask())
        os.replace(tmp, target)
    except BaseException:  # Ctrl-C included: no temporary file is left behind
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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
