"""Class profiles: the "essence" of each class at a slice (paper §3.3).

For each class c, χ(q = score of c, P = the instances of class c). All classes come out of one pass: each
instance carries its own class (q_i = score[i, y_i]) and its gradient is added to its class's sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from essence.core.base.errors import EmptyClassError, LabelMismatchError, SpecError
from essence.core.base.model_state import CancelFlag
from essence.core.engine.activation_source import ActivationSource
from essence.core.engine.distributions import ClassConditional
from essence.core.engine.influence import Autocast, Influence, Progress, influence
from essence.core.engine.quantities import Kind, OwnLabel
from essence.core.engine.slices import Granularity
from essence.core.engine.sums import InfluenceSums
from essence.core.inputs.cards import output_names
from essence.core.inputs.data import ImageData, labels_of


@dataclass(frozen=True)
class ClassProfiles:
    """Per-class influence profiles at one slice.

    Attributes:
        mean: float32 ``[C, U]`` χ of each unit for each class (q = the class's score, P = its instances).
        stderr: float32 ``[C, U]`` standard error of each entry over the class's instances.
        counts: int64 ``[C]`` instances per class.
        class_names: ``C`` names.
        layer: the slice's module path.
        granularity: ``"channel"`` or ``"neuron"``.
        quantity: ``"logit[label]"`` or ``"prob[label]"``.
        unit_shape: shape of one instance's units; ``U = prod(unit_shape)``.
        sums: the running sums (float64) the profile was finalised from (mergeable, stored).
        instances: the per-instance vectors from the same pass, if asked for (see :class:`Influence`).
        cached: whether the result was served from the store.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from essence.core import ClassProfiles, class_profiles
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
        >>> p = class_profiles(model, (torch.randn(60, 4), torch.arange(60) % 3), "1", device="cpu")
        >>> isinstance(p, ClassProfiles), p.num_units, p.counts.tolist()
        (True, 16, [20, 20, 20])
        >>> p.order(0)[:3].shape  # class 0's three most positively influential units
        torch.Size([3])
    """

    mean: torch.Tensor
    stderr: torch.Tensor
    counts: torch.Tensor
    class_names: list[str]
    layer: str
    granularity: Granularity
    quantity: str
    unit_shape: tuple[int, ...]
    sums: InfluenceSums = field(repr=False)
    instances: Influence | None = field(default=None, repr=False)
    cached: bool = False

    @property
    def num_units(self) -> int:
        return int(self.mean.shape[1])

    def order(self, cls: int, descending: bool = True) -> torch.Tensor:
        """Unit indices of class ``cls`` sorted by influence (most positive first)."""
        return torch.argsort(self.mean[cls], descending=descending)

    def to_json(self) -> dict[str, Any]:
        """The stable JSON layout of the profiles (DESIGN §4; what ``essence profile --json`` writes)."""

        def clean(t: torch.Tensor) -> list[list[float | None]]:
            a = t.detach().cpu().double().numpy()
            return [[None if not np.isfinite(v) else float(v) for v in row] for row in a]

        return {
            "layer": self.layer,
            "granularity": self.granularity,
            "quantity": self.quantity,
            "classes": list(self.class_names),
            "counts": [int(c) for c in self.counts],
            "unit_shape": list(self.unit_shape),
            "profiles": clean(self.mean),
            "stderr": clean(self.stderr),
            "cached": self.cached,
        }

    @classmethod
    def from_sums(
        cls,
        sums: InfluenceSums,
        *,
        class_names: Sequence[str],
        layer: str,
        granularity: Granularity,
        quantity: str,
        unit_shape: Sequence[int],
        cached: bool = False,
    ) -> ClassProfiles:
        """Finalise stored or merged sums into profiles."""
        return cls(
            mean=sums.mean().float(),
            stderr=sums.stderr().float(),
            counts=sums.count.clone(),
            class_names=list(class_names),
            layer=layer,
            granularity=granularity,
            quantity=quantity,
            unit_shape=tuple(int(u) for u in unit_shape),
            sums=sums,
            cached=cached,
        )


def checked_class_names(
    names: Sequence[str] | None, counts: torch.Tensor, num_instances: int, allow_empty: bool
) -> list[str]:
    """The class names of a profile pass, checked against its per-class counts ``[C]``.

    Raises:
        LabelMismatchError: the names are not one per model output.
        EmptyClassError: a class has no instances (unless ``allow_empty``).
    """
    num_classes = int(counts.shape[0])
    if names and len(names) != num_classes:
        raise LabelMismatchError(
            f"the data has {len(names)} classes {list(names)[:6]} but the model has {num_classes} outputs: "
            "use data labelled with the model's classes"
        )
    names = list(names) if names else [f"class {i}" for i in range(num_classes)]
    empty = [names[i] for i in range(num_classes) if int(counts[i]) == 0]
    if empty and not allow_empty:
        raise EmptyClassError(
            f"classes {empty} have no instances in the data (of {num_instances}): add their images, or keep "
            "empty classes with allow_empty=True"
        )
    return names


def class_profiles(
    model: nn.Module,
    data: ImageData | object,
    layer: str,
    *,
    granularity: Granularity = "channel",
    kind: Kind = "logit",
    class_names: Sequence[str] | None = None,
    allow_empty: bool = False,
    keep_instances: bool = False,
    batch_size: int = 64,
    device: str | torch.device = "auto",
    autocast: Autocast = None,
    progress: Progress | None = None,
    cancel: CancelFlag = None,
    channels_last: bool = False,
    activations: ActivationSource | None = None,
) -> ClassProfiles:
    """Every class's influence profile at ``layer`` in one streamed pass.

    Args:
        model: the classifier (run in eval mode; left as it was).
        data: an :class:`ImageData` or ``(x, labels)`` tensors.
        layer: module path of the slice.
        granularity: ``"channel"`` or ``"neuron"``.
        kind: the class score differentiated: ``"logit"`` or ``"prob"`` (softmax).
        class_names: names of the classes (default: the data's, else ``class 0..``).
        allow_empty: keep classes without instances (their row is NaN) instead of raising.
        keep_instances: also keep every instance's own vector (for triage) from the same pass.
        batch_size, device, autocast, progress, cancel, channels_last: as in
            :func:`~essence.core.engine.influence.influence`.
        activations: where z may be stored, read instead of running the layers below the slice, and recorded
            by a full pass (:class:`~essence.core.engine.activation_source.ActivationSource`).

    Returns:
        :class:`ClassProfiles` with ``mean``/``stderr`` ``[C, U]``.

    Raises:
        EmptyClassError: a class of the model has no instances (unless ``allow_empty``).
        LabelMismatchError: the data's classes do not match the model's outputs.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> from essence.core import class_profiles
        >>> _ = torch.manual_seed(0)
        >>> model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
        >>> x, y = torch.randn(60, 4), torch.arange(60) % 3
        >>> p = class_profiles(model, (x, y), "1", class_names=["cat", "dog", "fox"], device="cpu")
        >>> p.mean.shape, p.stderr.shape, p.quantity, p.class_names
        (torch.Size([3, 16]), torch.Size([3, 16]), 'logit[label]', ['cat', 'dog', 'fox'])
    """
    names = output_names(class_names, data)
    labels = labels_of(data)
    result = influence(
        model,
        data,
        layer,
        OwnLabel(kind),
        ClassConditional(),
        granularity,
        batch_size=batch_size,
        device=device,
        autocast=autocast,
        keep_instances=keep_instances,
        num_groups=None,
        progress=progress,
        cancel=cancel,
        channels_last=channels_last,
        activations=activations,
    )
    names = checked_class_names(names, result.counts, len(labels), allow_empty)
    return ClassProfiles(
        mean=result.mean,
        stderr=result.stderr,
        counts=result.counts,
        class_names=names,
        layer=layer,
        granularity=granularity,
        quantity=result.quantity,
        unit_shape=result.unit_shape,
        sums=result.sums,
        instances=result if keep_instances else None,
    )


def merge_profiles(*parts: ClassProfiles) -> ClassProfiles:
    """Class profiles of the union of disjoint datasets, from each one's profiles (their sums add).

    This is what makes profiles incremental: profiles stored for the images seen so far, merged with those
    of the new images alone, equal the profiles of all of them, without running the model on the old ones.
    It uses no ``torch.distributed``: a sharded job merges its shards' sums with one all-reduce instead
    (:mod:`essence.core.scale.distributed`).

    Args:
        parts: profiles of disjoint sets of instances at the same slice, granularity and quantity.

    Returns:
        :class:`ClassProfiles` over all the parts (the first part's class names).

    Raises:
        SpecError: no parts, or parts of different slices, granularities, quantities or shapes.
    """
    if not parts:
        raise SpecError("nothing to merge: give at least one set of class profiles")
    first = parts[0]
    what = (
        first.layer,
        first.granularity,
        first.quantity,
        tuple(first.unit_shape),
        tuple(first.sums.sum.shape),
    )
    sums = first.sums
    for p in parts[1:]:
        other = (p.layer, p.granularity, p.quantity, tuple(p.unit_shape), tuple(p.sums.sum.shape))
        if other != what:
            raise SpecError(
                f"cannot merge profiles of {other[:3]} (sums {other[4]}) into {what[:3]} (sums {what[4]}): "
                "merge profiles of the same model, slice, granularity and quantity"
            )
        sums = sums.merge(p.sums)
    return ClassProfiles.from_sums(
        sums,
        class_names=first.class_names,
        layer=first.layer,
        granularity=first.granularity,
        quantity=first.quantity,
        unit_shape=first.unit_shape,
    )
