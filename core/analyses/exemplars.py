"""Reference images of a unit: the images of a class where the unit's influence on the class is largest.

An explanation names a unit for one image; its exemplars say what it responds to across the data. The
influence of unit j at image x for the class's score is the per-instance vector the class profile averages
(q = the class's score, P = that image), so a stored profile pass with its instance vectors answers this too.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from essence.core.base.errors import ClassNotFoundError, EmptyClassError, SpecError
from essence.core.engine.distributions import Instance
from essence.core.engine.influence import influence
from essence.core.engine.quantities import Kind, OwnLabel
from essence.core.engine.slices import Granularity
from essence.core.inputs.data import ImageData, labels_of
from essence.core.inputs.labels import class_index


@dataclass(frozen=True)
class UnitExemplars:
    """The images of a class where a unit's influence is largest.

    Attributes:
        unit: the unit's flat index; cls: the class index.
        indices: int64 ``[k]`` dataset positions, largest influence first.
        influence: float32 ``[k]`` the unit's influence at each (q = the class's score, P = that image).
        class_mean: the unit's influence in the class profile (the mean over the class's images).
    """

    unit: int
    cls: int
    indices: torch.Tensor
    influence: torch.Tensor
    class_mean: float


def unit_exemplars(
    model: nn.Module,
    data: ImageData | tuple[torch.Tensor, torch.Tensor],
    layer: str,
    unit: int,
    cls: int | str,
    *,
    k: int = 6,
    granularity: Granularity = "channel",
    kind: Kind = "logit",
    instance_vectors: torch.Tensor | None = None,
    instance_indices: torch.Tensor | None = None,
    batch_size: int = 64,
    device: str | torch.device = "auto",
) -> UnitExemplars:
    """Reference images for a unit: the instances of ``cls`` where its influence on ``cls``'s score is largest.

    The per-instance vectors of a class profile (``class_profiles(..., keep_instances=True).instances``) are
    exactly these influences; pass them as ``instance_vectors``/``instance_indices`` to reuse that pass.
    Otherwise one pass over the class's instances computes them.

    Args:
        model: the classifier.
        data: an :class:`ImageData` or ``(x, labels)`` tensors.
        layer: module path of the slice; unit: the unit's flat index there; cls: the class, by index or name.
        k: how many images to return.
        granularity, kind: the unit granularity and the class score, as in the profile.
        instance_vectors: float ``[M, U]`` per-instance influences of a profile pass, to reuse it.
        instance_indices: int64 ``[M]`` the dataset positions of those rows.
        batch_size, device: as elsewhere.

    Returns:
        The :class:`UnitExemplars` (fewer than ``k`` images when the class has fewer).

    Raises:
        ClassNotFoundError: unknown class; EmptyClassError: the class has no instances;
        SpecError: a unit index out of range or ``k < 1``.
    """
    if k < 1:
        raise SpecError(f"k must be ≥ 1, got {k}")
    labels = labels_of(data)
    names = getattr(data, "class_names", None)
    if names:
        c = class_index(cls, names)
    elif isinstance(cls, int) or (isinstance(cls, str) and cls.strip().isdigit()):
        c = int(cls)  # no class names: any index is a class, and one without instances is empty
        if c < 0:
            raise ClassNotFoundError(f"class index {c} is negative: give a class index 0, 1, ...")
    else:
        raise ClassNotFoundError(
            f"unknown class {cls!r}: the data has no class names, give the class by index"
        )
    members = np.flatnonzero(labels == c)
    if members.size == 0:
        label = names[c] if names else c
        raise EmptyClassError(
            f"class {label!r} has no instances in the data: choose another class or add data"
        )
    if instance_vectors is None:
        sub = _subset(data, members)
        result = influence(
            model,
            sub,
            layer,
            OwnLabel(kind),
            Instance(),
            granularity,
            batch_size=batch_size,
            device=device,
            keep_instances=True,
        )
        vectors, rows = result.instance_vectors, result.instance_indices
        assert vectors is not None and rows is not None, "keep_instances=True keeps every instance's vector"
        positions = torch.as_tensor(members)[rows]
    else:
        if instance_indices is None:
            raise SpecError("instance_indices must come with instance_vectors (both from the same pass)")
        keep = torch.as_tensor(np.isin(instance_indices.numpy(), members))
        vectors, positions = instance_vectors[keep], instance_indices[keep]
    if not 0 <= unit < vectors.shape[1]:
        raise SpecError(f"unit {unit} is out of range: the slice {layer!r} has {vectors.shape[1]} units")
    column = vectors[:, unit]
    order = torch.argsort(column, descending=True)[:k]
    return UnitExemplars(
        unit=int(unit),
        cls=c,
        indices=positions[order].long(),
        influence=column[order].float(),
        class_mean=float(column.double().mean()),
    )


def _subset(
    data: ImageData | tuple[torch.Tensor, torch.Tensor], idx: np.ndarray
) -> ImageData | tuple[torch.Tensor, torch.Tensor]:
    """The instances ``idx`` of a dataset, as a dataset of its own (positions 0..len(idx)-1)."""
    if isinstance(data, ImageData):
        return replace(
            data,
            labels=data.labels[idx],
            arrays=None if data.arrays is None else data.arrays[idx],
            paths=None if data.paths is None else [data.paths[i] for i in idx],
        )
    x, y = data
    t = torch.as_tensor(idx)
    return torch.as_tensor(x)[t], torch.as_tensor(np.asarray(y))[t]
