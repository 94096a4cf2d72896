"""Train the demo's two models — ``blurred`` (σ-blurred preprocessing) and ``sharp`` (no blur) — and write them.

Both use the same data, seed, architecture and schedule; only the preprocessing recipe differs. Plain
cross-entropy on the skewed data (no class reweighting), as the paper's model was trained: the blurred model
never predicts severity 2, whose only sign (microaneurysms) the blur erased; the sharp one does.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from essence.core.inputs.preprocessing import Preprocessing
from essence.sample_data import fundus
from essence.sample_data.model import DEFAULT_LAYER, DemoCNN

BLUR_SIGMA = 2.0
DEFAULT_EPOCHS = 12
LR = 2e-3
WEIGHT_DECAY = 1e-4
BATCH_SIZE = 64
ARCHITECTURE = "essence.sample_data.model:DemoCNN"

Progress = Callable[[str, int, int], None]


def recipes(train_images: np.ndarray) -> dict[str, Preprocessing]:
    """The two preprocessing recipes, normalised by the training images' channel statistics."""
    x = train_images.reshape(-1, 3).astype(np.float64) / 255.0
    mean = tuple(round(float(v), 3) for v in x.mean(axis=0))
    std = tuple(round(float(v), 3) for v in x.std(axis=0))
    return {
        "blurred": Preprocessing(blur_sigma=BLUR_SIGMA, mean=mean, std=std),
        "sharp": Preprocessing(blur_sigma=0.0, mean=mean, std=std),
    }


def train_model(
    x: torch.Tensor,
    y: torch.Tensor,
    seed: int,
    epochs: int,
    progress: Callable[[int, int], None] | None = None,
) -> nn.Module:
    """Train a :class:`DemoCNN` with Adam and a cosine schedule; deterministic for a seed on one machine.

    Args:
        x: preprocessed images ``[N, 3, H, W]``.
        y: labels ``[N]``.
        seed: seeds the initial weights, the batch order and dropout.
        epochs: passes over the data.
        progress: called with ``(epoch done, epochs)``.

    Returns:
        The trained model in eval mode.
    """
    torch.manual_seed(seed)
    model = DemoCNN(num_classes=len(fundus.CLASS_NAMES), size=x.shape[-1])
    opt = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps = epochs * -(-len(x) // BATCH_SIZE)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=LR, total_steps=max(steps, 1), pct_start=0.15)
    order_rng = torch.Generator().manual_seed(seed)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for epoch in range(epochs):
        for idx in torch.randperm(len(x), generator=order_rng).split(BATCH_SIZE):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(x[idx]), y[idx]).backward()
            opt.step()
            sched.step()
        if progress:
            progress(epoch + 1, epochs)
    return model.eval()


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Predicted class per image ``[N]`` (int64)."""
    model.eval()
    return torch.cat([model(b).argmax(1) for b in x.split(batch_size)]).numpy().astype(np.int64)


def metrics(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> dict[str, Any]:
    """Accuracy, per-class recall and precision (``None`` where a class is never predicted), counts, confusion."""
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    support, pred_counts = confusion.sum(1), confusion.sum(0)
    diag = np.diag(confusion)
    return {
        "accuracy": float(diag.sum() / max(len(labels), 1)),
        "recall": [float(d / s) if s else None for d, s in zip(diag, support, strict=True)],
        "precision": [float(d / p) if p else None for d, p in zip(diag, pred_counts, strict=True)],
        "predicted_counts": pred_counts.tolist(),
        "support": support.tolist(),
        "confusion": confusion.tolist(),
    }


def build_demo(
    out_dir: Path,
    seed: int = 0,
    epochs: int = DEFAULT_EPOCHS,
    n_scale: float = 1.0,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Generate the data, train ``blurred`` and ``sharp``, and write their weights and cards to ``out_dir``.

    Args:
        out_dir: folder for ``{blurred,sharp}.safetensors`` and ``{blurred,sharp}.json`` (created if missing).
        seed: base seed of the data and of training.
        epochs: training epochs of each model.
        n_scale: scale of the split sizes (``1.0`` = 2996 / 602 / 798 images).
        progress: called with ``(stage, done, total)``; stages ``data``, ``blurred``, ``sharp``.

    Returns:
        ``{"blurred": card, "sharp": card}`` — the cards written.

    Raises:
        ValueError: ``epochs < 1`` or ``n_scale <= 0``.
    """
    if epochs < 1 or n_scale <= 0:
        raise ValueError(f"epochs must be ≥ 1 and n_scale > 0, got epochs={epochs}, n_scale={n_scale}")
    report = progress or (lambda stage, done, total: None)
    report("data", 0, 3)
    splits = {}
    for k, name in enumerate(("train", "val", "test")):
        splits[name] = fundus.load_split(name, seed=seed, scale=n_scale)  # type: ignore[arg-type]
        report("data", k + 1, 3)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cards = {}
    for name, recipe in recipes(splits["train"][0]).items():
        cards[name] = _build_one(name, recipe, splits, seed, epochs, n_scale, out_dir, report)
    return cards


def _build_one(
    name: str,
    recipe: Preprocessing,
    splits: dict[str, tuple[np.ndarray, np.ndarray]],
    seed: int,
    epochs: int,
    n_scale: float,
    out_dir: Path,
    report: Progress,
) -> dict[str, Any]:
    start = time.perf_counter()
    x_train = recipe.apply_array(np.array(splits["train"][0]))  # a writable copy for torch
    y_train = torch.as_tensor(np.array(splits["train"][1]))
    report(name, 0, epochs)
    model = train_model(x_train, y_train, seed, epochs, lambda done, total: report(name, done, total))
    seconds = time.perf_counter() - start
    n = len(fundus.CLASS_NAMES)
    measured = {
        split: metrics(splits[split][1], predict(model, recipe.apply_array(np.array(splits[split][0]))), n)
        for split in ("val", "test")
    }
    card = {
        "name": name,
        "architecture": ARCHITECTURE,
        "arch_kwargs": {"num_classes": n},
        "preprocessing": recipe.to_dict(),
        "default_layer": DEFAULT_LAYER,
        "class_names": list(fundus.CLASS_NAMES),
        "seed": seed,
        "data": {
            "generator": "essence.sample_data.fundus",
            "seed": seed,
            "scale": n_scale,
            "image_size": fundus.DEFAULT_SIZE,
            "sizes": {s: list(fundus.scaled_sizes(s, n_scale)) for s in ("train", "val", "test")},
        },
        "training": {
            "epochs": epochs,
            "lr": LR,
            "weight_decay": WEIGHT_DECAY,
            "batch_size": BATCH_SIZE,
            "optimizer": "Adam",
            "schedule": "one-cycle (cosine)",
            "loss": "cross-entropy (unweighted)",
            "seconds": round(seconds, 1),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
        },
        "metrics": measured,
    }
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out_dir / f"{name}.safetensors"), metadata={"card": name})
    (out_dir / f"{name}.json").write_text(json.dumps(card, indent=2) + "\n")
    return card
