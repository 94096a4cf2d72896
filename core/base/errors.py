"""The project's own error types.

Every error a user can cause is an :class:`EssenceError` whose message names the bad value and the fix.
The CLI prints ``str(error)`` on one line and exits with status 2; the app shows it as a message. Messages name
the Python parameter that fixes the problem (``size=(H, W)``, ``trust_pickle=True``); the CLI says the option
that sets it.
"""

from __future__ import annotations


class EssenceError(ValueError):
    """Base of every error a user can cause; the message names the problem and the fix.

    Examples:
        One ``except`` catches every error a user can cause, whichever step raised it:

        >>> from essence.core import EssenceError, load_dataset
        >>> try:
        ...     load_dataset("nosuch:images")
        ... except EssenceError as exc:
        ...     print(type(exc).__name__)
        SpecError
    """


class LayerNotFoundError(EssenceError):
    """A layer name that is not a module path of the model.

    Examples:
        >>> from torch import nn
        >>> from essence.core import resolve_layer
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> resolve_layer(model, "fc")
        Traceback (most recent call last):
        ...
        essence.core.base.errors.LayerNotFoundError: layer 'fc' is not a module of the model; ...
    """


class ClassNotFoundError(EssenceError):
    """A class name or index that the model or dataset does not have.

    Examples:
        >>> from essence.core import load_dataset
        >>> digits = load_dataset("digits")
        >>> digits.class_index("7")
        7
        >>> digits.class_index("cat")
        Traceback (most recent call last):
        ...
        essence.core.base.errors.ClassNotFoundError: unknown class 'cat': the classes are ['0', '1', ...]
    """


class EmptyClassError(EssenceError):
    """A class asked about that has no instances in the data.

    Examples:
        >>> import numpy as np
        >>> from essence.core import ImageData, Preprocessing
        >>> data = ImageData(
        ...     "my:images", np.array([0, 0]), ["cat", "dog"], Preprocessing(), "v1", arrays=np.zeros((2, 4, 4, 3))
        ... )
        >>> data.indices_of(1)
        Traceback (most recent call last):
        ...
        essence.core.base.errors.EmptyClassError: class 'dog' (index 1) has no instances in my:images: ...
    """


class NonFiniteOutputError(EssenceError):
    """The model produced NaN or infinite outputs (or gradients).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from essence.core import influence
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
        >>> nan_inputs = (torch.full((8, 4), float("nan")), torch.zeros(8, dtype=torch.long))
        >>> influence(model, nan_inputs, "1", device="cpu")
        Traceback (most recent call last):
        ...
        essence.core.base.errors.NonFiniteOutputError: the model produced NaN or infinite outputs on this data: ...
    """


class ModelLoadError(EssenceError):
    """A model spec or weights file that cannot be loaded safely.

    Examples:
        >>> from essence.core import load_model
        >>> load_model("missing.pt2")
        Traceback (most recent call last):
        ...
        essence.core.base.errors.ModelLoadError: model file 'missing.pt2' does not exist; check the path
    """


class DataLoadError(EssenceError):
    """A data spec, file, image or label that cannot be read.

    Examples:
        >>> from essence.core import load_dataset
        >>> load_dataset("npz:missing.npz")
        Traceback (most recent call last):
        ...
        essence.core.base.errors.DataLoadError: missing.npz: file not found; check the path of npz:PATH
    """


class LabelMismatchError(EssenceError):
    """Labels of the data that do not fit the model's outputs.

    Examples:
        A model of 3 outputs on the 10 classes of the digits:

        >>> from torch import nn
        >>> from essence.core import check_compatible, load_dataset
        >>> check_compatible(nn.Sequential(nn.Flatten(), nn.Linear(64, 3)), load_dataset("digits"))
        Traceback (most recent call last):
        ...
        essence.core.base.errors.LabelMismatchError: the model has 3 outputs but digits has 10 classes ...
    """


class SpecError(EssenceError):
    """A malformed model or data spec, or option value.

    Examples:
        >>> from essence.core import Preprocessing
        >>> Preprocessing(mode="CMYK")
        Traceback (most recent call last):
        ...
        essence.core.base.errors.SpecError: preprocessing mode 'CMYK' is not supported: use 'RGB' or 'L'
    """


class Cancelled(EssenceError):
    """The computation was cancelled by its caller (nothing was written).

    Examples:
        A flag (a ``threading.Event``, or a callable such as a stop button's state) stops the work before the
        next batch:

        >>> import torch
        >>> from torch import nn
        >>> from essence.core import influence
        >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()
        >>> inputs = (torch.zeros(8, 4), torch.zeros(8, dtype=torch.long))
        >>> influence(model, inputs, "1", device="cpu", cancel=lambda: True)
        Traceback (most recent call last):
        ...
        essence.core.base.errors.Cancelled: cancelled by the user; nothing was kept
    """


class StoreError(EssenceError):
    """The store cannot be opened, read or written.

    Examples:
        The store (:mod:`essence.storage`) refuses, before opening anything, a SQLite URL whose options would
        change how the file is opened:

        >>> from essence.storage import Store
        >>> Store.open("sqlite:////data/essence.sqlite?mode=ro")
        Traceback (most recent call last):
        ...
        essence.core.base.errors.StoreError: sqlite:////data/essence.sqlite?mode=ro: query parameters (mode) ...
    """
