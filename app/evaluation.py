"""The model's use on a dataset (recipe step 1, "Look"): predictions, accuracy, confusion, recall, precision."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from essence.app.shared import holding, remembered, shared
from essence.core import ImageData, LoadedModel
from essence.core.engine.slices import inference_state

# Batch of the app's passes: small enough for a laptop CPU's cache, large enough to amortise Python overhead.
BATCH = 128


@dataclass(frozen=True)
class Evaluation:
    """The model's use on a dataset (argmax), per class.

    Attributes:
        labels: int64 ``[N]``; predicted: int64 ``[N]``; probabilities: float32 ``[N, K]``.
        confusion: int64 ``[K, K]`` rows = true class, columns = predicted.
        recall, precision: float64 ``[K]`` (NaN: no instances / never predicted).
        accuracy: share of instances predicted right.
    """

    labels: np.ndarray
    predicted: np.ndarray
    probabilities: np.ndarray
    confusion: np.ndarray
    recall: np.ndarray
    precision: np.ndarray
    accuracy: float

    @property
    def never_predicted(self) -> list[int]:
        """Classes with instances that the model never predicts."""
        support = self.confusion.sum(1)
        predicted = self.confusion.sum(0)
        return [int(c) for c in np.nonzero((support > 0) & (predicted == 0))[0]]


def evaluation(model: LoadedModel, data: ImageData, num_classes: int) -> Evaluation:
    """Accuracy, confusion matrix and per-class recall/precision (one forward pass, remembered).

    Args:
        model: the model, run under its lock.
        data: the preprocessed dataset.
        num_classes: K, the number of classes (the confusion matrix is ``[K, K]``).

    Returns:
        The :class:`Evaluation`.
    """
    return remembered(_key(model, data), lambda: _evaluate(model, data, num_classes))


def evaluated(model: LoadedModel, data: ImageData) -> bool:
    """Whether :func:`evaluation` of the model on the data is remembered (a page shows its progress at once if not)."""
    return shared().results.get(_key(model, data)) is not None


def _key(model: LoadedModel, data: ImageData) -> tuple:
    return ("evaluation", model.fingerprint, data.fingerprint, data.preprocessing.fingerprint())


def predict(model: LoadedModel, x: torch.Tensor) -> np.ndarray:
    """Softmax probabilities ``[B, K]`` of preprocessed inputs ``x [B, C, H, W]`` (eval mode, model locked)."""
    with holding(model), inference_state(model.module), torch.no_grad():
        return torch.softmax(model.module(x).float(), dim=1).numpy()


def _evaluate(model: LoadedModel, data: ImageData, k: int) -> Evaluation:
    probs = []
    with holding(model), inference_state(model.module), torch.no_grad():
        for x, _, _ in data.batches(BATCH):
            probs.append(torch.softmax(model.module(x).float(), dim=1))
    p = torch.cat(probs).numpy()
    y = data.labels
    pred = p.argmax(1)
    conf = np.zeros((k, k), dtype=np.int64)
    np.add.at(conf, (y, pred), 1)
    tp = np.diag(conf).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(conf.sum(1) > 0, tp / conf.sum(1), np.nan)
        precision = np.where(conf.sum(0) > 0, tp / conf.sum(0), np.nan)
    return Evaluation(y, pred, p, conf, recall, precision, float((pred == y).mean()))
