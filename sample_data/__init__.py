"""The bundled demo: synthetic fundus images (severities 1–5) and two trained models, ``blurred`` and ``sharp``.

``blurred`` was trained on images blurred with σ=2 px in preprocessing and never predicts severity 2 (the blur
erased its microaneurysms); ``sharp`` is the same recipe without the blur, and predicts severity 2 again —
the case study of Leino et al. (2018), §3.4. See ``docs/demo.md``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from essence.core.base.errors import ModelLoadError
from essence.sample_data.fundus import CLASS_NAMES, generate, load_split, real_fundus_thumbnail

MODELS_DIR = Path(__file__).resolve().parent / "models"
DEMO_MODELS = ("blurred", "sharp")

__all__ = [
    "CLASS_NAMES",
    "DEMO_MODELS",
    "MODELS_DIR",
    "build_demo_model",
    "generate",
    "load_demo_card",
    "load_split",
    "real_fundus_thumbnail",
]


def _paths(name: str, models_dir: Path | None) -> tuple[Path, Path]:
    if name not in DEMO_MODELS:
        raise ModelLoadError(
            f"unknown demo model {name!r}: use one of {', '.join(DEMO_MODELS)} (e.g. demo:blurred)"
        )
    folder = Path(models_dir) if models_dir is not None else MODELS_DIR
    card, weights = folder / f"{name}.json", folder / f"{name}.safetensors"
    for path in (card, weights):
        if not path.is_file():
            raise ModelLoadError(f"demo model file {path} is missing: rebuild it with `essence demo build`")
    return card, weights


def load_demo_card(name: str, models_dir: Path | None = None) -> dict[str, Any]:
    """The card (JSON) of a demo model: recipe, default layer, class names, training, measured metrics.

    Args:
        name: ``"blurred"`` or ``"sharp"``.
        models_dir: folder to read from (default: the committed :data:`MODELS_DIR`).

    Raises:
        ModelLoadError: an unknown name, or the files are missing.
    """
    card_path, _ = _paths(name, models_dir)
    return json.loads(card_path.read_text())


def build_demo_model(name: str, models_dir: Path | None = None) -> tuple[nn.Module, dict[str, Any]]:
    """The demo model ``name`` with its committed weights, in eval mode, and its card.

    Args:
        name: ``"blurred"`` or ``"sharp"``.
        models_dir: folder to read from (default: the committed :data:`MODELS_DIR`).

    Returns:
        ``(model, card)``.

    Raises:
        ModelLoadError: an unknown name, missing files, or weights that do not fit the architecture.
    """
    from safetensors.torch import load_file

    from essence.sample_data.model import DemoCNN

    card_path, weights_path = _paths(name, models_dir)
    card = json.loads(card_path.read_text())
    model = DemoCNN(**card.get("arch_kwargs", {}))
    try:
        model.load_state_dict(load_file(str(weights_path)))
    except (RuntimeError, OSError) as exc:
        raise ModelLoadError(
            f"demo weights {weights_path} do not load ({exc}): rebuild with `essence demo build`"
        ) from exc
    return model.eval(), card
