"""Quantities of interest: what number per instance the influence is of.

A quantity maps the model's output ``logits [B, K]`` (and the instances' labels ``[B]``) to one number per
instance ``[B]``. Because the instances of a batch are independent in eval mode, the gradient of the sum
over the batch gives each instance the gradient of its own quantity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import torch

from essence.core.base.errors import ClassNotFoundError, SpecError

Kind = Literal["logit", "prob"]


class Quantity(Protocol):
    """Anything that maps ``(logits [B, K], labels [B]) -> [B]``."""

    # Positional-only: a plain function ``(logits, labels) -> [B]`` of any parameter names is a quantity too.
    def __call__(self, logits: torch.Tensor, labels: torch.Tensor, /) -> torch.Tensor: ...


def _scores(logits: torch.Tensor, kind: Kind) -> torch.Tensor:
    if kind == "logit":
        return logits
    if kind == "prob":
        return torch.softmax(logits.float(), dim=1)
    raise SpecError(f"unknown score kind {kind!r}: use 'logit' or 'prob'")


def _check_class(index: int, num_classes: int, what: str = "class") -> None:
    if not 0 <= index < num_classes:
        raise ClassNotFoundError(
            f"{what} index {index} is out of range: the model has {num_classes} classes (0..{num_classes - 1})"
        )


@dataclass(frozen=True)
class ClassScore:
    """The score of one class: its logit, or its softmax probability.

    Examples:
        >>> import torch
        >>> logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])  # [B=2, K=3]
        >>> ClassScore(1)(logits, torch.tensor([0, 1]))  # class 1's logit, whatever each label
        tensor([0., 1.])
        >>> ClassScore(0, "prob")(torch.zeros(1, 4), torch.tensor([2])), ClassScore(2).name
        (tensor([0.2500]), 'logit[2]')
    """

    cls: int
    kind: Kind = "logit"

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_class(self.cls, logits.shape[1])
        return _scores(logits, self.kind)[:, self.cls]

    @property
    def name(self) -> str:
        return f"{self.kind}[{self.cls}]"


@dataclass(frozen=True)
class Comparative:
    """Why ``a`` rather than ``b``: score of a − score of b.

    Examples:
        >>> import torch
        >>> logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
        >>> Comparative(0, 2)(logits, torch.tensor([0, 1]))  # logit[0] − logit[2] of each instance
        tensor([3., 0.])
        >>> Comparative(0, 2).name
        'logit[0]-logit[2]'
    """

    a: int
    b: int
    kind: Kind = "logit"

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        _check_class(self.a, logits.shape[1])
        _check_class(self.b, logits.shape[1])
        s = _scores(logits, self.kind)
        return s[:, self.a] - s[:, self.b]

    @property
    def name(self) -> str:
        return f"{self.kind}[{self.a}]-{self.kind}[{self.b}]"


@dataclass(frozen=True)
class PredictedClass:
    """The score of the class the model predicts for each instance (argmax, held fixed while differentiating).

    Examples:
        >>> import torch
        >>> logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
        >>> PredictedClass()(logits, torch.tensor([2, 2]))  # the top logit of each row; labels are ignored
        tensor([2., 1.])
    """

    kind: Kind = "logit"

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pred = logits.detach().argmax(dim=1, keepdim=True)
        return _scores(logits, self.kind).gather(1, pred)[:, 0]

    @property
    def name(self) -> str:
        return f"{self.kind}[predicted]"


@dataclass(frozen=True)
class OwnLabel:
    """The score of each instance's own label (``q_i = score[i, y_i]``): every class profile in one pass.

    ``kind="prob"`` is the paper's quantity for triage (softmax output of the label, f|L): where the network
    above the slice is linear, a logit's gradient is the same for every instance and carries no per-instance
    information, while the softmax's gradient still depends on the instance.

    Examples:
        >>> import torch
        >>> logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
        >>> OwnLabel()(logits, torch.tensor([0, 2]))  # row 0's logit of class 0, row 1's of class 2
        tensor([2., 0.])
        >>> OwnLabel("prob")(torch.zeros(2, 4), torch.tensor([1, 3]))  # uniform softmax: 1/K each
        tensor([0.2500, 0.2500])
    """

    kind: Kind = "logit"

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
            bad = int(labels.max()) if int(labels.max()) >= logits.shape[1] else int(labels.min())
            raise ClassNotFoundError(
                f"label {bad} is out of range for a model with {logits.shape[1]} outputs: "
                "the data's classes must match the model's"
            )
        return _scores(logits, self.kind).gather(1, labels.long().view(-1, 1))[:, 0]

    @property
    def name(self) -> str:
        return f"{self.kind}[label]"


@dataclass(frozen=True)
class CustomQuantity:
    """Wrap a user's callable ``(logits [B, K], labels [B]) -> [B]``.

    Examples:
        >>> import torch
        >>> margin = CustomQuantity(lambda logits, labels: logits[:, 0] - logits[:, 1:].amax(1), "margin[0]")
        >>> margin(torch.tensor([[3.0, 1.0, 2.0]]), torch.tensor([0])), margin.name
        (tensor([1.]), 'margin[0]')
    """

    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    label: str = "custom"

    def __call__(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.fn(logits, labels)

    @property
    def name(self) -> str:
        return self.label


def quantity_name(q: Quantity) -> str:
    """A stable name for a quantity (part of cache keys)."""
    return getattr(q, "name", None) or getattr(q, "__name__", None) or type(q).__name__


def as_quantity(q: Quantity | Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | str) -> Quantity:
    """Accept a quantity object, a plain callable, or a short string (``logit``, ``prob``, ``predicted``)."""
    if isinstance(q, str):
        table: dict[str, Quantity] = {
            "logit": OwnLabel("logit"),
            "prob": OwnLabel("prob"),
            "predicted": PredictedClass("logit"),
            "predicted-prob": PredictedClass("prob"),
        }
        if q not in table:
            raise SpecError(f"unknown quantity {q!r}: use one of {sorted(table)}")
        return table[q]
    if callable(q):
        return q if hasattr(q, "name") else CustomQuantity(q, getattr(q, "__name__", "custom"))
    raise SpecError(f"a quantity must be callable (logits, labels) -> [B]; got {type(q).__name__}")
