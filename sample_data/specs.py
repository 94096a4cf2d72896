"""The ``demo:`` specs: the bundled demo's models and splits, registered with core's spec registry.

Core never imports the demo: the package declares :func:`register` in the entry-point group ``essence.specs``
under the name ``demo``, and core's registry calls it the first time a ``demo:`` spec is asked for.
"""

from __future__ import annotations

from essence.core.base.errors import SpecError
from essence.core.inputs.data import ImageData, hash_arrays
from essence.core.inputs.model_fingerprints import model_fingerprint
from essence.core.inputs.models import LoadedModel
from essence.core.inputs.preprocessing import Preprocessing
from essence.core.inputs.specs import DataRequest, ModelRequest, register_data_spec, register_model_spec

PREFIX = "demo"
SPLITS = ("train", "val", "test")


def load_demo_model(request: ModelRequest) -> LoadedModel:
    """``demo:blurred|sharp``: a committed demo model with its card (recipe, default slice, class names).

    Raises:
        ModelLoadError: an unknown demo name, or missing committed files.
    """
    from essence import sample_data

    module, card = sample_data.build_demo_model(request.arg)
    return LoadedModel(
        module=module,
        spec=request.spec,
        fingerprint=model_fingerprint(module, card.get("architecture", "")),
        class_names=list(card["class_names"]),
        preprocessing=Preprocessing.from_dict(card["preprocessing"]),
        default_layer=card.get("default_layer"),
        card=card,
    )


def load_demo_data(request: DataRequest) -> ImageData:
    """``demo:train|val|test``: a split of the synthetic fundus images, generated deterministically.

    Raises:
        SpecError: an unknown split.
    """
    from essence import sample_data

    split = request.arg
    if split not in SPLITS:
        raise SpecError(f"unknown demo split {split!r}: use demo:train, demo:val or demo:test")
    images, labels = sample_data.load_split(split)
    return ImageData(
        spec=request.spec,
        labels=labels,
        class_names=list(sample_data.CLASS_NAMES),
        preprocessing=request.preprocessing or Preprocessing(),
        fingerprint=hash_arrays(images, labels),
        arrays=images,
    )


def register() -> None:
    """Register the ``demo:`` model and data specs (the ``essence.specs`` entry point; idempotent)."""
    register_model_spec(PREFIX, load_demo_model)
    register_data_spec(PREFIX, load_demo_data)
