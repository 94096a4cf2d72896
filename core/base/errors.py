"""The project's own error types.

Every error a user can cause is an :class:`EssenceError` whose message names the bad value and the fix.
The CLI prints ``str(error)`` on one line and exits with status 2; the app shows it as a message.
"""

from __future__ import annotations


class EssenceError(ValueError):
    """Base of every error a user can cause; the message names the problem and the fix."""


class LayerNotFoundError(EssenceError):
    """A layer name that is not a module path of the model."""


class ClassNotFoundError(EssenceError):
    """A class name or index that the model or dataset does not have."""


class EmptyClassError(EssenceError):
    """A class asked about that has no instances in the data."""


class NonFiniteOutputError(EssenceError):
    """The model produced NaN or infinite outputs (or gradients)."""


class ModelLoadError(EssenceError):
    """A model spec or weights file that cannot be loaded safely."""


class DataLoadError(EssenceError):
    """A data spec, file, image or label that cannot be read."""


class LabelMismatchError(EssenceError):
    """Labels of the data that do not fit the model's outputs."""


class SpecError(EssenceError):
    """A malformed ``--model`` / ``--data`` spec or option value."""


class Cancelled(EssenceError):
    """The computation was cancelled by its caller (nothing was written)."""


class StoreError(EssenceError):
    """The store cannot be opened, read or written."""
