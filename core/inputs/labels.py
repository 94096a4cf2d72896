"""Labels as a dataset gives them — class indices or class names — mapped to indices, with the names they index.

Every format reads its labels through here (:mod:`essence.core.inputs.formats`, the ``dicom:`` spec): integer-valued
labels are class indices whatever their type (``3``, ``3.0``, ``"3"``), other strings are class names, and a
label that could mean two classes is refused rather than guessed. Class folders name their classes by the
folders' names (:func:`folder_class_names`), and each dataset records how its indices were assigned
(:func:`label_order`: given, indices, or sorted names). A class a person names — by index or by name, in a
command's option or an analysis's argument — is resolved the same careful way (:func:`class_index`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from essence.core.base.errors import ClassNotFoundError, DataLoadError, LabelMismatchError

__all__ = ["MAX_CLASSES", "class_index", "folder_class_names", "label_order", "labels_to_indices"]

# Integer labels without class names name classes 0..max: a label far above any real label set (ImageNet-21k
# has 21,841 classes) is a corrupt label, and would otherwise build a list of that many names.
MAX_CLASSES = 1_000_000


def folder_class_names(classes: list[str], given: list[str] | None) -> tuple[list[str], str]:
    """The class names of a tree of class folders, and how their indices were assigned (``ImageData.class_order``).

    Given names (the model's) are used as they are. Folders named ``0``, ``1``, ... ``K-1`` are class indices,
    in numeric order (``10`` after ``9``). Any other folder names are sorted: an order of the data's own.

    Examples:
        >>> folder_class_names(["nodule", "normal"], None)
        (['nodule', 'normal'], 'sorted')
        >>> folder_class_names([str(i) for i in range(11)], None)[0][-2:]
        ['9', '10']
    """
    if given:
        return list(given), "given"
    if sorted(classes, key=lambda c: int(c) if c.isdigit() else -1) == [str(i) for i in range(len(classes))]:
        return [str(i) for i in range(len(classes))], "indices"
    return sorted(classes), "sorted"


def label_order(names: list[str], given: list[str] | None) -> str:
    """``ImageData.class_order`` of labels mapped by :func:`labels_to_indices`."""
    if given:
        return "given"
    return "indices" if list(names) == [str(i) for i in range(len(names))] else "sorted"


def labels_to_indices(raw: Any, names: list[str] | None, where: str) -> tuple[np.ndarray, list[str]]:
    """Map labels given as integers or names to indices, with the class names they index.

    Integer-valued labels mean those integers whatever their type: ``3``, ``3.0`` and the strings ``"3"`` and
    ``"3.0"`` all index class 3, alike in CSV and npz. Other strings are class names. A non-integral number
    (``1.5``) is refused, and so are digit strings that are also class names meaning other classes (labels
    "1".."4" for classes named "1".."5"): neither is guessed.

    Args:
        raw: one label per instance: integers, integer-valued floats, or strings (digits or class names).
        names: the classes, if known; otherwise ``0..max`` for integers, the sorted distinct names for strings.
        where: the source, for messages.

    Returns:
        ``(labels [N] int64, class names)``.

    Raises:
        DataLoadError: labels that are not one per instance.
        LabelMismatchError: a non-integral number, a label outside the classes (or implying over
            :data:`MAX_CLASSES` of them), or digit labels whose names and indices disagree.
    """
    arr = np.asarray(raw)
    if arr.ndim != 1:
        raise DataLoadError(f"{where}: labels must be one per instance (1-D), got shape {arr.shape}")
    if arr.dtype.kind in "iub":
        return _checked_indices(arr.astype(np.int64), names, where)
    if arr.dtype.kind == "f":
        return _checked_indices(_integral(arr.tolist(), arr.tolist(), where), names, where)
    as_str = [str(v).strip() for v in arr.tolist()]
    numeric = all(_NUMBER.fullmatch(v) for v in as_str) and len(as_str) > 0
    by_name = (
        [names.index(v) for v in as_str] if names is not None and all(v in names for v in as_str) else None
    )
    if numeric:
        ints = _integral(
            [float(v) for v in as_str], as_str, where, names_tried=by_name is None and bool(names)
        )
        in_range = names is not None and bool(ints.min() >= 0 and ints.max() < len(names))
        if by_name is not None and names is not None and in_range and by_name != ints.tolist():
            k = next(n for n, (a, b) in enumerate(zip(by_name, ints.tolist(), strict=True)) if a != b)
            raise LabelMismatchError(
                f"{where}: labels such as {as_str[k]!r} are both class names and class indices, and they disagree "
                f"({as_str[k]!r} names class {by_name[k]} but indexes class {names[ints[k]]!r}); write the labels "
                "as indices 0..K-1, or as names that are not numbers"
            )
        if by_name is None or in_range:
            return _checked_indices(ints, names, where)
    if names is None:
        names = sorted(set(as_str))
    lookup = {n: i for i, n in enumerate(names)}
    unknown = sorted({v for v in as_str if v not in lookup})
    if unknown:
        raise LabelMismatchError(f"{where}: labels {unknown[:5]} are not among the classes {names[:8]}")
    return np.array([lookup[v] for v in as_str], dtype=np.int64), list(names)


# A number as a label file writes it: 3, -1, 3.0, 2.5, 1e1 (not "nan", "inf" or "0x10": those are names).
_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _integral(values: list[float], shown: list[Any], where: str, names_tried: bool = False) -> np.ndarray:
    """The labels as integers, refusing any that is not integer-valued (NaN, 1.5)."""
    for v, s in zip(values, shown, strict=True):
        if not (math.isfinite(v) and v == int(v)):
            among = " and are not among the class names" if names_tried else ""
            raise LabelMismatchError(
                f"{where}: label {s!r} is not an integer{among}: labels must be class indices (integers such as "
                "3 or 3.0) or class names; map such labels to classes before loading"
            )
    return np.array([int(v) for v in values], dtype=np.int64)


def _checked_indices(arr: np.ndarray, names: list[str] | None, where: str) -> tuple[np.ndarray, list[str]]:
    if names is None:
        if arr.size and int(arr.max()) >= MAX_CLASSES:
            raise LabelMismatchError(
                f"{where}: label {int(arr.max())} would mean over {MAX_CLASSES:,} classes: labels must be "
                "class indices 0..K-1 (or give the class names)"
            )
        names = [str(i) for i in range(int(arr.max()) + 1 if arr.size else 0)]
    if arr.size and (arr.min() < 0 or arr.max() >= len(names)):
        raise LabelMismatchError(
            f"{where}: labels range {arr.min()}..{arr.max()} but there are {len(names)} classes {names[:6]}: "
            "labels must index the model's classes"
        )
    return arr.astype(np.int64), list(names)


def class_index(cls: int | str, class_names: Sequence[str]) -> int:
    """Resolve a class given by index (an int, or a digit string) or by name.

    A string is matched against the names first (exactly, then ignoring case): class folders are often named
    "1".."5". A digit string that names one class and indexes another is refused rather than guessed;
    ``name:2`` and ``index:2`` say which is meant.

    Raises:
        ClassNotFoundError: no such class, or an ambiguous digit string; the message lists the valid ones.
    """
    names = list(class_names)
    if not isinstance(cls, str):
        return _checked_index(cls, names)
    text = cls.strip()
    by_name = _name_index(text, names)
    if by_name is None and text.startswith("name:"):
        by_name = _name_index(text[len("name:") :], names)
        if by_name is None:
            raise ClassNotFoundError(f"unknown class name {text[len('name:') :]!r}: the classes are {names}")
        return by_name
    if by_name is None and text.startswith("index:"):
        return _checked_index(text[len("index:") :], names)
    is_index = text.lstrip("-").isdigit() and 0 <= int(text) < len(names)
    if by_name is not None and is_index and by_name != int(text):
        raise ClassNotFoundError(
            f"class {text!r} is ambiguous: it is the name of class {by_name} and the index of class "
            f"{names[int(text)]!r}; write name:{text} or index:{text}"
        )
    if by_name is not None:
        return by_name
    if text.lstrip("-").isdigit():
        return _checked_index(text, names)
    raise ClassNotFoundError(f"unknown class {cls!r}: the classes are {names}")


def _name_index(text: str, names: list[str]) -> int | None:
    if text in names:
        return names.index(text)
    lowered = [n.lower() for n in names]
    return lowered.index(text.lower()) if text.lower() in lowered else None


def _checked_index(value: int | str, names: list[str]) -> int:
    try:
        i = int(value)
    except (TypeError, ValueError) as exc:
        raise ClassNotFoundError(f"unknown class {value!r}: the classes are {names}") from exc
    if not 0 <= i < len(names):
        raise ClassNotFoundError(
            f"class index {i} is out of range: the classes are 0..{len(names) - 1} {names}"
        )
    return i
