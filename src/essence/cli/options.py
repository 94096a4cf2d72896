"""The options the CLI's commands share, each declared once.

- Typed aliases (``layer: LayerOpt = None``): the flag, its short form and its help, written here only.
- Choices (``--kind``, ``--granularity``, ``--score``...): checked while the command line is parsed, so a bad
  value is one line and exit status 2 before anything is loaded, and without importing PyTorch. Their values are
  declared here, not read from core (that would import the engine); tests/cli/test_options.py keeps them equal.
- Option groups: :class:`InputOptions` (the model, its data and its slice) is one parameter of a command and
  its ten options on the command line; :func:`with_option_groups` expands it.
"""

from __future__ import annotations

import dataclasses
import inspect
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from essence.cli.common import Inputs, load_inputs


class UnknownChoice(typer.BadParameter):
    """A value outside an option's choices, worded as the CLI words its errors: ``--kind 'bogus' is not known:
    use logit or prob`` (click would start with ``Invalid value for``)."""

    def format_message(self) -> str:
        return self.message


@dataclass(frozen=True)
class Choice:
    """An option that takes one of a few words, refused while parsing when it is none of them.

    Args:
        flag: the option's long name, e.g. ``"--kind"``.
        values: the words it takes.
        fix: how the error says them, e.g. ``"logit or prob"`` (after ``use``).
        metavar: how ``--help`` shows the value; by default the words themselves, ``<logit|prob>``; a long
            list reads better in the option's help, behind a short name.
    """

    flag: str
    values: tuple[str, ...]
    fix: str
    metavar: str | None = None

    def check(self, value: str | None) -> str | None:
        """``value`` itself, or :class:`UnknownChoice` naming it and the words to use (``None``: not given)."""
        if value is not None and value not in self.values:
            raise UnknownChoice(f"{self.flag} {value!r} is not known: use {self.fix}")
        return value

    def option(self, help: str, *short: str) -> Any:
        """The option's declaration (for ``Annotated[str, ...]``), its words shown in ``--help``."""
        metavar = self.metavar or f"<{'|'.join(self.values)}>"
        return typer.Option(self.flag, *short, help=help, metavar=metavar, callback=self.check)


# Core's ``Kind``, ``GRANULARITIES``, ``SCORES``, ``METHODS``, ``MatchMode`` and recipe modes, in their order.
KINDS = ("logit", "prob")
GRANULARITIES = ("channel", "neuron", "feature", "token")
SCORES = (
    *("merged", "reasoning", "combined", "spearman", "kendall"),
    *("cosine", "mass", "doubt", "self_confidence", "mistakenness"),
)
METHODS = ("saliency", "guided", "deconvnet")
MATCH_MODES = ("signed", "abs")
IMAGE_MODES = ("RGB", "L")

KIND = Choice("--kind", KINDS, "logit or prob")
GRANULARITY = Choice(
    "--granularity",
    GRANULARITIES,
    "channel or neuron, or feature or token on [B, H, W, C] and [B, T, D] slices",
    metavar="<str>",
)
SCORE = Choice("--score", SCORES, f"one of {', '.join(SCORES)}", metavar="<str>")
METHOD = Choice("--method", METHODS, "saliency, guided or deconvnet")
MATCH = Choice("--match", MATCH_MODES, "signed or abs")
IMAGE_MODE = Choice("--mode", IMAGE_MODES, "L (greyscale) or RGB")

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
TrainDataOpt = Annotated[
    str | None,
    typer.Option(
        "--train-data",
        help="the data the model was trained on, as --data takes it (demo:train, folder:PATH, npz:PATH, ...): "
        "tells 'not learned' from 'not read out' by whether each class is in it, how often, and whether its "
        "images look like the evaluated ones",
    ),
]
LayerOpt = Annotated[
    str | None, typer.Option("--layer", "-l", help="module path as model.named_modules() prints it")
]
ClassNamesOpt = Annotated[
    str | None,
    typer.Option(
        "--class-names",
        help="the model's classes in output order, comma-separated (overrides its card): needed when the model "
        "names none and the data names its classes",
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
GranularityOpt = Annotated[
    str,
    GRANULARITY.option(
        "channel (channels-first conv: summed over positions), neuron, or for [B,H,W,C] and [B,T,D] "
        "slices feature (last axis) or token"
    ),
]
KindOpt = Annotated[str, KIND.option("class score differentiated: logit or prob")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto (CUDA when present), cpu or cuda")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="instances per forward/backward pass")]
JsonOpt = Annotated[
    Path | None, typer.Option("--json", help="write the result as JSON to FILE ('-' for stdout)")
]
StoreOpt = Annotated[
    str | None,
    typer.Option("--store", help="store file or SQLAlchemy URL (default: $ESSENCE_HOME/essence.sqlite)"),
]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="recompute even if the store has the answer")]
ShortcutsOpt = Annotated[
    bool,
    typer.Option(
        "--shortcuts",
        help="look among the flagged images for groups that share why-flagged units: where that evidence lies, "
        "and how many predictions change when it is covered (against a random region of the same size)",
    ),
]
ShortcutTopOpt = Annotated[
    int,
    typer.Option(
        "--shortcut-top", min=1, help="flagged images searched for --shortcuts: the queue's first N"
    ),
]
ShortcutMapsOpt = Annotated[
    Path | None,
    typer.Option(
        "--shortcut-maps",
        help="write each group's aggregated saliency as a PNG into this folder (implies --shortcuts)",
    ),
]
AllowEmptyOpt = Annotated[
    bool, typer.Option("--allow-empty", help="keep classes with no instances (NaN rows)")
]


@dataclass(frozen=True)
class InputOptions:
    """The options that name a model, its data and its slice, with what changes how the data is read."""

    model: ModelOpt
    data: DataOpt
    weights: WeightsOpt = None
    trust_pickle: TrustPickleOpt = False
    layer: LayerOpt = None
    class_names: ClassNamesOpt = None
    size: SizeOpt = None
    blur: BlurOpt = None
    recipe: RecipeOpt = None
    skip_bad: SkipBadOpt = False

    def load(self, *, batch_size: int | None = None) -> Inputs:
        """The model, data and slice, loaded and cross-checked (:func:`essence.cli.common.load_inputs`)."""
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
            batch_size=batch_size,
            class_names=self.class_names,
        )


