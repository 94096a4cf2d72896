"""One-image explanations (paper §3.1–3.2): why class A, or why A rather than B, at a slice.

The quantity is A's score (or the comparative score A − B), the distribution is the image's own point
distribution, so a unit's influence is ∂q/∂z_j at this image. The top units (most positive: they push towards
A, or towards A over B; most negative: against) are each interpreted by the input gradient of that unit
(:mod:`essence.core.analyses.interpret`), scaled onto the image. Integrated gradients of the same quantity is the
input-level baseline shown beside them. What a unit responds to across the data, not only in this image, is
:func:`~essence.core.analyses.exemplars.unit_exemplars`; the picture of an explanation is
:func:`~essence.core.analyses.render.render_panel`.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from essence.core.analyses.interpret import (
    METHODS,
    Method,
    display_image,
    heatmap,
    integrated_gradients,
    overlay,
    saliency_map,
    signed_map,
    unit_input_gradients,
)
from essence.core.base.devices import resolve_device
from essence.core.base.errors import LayerNotFoundError, SpecError
from essence.core.base.model_state import inference_state, on_device
from essence.core.engine.distributions import Instance
from essence.core.engine.influence import influence
from essence.core.engine.quantities import ClassScore, Comparative, Kind, quantity_name
from essence.core.engine.slices import Granularity, is_input_layer, resolve_layer
from essence.core.inputs.labels import class_index
from essence.core.inputs.preprocessing import Preprocessing


@dataclass(frozen=True)
class Explanation:
    """Why a model gives one image class A (or A rather than B), at one slice.

    Shapes: k top units, U units at the slice, K classes, an input ``[C, H, W]``.

    Attributes:
        cls: index of class A; ``vs``: index of class B for a comparative explanation, else ``None``.
        class_names: the model's K class names.
        quantity: the quantity's name, e.g. ``logit[2]`` or ``logit[2]-logit[0]``.
        quantity_value: its value at the image.
        layer, granularity: the slice and unit granularity.
        method: how units are interpreted (``saliency``, ``guided``, ``deconvnet``).
        influence: float32 ``[U]`` every unit's influence at this image.
        unit_ids: int64 ``[k]`` the k most positive units, largest influence first.
        unit_influence: float32 ``[k]`` their influence.
        negative_ids: int64 ``[k]`` the k most negative units, most negative first.
        negative_influence: float32 ``[k]`` their influence.
        unit_gradients: float32 ``[k, C, H, W]`` input gradient of each top unit's activation (by ``method``).
        saliency: float32 ``[k, H, W]`` in [0, 1]: |gradient| maxed over channels, divided by its maximum.
        overlays: uint8 ``[k, H, W, 3]`` the image scaled by each unit's saliency (the paper's figure).
        heatmaps: uint8 ``[k, H, W, 3]`` each saliency map in colour.
        image: uint8 ``[H, W, 3]`` the input as the model sees it (preprocessing included).
        ig: float32 ``[C, H, W]`` integrated gradients of the same quantity (baseline: zeros in input space).
        ig_error: completeness error of IG: q(x) − q(baseline) − Σ ig.
        ig_map: uint8 ``[H, W, 3]`` IG summed over channels: red positive, blue negative.
        prediction: the predicted class index; probabilities: float32 ``[K]`` softmax of the outputs.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from essence.core import Explanation, explain
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(
        ...     nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
        ...     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
        ... ).eval()
        >>> e = explain(model, torch.rand(1, 8, 8), 0, layer="3", top_k=2, device="cpu")
        >>> isinstance(e, Explanation), e.influence.shape, e.unit_gradients.shape, e.heatmaps.shape
        (True, torch.Size([8]), torch.Size([2, 1, 8, 8]), (2, 8, 8, 3))
        >>> sorted(e.to_json())[:4]
        ['class', 'granularity', 'ig_completeness_error', 'ig_sum']
    """

    cls: int
    vs: int | None
    class_names: list[str]
    quantity: str
    quantity_value: float
    layer: str
    granularity: Granularity
    method: str
    influence: torch.Tensor = field(repr=False)
    unit_ids: torch.Tensor = field(repr=False)
    unit_influence: torch.Tensor = field(repr=False)
    negative_ids: torch.Tensor = field(repr=False)
    negative_influence: torch.Tensor = field(repr=False)
    unit_gradients: torch.Tensor = field(repr=False)
    saliency: np.ndarray = field(repr=False)
    overlays: np.ndarray = field(repr=False)
    heatmaps: np.ndarray = field(repr=False)
    image: np.ndarray = field(repr=False)
    ig: torch.Tensor = field(repr=False)
    ig_error: float
    ig_map: np.ndarray = field(repr=False)
    prediction: int
    probabilities: torch.Tensor = field(repr=False)

    @property
    def question(self) -> str:
        a = self.class_names[self.cls]
        return f"why {a!r}" if self.vs is None else f"why {a!r} rather than {self.class_names[self.vs]!r}"

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready summary (no images)."""

        def units(ids: torch.Tensor, infl: torch.Tensor) -> list[dict[str, Any]]:
            return [{"unit": int(u), "influence": float(v)} for u, v in zip(ids, infl, strict=True)]

        return {
            "class": self.class_names[self.cls],
            "vs": None if self.vs is None else self.class_names[self.vs],
            "question": self.question,
            "quantity": self.quantity,
            "quantity_value": self.quantity_value,
            "layer": self.layer,
            "granularity": self.granularity,
            "method": self.method,
            "prediction": self.class_names[self.prediction],
            "prediction_index": self.prediction,
            "probabilities": {n: float(p) for n, p in zip(self.class_names, self.probabilities, strict=True)},
            "top_units": units(self.unit_ids, self.unit_influence),
            "negative_units": units(self.negative_ids, self.negative_influence),
            "ig_sum": float(self.ig.double().sum()),
            "ig_completeness_error": self.ig_error,
        }


