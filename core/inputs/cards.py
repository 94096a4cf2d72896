"""Model cards, read in one place for every model format, and the class order every analysis uses.

A **card** is a JSON object beside the model file (docs/formats.md gives the schema and an example per format):

====================================  ===========================
model file                            its card
====================================  ===========================
``W.safetensors`` / ``W.pt`` (weights) ``W.card.json``
``model.pt2`` (torch.export)           ``model.card.json``
``model.onnx`` (``onnx:model.onnx``)   ``model.card.json``
====================================  ===========================

It gives ``class_names`` (in output order), ``preprocessing`` (the recipe, :class:`~essence.core.inputs.preprocessing.
Preprocessing`) and ``default_layer``. :func:`~essence.core.inputs.models.load_model` applies it, so the Python API,
the CLI and the app read the same facts from the same files. An older ``W.json`` beside weights is still read,
but only when it is a valid card and not an Essence output: every JSON output carries :data:`OUTPUT_MARKER`.

**The class order** (:func:`class_order`) says which class each model output is, and where that came from:
``"card"`` (a card), ``"model"`` (the model knows its classes: the bundled demo), ``"option"`` (the caller gave
them: ``class_names=`` / ``--class-names`` / the app's field), ``"data"`` (the model names none, and the data's
labels are themselves class indices: digits, integer labels), ``"index"`` (one image and a model that names no
classes: outputs are named by their index). A model that names no classes is never matched
to class *names* the data sorted itself (folder names, text labels): that order would be a guess, and a wrong
guess swaps classes silently — :class:`ClassOrderError` says how to give it instead.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from essence.core.base.errors import LabelMismatchError, SpecError
from essence.core.base.files import read_json
from essence.core.inputs.preprocessing import Preprocessing
from essence.core.inputs.preprocessing_checks import MAX_SIDE

if TYPE_CHECKING:
    from essence.core.inputs.data import ImageData
    from essence.core.inputs.models import LoadedModel

# The key every JSON output of Essence carries; a card never has it.
OUTPUT_MARKER = "essence_output"
# A card may say which card schema it follows; 1 is the only one.
CARD_MARKER = "essence_card"
# What a card may hold: what Essence reads from it, and the facts the demo's cards record beside them.
CARD_KEYS = frozenset(
    {CARD_MARKER, "class_names", "preprocessing", "default_layer", "input_size", "image_size", "name"}
    | {"architecture", "arch_kwargs", "weights", "description", "seed", "data", "training", "metrics"}
)

ClassSource = Literal["card", "model", "option", "data", "index"]
CLASS_SOURCES: tuple[str, ...] = ("card", "model", "option", "data", "index")


class ClassOrderError(LabelMismatchError):
    """The model names no classes and the data's class order would be a guess.

    Examples:
        A model that names no classes, on data whose class names are its own sorting (folder names):

        >>> import numpy as np
        >>> from torch import nn
        >>> from essence.core import ImageData, LoadedModel, Preprocessing, class_order
        >>> folders = ImageData(
        ...     "folder:scans", np.array([0, 1]), ["nodule", "normal"], Preprocessing(), "v1",
        ...     arrays=np.zeros((2, 8, 8, 3), dtype=np.uint8), class_order="sorted",
        ... )
        >>> class_order(LoadedModel(nn.Linear(4, 2), "my:net", "f0"), folders)
        Traceback (most recent call last):
        ...
        essence.core.inputs.cards.ClassOrderError: my:net does not say which class each of its outputs is, ...
    """


def card_path(model_file: str | os.PathLike[str]) -> Path:
    """Where the card of a model file lies: ``W.card.json`` beside ``W.safetensors``, ``model.card.json``
    beside ``model.pt2`` or ``model.onnx``.

    Examples:
        >>> card_path("models/W.safetensors").name
        'W.card.json'
        >>> card_path("exports/model.pt2").name
        'model.card.json'
    """
    p = Path(model_file)
    return p.with_name(p.stem + ".card.json")


def model_file_of(spec: str, weights: str | os.PathLike[str] | None) -> Path | None:
    """The file a model's card belongs to: the weights, else the file the spec names (``.pt2``, ``onnx:``).

    Examples:
        >>> str(model_file_of("onnx:m/model.onnx", None))
        'm/model.onnx'
        >>> model_file_of("torchvision:resnet18", None) is None
        True
    """
    if weights is not None:
        return Path(weights)
    spec = spec.strip()
    if spec.startswith("onnx:"):
        return Path(spec[len("onnx:") :].strip())
    prefix, colon, _ = spec.partition(":")
    if colon and len(prefix) > 1:  # a registered prefix or a factory: no file of its own
        return None
    return Path(spec) if spec else None


def read_card(model_file: str | os.PathLike[str] | None) -> tuple[dict[str, Any], Path] | None:
    """The card of ``model_file``, if there is one.

    Returns:
        ``(card, its path)``, or ``None``: no card, or only an older ``W.json`` that is not a card (an Essence
        output is passed over silently; any other such file with one warning line that names the fix).

    Raises:
        SpecError: a card that is not valid JSON, not an object, an Essence output, of an unknown schema, or
            with values of the wrong type (the key is named).

    Examples:
        >>> import json
        >>> import tempfile
        >>> from pathlib import Path
        >>> from essence.core import read_card
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     weights = Path(folder) / "W.safetensors"
        ...     _ = (Path(folder) / "W.card.json").write_text(json.dumps({"class_names": ["normal", "nodule"]}))
        ...     card, path = read_card(weights)
        >>> card, path.name
        ({'class_names': ['normal', 'nodule']}, 'W.card.json')
        >>> read_card(None) is None
        True
    """
    if model_file is None:
        return None
    path = card_path(model_file)
    if os.path.lexists(path):  # a FIFO or a dangling link is refused by name, not passed over
        card = read_json(path, "model card", SpecError)
        if not isinstance(card, dict):
            raise SpecError(
                f"{path}: a model card is a JSON object of {sorted(CARD_KEYS)[:6]}..., got {type(card).__name__}"
            )
        if OUTPUT_MARKER in card:
            raise SpecError(
                f"{path} is an Essence output (it has {OUTPUT_MARKER!r}), not a model card: write the card "
                "(class_names, preprocessing, default_layer) there, and JSON outputs elsewhere"
            )
        check_card(card, path)
        return card, path
    legacy = Path(model_file).with_suffix(".json")
    if Path(model_file).suffix in (".json", "") or not legacy.is_file():  # only a regular file is ever taken
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
            f"{legacy} is not read as the model card ({what}); a card beside {Path(model_file).name} is named "
            f"{path.name}",
            UserWarning,
            stacklevel=2,
        )
        return None
    check_card(card, legacy)
    return card, legacy


def check_card(card: dict[str, Any], path: Path | str) -> None:
    """Refuse a card of another schema or with values of the wrong type, naming the key.

    Raises:
        SpecError: the first wrong key, with what it must be.
    """
    if card.get(CARD_MARKER, 1) != 1:
        raise SpecError(
            f"{path}: card schema {card[CARD_MARKER]!r} is not known: this Essence reads schema 1"
        )
    names = card.get("class_names")
    if names is not None:
        check_class_names(names, f"{path}: class_names", typed=False)
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


def check_class_names(names: object, what: str = "class_names", *, typed: bool = True) -> list[str]:
    """Class names as a list of distinct, non-empty names (without control characters, when ``typed``).

    Names typed by a person (``--class-names``, the app's field) may not hold control characters; names read
    from a file (a card) are data: kept, and shown escaped wherever they are printed.

    Raises:
        SpecError: not a list of names, an empty or repeated name, or a typed control character (named).

    Examples:
        >>> check_class_names(["normal", "nodule", 2])
        ['normal', 'nodule', '2']
    """
    if not isinstance(names, list | tuple) or not all(
        isinstance(n, str | int) and not isinstance(n, bool) for n in names
    ):
        raise SpecError(f"{what} must be a list of names, got {type(names).__name__}")
    out = [str(n).strip() if typed else str(n) for n in names]
    if not out or any(not n for n in out):
        raise SpecError(f"{what}: every class needs a name (got {out!r:.80})")
    if len(set(out)) != len(out):
        twice = sorted({n for n in out if out.count(n) > 1})
        raise SpecError(f"{what}: {twice[:3]} named more than once: each output has one class")
    bad = next((n for n in out if any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in n)), None)
    if typed and bad is not None:
        raise SpecError(f"{what}: {bad!r} holds a control character: use printable names")
    return out


def apply_card(model: LoadedModel, card: dict[str, Any]) -> None:
    """Class names (source ``"card"``), recipe and default slice of a card onto a loaded model."""
    model.card = {**model.card, **card}
    if card.get("class_names"):
        model.class_names = [str(c) for c in card["class_names"]]
        model.class_source = "card"
    if card.get("preprocessing"):
        model.preprocessing = Preprocessing.from_dict(card["preprocessing"])
    if card.get("default_layer"):
        model.default_layer = str(card["default_layer"])


def write_card(model: LoadedModel, model_file: str | os.PathLike[str], recipe: Preprocessing | None) -> Path:
    """Write the card of ``model_file`` from what is known of the model (class names, recipe, default slice).

    Returns:
        The card's path.

    Raises:
        SpecError: the model has no class names to record, or the path is taken by something that is not a
            card (an Essence output, a folder).

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> from essence.core import load_model, read_card
        >>> model = load_model("demo:blurred")
        >>> with tempfile.TemporaryDirectory() as folder:
        ...     weights = Path(folder) / "W.safetensors"
        ...     path = write_card(model, weights, model.preprocessing)
        ...     card, _ = read_card(weights)
        >>> path.name, card["class_names"][:2], card["default_layer"]
        ('W.card.json', ['severity 1', 'severity 2'], 'fc1')
    """
    if not model.class_names:
        raise SpecError(
            f"{model.spec} has no class names to write in its card: give them in output order (class_names)"
        )
    path = card_path(model_file)
    if path.is_dir():
        raise SpecError(f"{path} is a folder: the card is written as a file there")
    card: dict[str, Any] = {CARD_MARKER: 1, "class_names": list(model.class_names)}
    if recipe is not None:
        card["preprocessing"] = recipe.to_dict()
    if model.default_layer:
        card["default_layer"] = model.default_layer
    return _write_json_file(path, card)


def _write_json_file(path: Path, obj: dict[str, Any]) -> Path:
    import json
    import tempfile

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


@dataclass(frozen=True)
class ClassOrder:
    """Which class each model output is, and where that came from.

    Attributes:
        names: the class of output 0, 1, ... .
        source: ``"card"``, ``"model"``, ``"option"``, ``"data"`` or ``"index"`` (module docstring).

    Examples:
        >>> from essence.core import ClassOrder
        >>> order = ClassOrder(("normal", "nodule"), "card")
        >>> order.describe()
        'classes (from the card): normal, nodule'
        >>> order.to_json()
        {'names': ['normal', 'nodule'], 'from': 'card'}
    """

    names: tuple[str, ...]
    source: str

    def describe(self) -> str:
        """One line for the text outputs.

        Examples:
            >>> ClassOrder(("normal", "nodule"), "card").describe()
            'classes (from the card): normal, nodule'
        """
        where = {
            "card": "the card",
            "model": "the model",
            "option": "the class names given",
            "data": "the data",
        }
        return f"classes (from {where.get(self.source, self.source)}): {', '.join(self.names)}"

    def to_json(self) -> dict[str, Any]:
        return {"names": list(self.names), "from": self.source}


def with_class_names(model: LoadedModel, names: list[str] | tuple[str, ...] | None) -> LoadedModel:
    """The caller's class names (output order) onto the model, source ``"option"``; ``None`` leaves it be.

    Raises:
        SpecError: names that are not distinct printable names.
    """
    if names:
        model.class_names = check_class_names(list(names), "class names")
        model.class_source = "option"
    return model


def output_names(model_names: Sequence[str] | None, data: object) -> list[str]:
    """The class of each model output: the model's names (its card, the caller's, its own), else the data's.

    The one fallback every caller shares; :func:`class_order` adds where the names came from and refuses to
    match a model that names no classes to class names the data sorted itself.

    Args:
        model_names: the model's class names in output order (``LoadedModel.class_names``), or ``None``.
        data: an :class:`~essence.core.inputs.data.ImageData`, or any data form (its ``class_names``, if any).

    Returns:
        The names (empty when neither names any).
    """
    return list(model_names or getattr(data, "class_names", None) or [])


def class_order(model: LoadedModel, data: ImageData) -> ClassOrder:
    """The class order of ``model``'s outputs on ``data`` (module docstring), never a guess.

    Raises:
        ClassOrderError: the model names no classes and the data's order of its class names is its own sorting.

    Examples:
        A model that names its classes:

        >>> from essence.core import load_dataset, load_model
        >>> model = load_model("demo:blurred")
        >>> class_order(model, load_dataset("demo:test", model.preprocessing)).describe()
        'classes (from the model): severity 1, severity 2, severity 3, severity 4, severity 5'

        A model that names none, on data whose labels are class indices (the digits), takes the data's names:

        >>> from torch import nn
        >>> from essence.core import LoadedModel
        >>> bare = LoadedModel(nn.Sequential(nn.Flatten(), nn.Linear(64, 10)), "my:digits", "f0")
        >>> order = class_order(bare, load_dataset("digits"))
        >>> order.source, order.names[:3]
        ('data', ('0', '1', '2'))
    """
    names = tuple(output_names(model.class_names, data))
    if model.class_names:
        return ClassOrder(names, model.class_source or "model")
    if getattr(data, "class_order", "indices") == "sorted":
        example = ",".join(data.class_names)
        file = model_file_of(model.spec, model.card.get("weights"))
        where = f" ({card_path(file).name} beside {file.name})" if file is not None else ""
        raise ClassOrderError(
            f"{model.spec} does not say which class each of its outputs is, and {data.spec} names its classes "
            f"({', '.join(data.class_names[:6])}) in an order of its own, which Essence will not guess: give the "
            f"class names in output order (class_names, e.g. {example}) or a model card{where}"
        )
    return ClassOrder(names, "data")
