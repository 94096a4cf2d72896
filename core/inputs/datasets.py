"""Loading datasets from the specs of the CLI and the API (DESIGN §4).

Data specs: ``PREFIX:ARG`` (or a bare ``PREFIX``) answered by the spec registry (:mod:`essence.core.inputs.specs`).
Built in (:mod:`essence.core.inputs.formats`): ``digits``, ``folder:PATH`` (ImageFolder), ``csv:PATH`` (path,label),
``npz:PATH`` (``images`` N×C×H×W or N×H×W×C, ``labels``, optional ``class_names``). The bundled demo registers
``demo:train|val|test``; other prefixes come from plug-ins in the entry-point group ``essence.specs``.
"""

from __future__ import annotations

import os
from pathlib import Path

from essence.core.base.errors import SpecError
from essence.core.inputs import specs
from essence.core.inputs.data import ImageData
from essence.core.inputs.formats import load_csv, load_digits, load_folder, load_npz
from essence.core.inputs.preprocessing import Preprocessing
from essence.core.inputs.specs import BadImagePolicy, DataRequest

SPEC_FORMS = "demo:train|val|test, digits, folder:PATH, csv:PATH or npz:PATH"


def load_dataset(
    spec: str,
    preprocessing: Preprocessing | None = None,
    *,
    class_names: list[str] | None = None,
    on_bad_image: BadImagePolicy = "error",
    data_root: str | Path | None = None,
) -> ImageData:
    """Load a dataset from a spec (see the module docstring).

    Args:
        spec: ``demo:SPLIT``, ``digits``, ``folder:PATH``, ``csv:PATH``, ``npz:PATH`` or a registered prefix.
        preprocessing: the recipe to apply (normally the model's); a default fitting the data otherwise.
        class_names: the model's classes, if known: labels given as names are mapped onto them.
        on_bad_image: ``"error"`` stops at the first unreadable image; ``"skip"`` leaves it out and
            records it in ``ImageData.skipped``.
        data_root: files must lie under this folder (default: the folder or CSV's own folder).

    Returns:
        The dataset, with its labels, class names, recipe and fingerprint.

    Raises:
        SpecError: a malformed spec, or an unknown prefix (the message lists the known ones).
        DataLoadError: files that cannot be read. LabelMismatchError: labels that are not the classes.

    Examples:
        scikit-learn's digits (8×8 greyscale, values 0..16, bundled with scikit-learn: nothing is downloaded):

        >>> from essence.core import load_dataset
        >>> digits = load_dataset("digits")
        >>> len(digits), digits.num_classes, digits.preprocessing.describe()
        (1797, 10, 'L, no blur, values / 16')
        >>> x, labels, indices = next(digits.batches(4))
        >>> tuple(x.shape), labels.tolist(), indices.tolist()
        ((4, 1, 8, 8), [0, 1, 2, 3], [0, 1, 2, 3])

        A split of the bundled demo, with the recipe of the model it is meant for:

        >>> from essence.core import load_model
        >>> model = load_model("demo:blurred")
        >>> test = load_dataset("demo:test", model.preprocessing)
        >>> len(test), test.class_names[0]
        (798, 'severity 1')
    """
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(f"empty data spec: use {SPEC_FORMS}")
    spec = spec.strip()
    prefix, _, arg = spec.partition(":")
    if on_bad_image not in ("error", "skip"):
        raise SpecError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
    loader = specs.data_loader(prefix)
    if loader is None:
        known = ", ".join(specs.known_prefixes("data")) or "none"
        raise SpecError(
            f"data spec {spec!r} is not understood (registered prefixes: {known}): use {SPEC_FORMS}; other "
            f"prefixes come from plug-ins in the entry-point group {specs.ENTRY_POINT_GROUP}"
        )
    return loader(DataRequest(spec, arg, preprocessing, class_names, on_bad_image, data_root))


def environment_data_root() -> Path | None:
    """The configured data root (``ESSENCE_DATA_ROOT``), if any."""
    root = os.environ.get("ESSENCE_DATA_ROOT")
    return Path(root) if root else None


specs.register_data_spec("digits", load_digits)
specs.register_data_spec("npz", load_npz)
specs.register_data_spec("folder", load_folder)
specs.register_data_spec("csv", load_csv)