def explain(
    model: nn.Module,
    image: torch.Tensor,
    cls: int | str,
    *,
    layer: str,
    vs: int | str | None = None,
    top_k: int = 5,
    method: Method = "saliency",
    granularity: Granularity = "channel",
    kind: Kind = "logit",
    class_names: Sequence[str] | None = None,
    preprocessing: Preprocessing | None = None,
    ig_steps: int = 32,
    device: str | torch.device = "auto",
) -> Explanation:
    """Explain one image: the top units for ``cls`` (or ``cls`` rather than ``vs``) and what they look at.

    Args:
        model: the classifier (run in eval mode, frozen; its state is restored).
        image: one preprocessed input ``[C, H, W]`` (see :func:`~essence.core.inputs.data.read_image`).
        cls: class A, by index or name.
        layer: module path of the slice (not the input: the input-level view is integrated gradients).
        vs: class B for the comparative question "why A rather than B".
        top_k: how many top positive (and negative) units to report and interpret.
        method: unit interpretation: ``saliency`` (gradient), ``guided`` (guided backprop) or ``deconvnet``.
        granularity: ``channel`` (conv: summed over positions) or ``neuron``.
        kind: the class score: ``logit`` or ``prob`` (softmax).
        class_names: the model's class names (default ``"0"``, ``"1"``, ...).
        preprocessing: the recipe the image went through (to show it as the model sees it).
        ig_steps: quadrature points of integrated gradients.
        device: ``auto``, ``cpu`` or ``cuda``.

    Returns:
        An :class:`Explanation`.

    Raises:
        ClassNotFoundError: unknown class name or index (the message lists the classes).
        LayerNotFoundError: unknown layer, or the input slice.
        SpecError: ``top_k < 1``, unknown method or kind, ``vs`` equal to ``cls``, an image of the wrong shape.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from essence.core import explain
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(
        ...     nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
        ...     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3),
        ... ).eval()
        >>> image = torch.rand(1, 8, 8)  # one preprocessed image [C, H, W]
        >>> e = explain(model, image, "cat", vs="dog", layer="3", top_k=2, class_names=["cat", "dog", "fox"],
        ...             device="cpu")
        >>> e.question, e.quantity
        ("why 'cat' rather than 'dog'", 'logit[0]-logit[1]')
        >>> e.unit_ids.shape, e.overlays.shape, e.image.shape  # 2 top units, their maps on the 8×8 image
        (torch.Size([2]), (2, 8, 8, 3), (8, 8, 3))
    """
    if is_input_layer(layer):
        raise LayerNotFoundError(
            "explain needs a slice above the input (the input-level view is the integrated-gradients map): "
            "name a module path above it with layer= (essence.core.layer_names(model) lists them)"
        )
    resolve_layer(model, layer)
    if method not in METHODS:
        raise SpecError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    if top_k < 1:
        raise SpecError(f"top_k must be ≥ 1, got {top_k}")
    x = _one_image(image)
    dev = resolve_device(device)
    if model.training:
        warnings.warn(
            "the model was in train mode; the explanation is computed in eval mode and the mode restored",
            stacklevel=2,
        )
    with on_device(model, dev), inference_state(model):
        return _explain(
            model,
            x,
            cls,
            vs,
            layer,
            top_k,
            method,
            granularity,
            kind,
            class_names,
            preprocessing,
            ig_steps,
            dev,
        )