def _is_group(annotation: object) -> bool:
    return isinstance(annotation, type) and dataclasses.is_dataclass(annotation)


def _fields(group: type) -> list[tuple[dataclasses.Field, Any]]:
    """Each field of an option group with its annotation (the ``Annotated`` alias, extras kept)."""
    hints = typing.get_type_hints(group, include_extras=True)
    return [(f, hints[f.name]) for f in dataclasses.fields(group)]


def _parameters(group: type) -> list[inspect.Parameter]:
    """The command-line parameters of an option group, nested groups expanded in place."""
    found: list[inspect.Parameter] = []
    for f, hint in _fields(group):
        if _is_group(hint):
            found += _parameters(hint)
            continue
        default = inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default
        found.append(
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=hint)
        )
    return found


def _gather(group: type, options: dict[str, Any]) -> Any:
    """The option group built from the parsed options (its own taken out of ``options``)."""
    values = {
        f.name: _gather(hint, options) if _is_group(hint) else options.pop(f.name)
        for f, hint in _fields(group)
    }
    return group(**values)


def with_option_groups(command: Callable[..., None]) -> Callable[..., None]:
    """``command`` as typer should see it: each parameter typed as an option group becomes the group's options.

    ``def profile(request: ProfileRequest, no_cache: NoCacheOpt = False)`` is registered with every option of
    :class:`ProfileRequest` (and of the :class:`InputOptions` inside it) and ``--no-cache``; it is called with
    the request built from them.

    Raises:
        TypeError: two options of the command would have the same name.
    """
    signature = inspect.signature(command, eval_str=True)
    groups = {name: p.annotation for name, p in signature.parameters.items() if _is_group(p.annotation)}
    parameters: list[inspect.Parameter] = []
    for name, p in signature.parameters.items():
        parameters += _parameters(p.annotation) if name in groups else [p.replace(kind=p.KEYWORD_ONLY)]
    names = [p.name for p in parameters]
    if len(set(names)) != len(names):
        raise TypeError(
            f"{command.__name__}: options named twice: {sorted({n for n in names if names.count(n) > 1})}"
        )

    def expanded(**options: Any) -> None:
        built = {name: _gather(group, options) for name, group in groups.items()}
        command(**built, **options)

    for attribute in ("__module__", "__name__", "__qualname__", "__doc__"):
        setattr(expanded, attribute, getattr(command, attribute))
    expanded.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
    expanded.__annotations__ = {p.name: p.annotation for p in parameters} | {"return": None}
    return expanded


def _long_flag(annotation: Any) -> str:
    """The long name of the option an ``Annotated`` alias declares (``--batch-size``)."""
    for info in typing.get_args(annotation)[1:]:
        # ``typer.Option("--model", "-m")`` in ``Annotated`` keeps its first name where a default would go.
        names = [info.default, *(info.param_decls or ())] if hasattr(info, "param_decls") else []
        for name in names:
            if isinstance(name, str) and name.startswith("--"):
                return name
    raise TypeError(f"{annotation!r} declares no long option")


def as_args(group: object) -> list[str]:
    """The command-line options that give an option group's values (for the processes of a sharded run).

    Options at ``None`` or ``False`` are left out; ``True`` is the bare flag; a tuple is its items.
    """
    args: list[str] = []
    for f, hint in _fields(type(group)):
        value = getattr(group, f.name)
        if _is_group(hint):
            args += as_args(value)
        elif value is True:
            args.append(_long_flag(hint))
        elif isinstance(value, tuple):
            args += [_long_flag(hint), *(str(v) for v in value)]
        elif value is not None and value is not False:
            args += [_long_flag(hint), str(value)]
    return args