def _explain(
    model: nn.Module,
    x: torch.Tensor,
    cls: int | str,
    vs: int | str | None,
    layer: str,
    top_k: int,
    method: Method,
    granularity: Granularity,
    kind: Kind,
    class_names: Sequence[str] | None,
    preprocessing: Preprocessing | None,
    ig_steps: int,
    dev: torch.device,
) -> Explanation:
    with torch.no_grad():
        logits = model(x[None].to(dev)).float().cpu()
    if logits.ndim != 2 or logits.shape[0] != 1:
        raise SpecError(f"the model must return [batch, classes] logits; got {tuple(logits.shape)}")
    names = list(class_names) if class_names else [str(i) for i in range(logits.shape[1])]
    if len(names) != logits.shape[1]:
        raise SpecError(f"{len(names)} class names for a model with {logits.shape[1]} outputs")
    a = class_index(cls, names)
    b = None if vs is None else class_index(vs, names)
    if b == a:
        raise SpecError(
            f"vs= names the same class as cls= ({names[a]!r}): pick another class to compare with"
        )
    quantity = ClassScore(a, kind) if b is None else Comparative(a, b, kind)
    label = torch.tensor([a])
    result = influence(
        model, (x[None], label), layer, quantity, Instance(), granularity, batch_size=1, device=dev
    )
    chi = result.mean[0]
    k = min(top_k, chi.numel())
    pos = torch.argsort(chi, descending=True)[:k]
    neg = torch.argsort(chi)[:k]
    grads = unit_input_gradients(model, x, layer, pos.tolist(), granularity=granularity, method=method)
    ig, ig_error = integrated_gradients(model, x, quantity, steps=ig_steps, label=a, device=dev)
    shown = display_image(x, *(preprocessing.mean, preprocessing.std) if preprocessing else (None, None))
    maps = saliency_map(grads)
    return Explanation(
        cls=a,
        vs=b,
        class_names=names,
        quantity=quantity_name(quantity),
        quantity_value=float(quantity(logits, label)[0]),
        layer=layer,
        granularity=granularity,
        method=method,
        influence=chi,
        unit_ids=pos,
        unit_influence=chi[pos],
        negative_ids=neg,
        negative_influence=chi[neg],
        unit_gradients=grads,
        saliency=maps,
        overlays=np.stack([overlay(shown, m) for m in maps]),
        heatmaps=heatmap(maps),
        image=shown,
        ig=ig,
        ig_error=ig_error,
        ig_map=signed_map(ig),
        prediction=int(logits[0].argmax()),
        probabilities=torch.softmax(logits[0], 0),
    )


def _one_image(image: torch.Tensor | np.ndarray) -> torch.Tensor:
    x = torch.as_tensor(image).detach().float().cpu()
    if x.ndim == 4 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 3:
        raise SpecError(
            f"explain takes one preprocessed image [C, H, W]; got shape {tuple(x.shape)} (read a file with "
            "read_image)"
        )
    return x
