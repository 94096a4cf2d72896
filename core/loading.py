"""Loading models and datasets from the specs of the CLI and the API (DESIGN §4), safely.

Model specs: ``demo:blurred|sharp``; ``torchvision:ARCH`` with weights; ``package.module:function`` with
weights; ``PATH.pt`` (TorchScript). Weights are safetensors or a state_dict read with
``torch.load(weights_only=True)``; a full pickle (which can run code when read) only with ``trust_pickle``.

Data specs: ``demo:train|val|test``, ``digits``, ``folder:PATH`` (ImageFolder), ``csv:PATH`` (path,label),
``npz:PATH`` (``images`` N×C×H×W or N×H×W×C, ``labels``, optional ``class_names``).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import importlib
import os
import pickle
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from essence.core.data import ImageData, hash_arrays, open_image
from essence.core.errors import DataLoadError, LabelMismatchError, ModelLoadError, SpecError
from essence.core.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
BadImagePolicy = Literal["error", "skip"]
# Integer labels without class names name classes 0..max: a label far above any real label set (ImageNet-21k
# has 21,841 classes) is a corrupt label, and would otherwise build a list of that many names.
MAX_CLASSES = 1_000_000


@dataclass
class LoadedModel:
    """A model ready for analysis, with what is known about it.

    Attributes:
        module: the ``nn.Module`` (eval mode).
        spec: the spec it was loaded from.
        fingerprint: hash of the architecture and every weight (a cache key).
        class_names: the classes of its outputs, if known (a card, the demo).
        preprocessing: the recipe its inputs need, if known.
        default_layer: the slice to use when none is given, if known.
        card: extra facts (demo card, training metrics).
    """

    module: nn.Module
    spec: str
    fingerprint: str
    class_names: list[str] | None = None
    preprocessing: Preprocessing | None = None
    default_layer: str | None = None
    card: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.card.get("name") or self.spec


# ----------------------------------------------------------------------------------------------------- models


def load_model(
    spec: str,
    weights: str | Path | None = None,
    *,
    trust_pickle: bool = False,
    num_classes: int | None = None,
) -> LoadedModel:
    """Load a model from a spec (see the module docstring).

    Raises:
        SpecError: a malformed spec.
        ModelLoadError: weights missing, unreadable, unsafe, or not fitting the architecture.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(
            "empty model spec: use demo:blurred, torchvision:ARCH, package.module:function or PATH.pt"
        )
    spec = spec.strip()
    if spec.startswith("demo:"):
        return _load_demo_model(spec)
    if spec.startswith("torchvision:"):
        return _load_torchvision(spec, weights, trust_pickle, num_classes)
    path = Path(spec)
    if path.suffix in {".pt", ".pth", ".ts", ".jit", ".pt2", ".torchscript"} or path.exists():
        return _load_file_model(path, spec, trust_pickle)
    if ":" in spec and all(part.replace(".", "").replace("_", "").isalnum() for part in spec.split(":", 1)):
        return _load_factory(spec, weights, trust_pickle)
    raise SpecError(
        f"model spec {spec!r} is not understood: use demo:blurred|sharp, torchvision:ARCH --weights FILE, "
        "package.module:function --weights FILE, or a TorchScript PATH.pt"
    )


def _load_demo_model(spec: str) -> LoadedModel:
    from essence import sample_data

    name = spec.split(":", 1)[1]
    module, card = sample_data.build_demo_model(name)
    return LoadedModel(
        module=module,
        spec=spec,
        fingerprint=model_fingerprint(module, card.get("architecture", "")),
        class_names=list(card["class_names"]),
        preprocessing=Preprocessing.from_dict(card["preprocessing"]),
        default_layer=card.get("default_layer"),
        card=card,
    )


def _final_linear_name(module: nn.Module) -> str | None:
    last = None
    for name, m in module.named_modules():
        if isinstance(m, nn.Linear):
            last = name
    return last


def _load_torchvision(
    spec: str, weights: str | Path | None, trust_pickle: bool, num_classes: int | None
) -> LoadedModel:
    import torchvision

    arch = spec.split(":", 1)[1]
    available = torchvision.models.list_models(module=torchvision.models)
    if arch not in available:
        import difflib

        close = difflib.get_close_matches(arch, available, n=4)
        raise SpecError(
            f"torchvision has no classification architecture {arch!r}; closest: {', '.join(close)}"
        )
    if weights is None:
        raise ModelLoadError(
            f"torchvision:{arch} needs a weights file (--weights FILE.safetensors or a state_dict .pt); "
            "nothing is downloaded at run time"
        )
    state = load_weights(weights, trust_pickle=trust_pickle)
    if num_classes is None:
        probe = torchvision.models.get_model(arch, weights=None)
        head = _final_linear_name(probe)
        key = f"{head}.weight" if head else None
        num_classes = int(state[key].shape[0]) if key and key in state else 1000
    try:
        module = torchvision.models.get_model(arch, weights=None, num_classes=num_classes)
    except (TypeError, ValueError) as exc:
        raise ModelLoadError(f"cannot build torchvision:{arch} with {num_classes} classes: {exc}") from exc
    _load_state(module, state, weights)
    return LoadedModel(
        module=module.eval(),
        spec=spec,
        fingerprint=model_fingerprint(module, spec),
        preprocessing=Preprocessing(mean=IMAGENET_MEAN, std=IMAGENET_STD),
        card={"name": spec, "architecture": spec, "weights": str(weights)},
    )


def _load_factory(spec: str, weights: str | Path | None, trust_pickle: bool) -> LoadedModel:
    mod_name, fn_name = spec.split(":", 1)
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ModelLoadError(
            f"cannot import {mod_name!r} for model {spec!r}: {exc}; is it on PYTHONPATH?"
        ) from exc
    factory = getattr(mod, fn_name, None)
    if not callable(factory):
        raise ModelLoadError(
            f"{mod_name!r} has no callable {fn_name!r}: name a function that returns an nn.Module"
        )
    try:
        module = factory()
    except Exception as exc:  # the user's own code failed: say so, with its message
        raise ModelLoadError(
            f"{spec}() failed ({type(exc).__name__}: {exc}): name a function that takes no arguments and "
            "returns an nn.Module"
        ) from exc
    if not isinstance(module, nn.Module):
        raise ModelLoadError(f"{spec} returned {type(module).__name__}, not a torch.nn.Module")
    if weights is not None:
        _load_state(module, load_weights(weights, trust_pickle=trust_pickle), weights)
    return LoadedModel(
        module=module.eval(),
        spec=spec,
        fingerprint=model_fingerprint(module, spec),
        card={"name": spec, "architecture": spec, "weights": str(weights) if weights else None},
    )


def _load_file_model(path: Path, spec: str, trust_pickle: bool) -> LoadedModel:
    if not path.is_file():
        raise ModelLoadError(f"model file {str(path)!r} does not exist; check the path")
    if zipfile.is_zipfile(path):
        try:
            with warnings.catch_warnings():  # torch's deprecation chatter would break the one-line error
                warnings.simplefilter("ignore")
                module = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:  # a corrupt archive can fail in many ways; each means "not TorchScript"
            module = None
            jit_error = exc
        if module is not None:
            return LoadedModel(
                module=module.eval(),
                spec=spec,
                fingerprint=model_fingerprint(module, "torchscript"),
                card={"name": path.name, "architecture": "TorchScript", "weights": str(path)},
            )
    else:
        jit_error = None
    # Not TorchScript: a plain state_dict has no architecture; a full pickle is refused unless trusted.
    obj = _torch_load(path, trust_pickle)
    if isinstance(obj, nn.Module):
        return LoadedModel(
            module=obj.eval(),
            spec=spec,
            fingerprint=model_fingerprint(obj, type(obj).__qualname__),
            card={"name": path.name, "architecture": type(obj).__qualname__, "weights": str(path)},
        )
    if isinstance(obj, dict):
        raise ModelLoadError(
            f"{path} holds weights (a state_dict) but no architecture: use --model torchvision:ARCH or "
            f"package.module:function with --weights {path}"
        )
    detail = f" (TorchScript: {jit_error})" if jit_error else ""
    raise ModelLoadError(f"{path} is neither a TorchScript model nor a state_dict{detail}")


def _looks_like_torch_file(path: Path) -> bool:
    """A torch.save file is a zip archive (since 1.6) or a raw pickle (first byte 0x80, the PROTO opcode)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head.startswith(b"PK") or head[:1] == b"\x80"


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    if not _looks_like_torch_file(path):
        raise ModelLoadError(
            f"{path} is not a PyTorch file (neither a torch.save archive nor a pickle): point at the weights "
            "(.safetensors, or a state_dict saved with torch.save)"
        )
    try:
        with warnings.catch_warnings():  # torch's pickle-protocol chatter would break the one-line error
            warnings.simplefilter("ignore")
            return torch.load(str(path), map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as exc:
        if trust_pickle:
            raise ModelLoadError(f"{path} is not a readable PyTorch file: {exc}") from exc
        raise ModelLoadError(
            f"{path} is a full pickle, which can run arbitrary code when loaded, so it was refused; save a "
            "state_dict or safetensors instead, or pass --trust-pickle if you trust its source"
        ) from exc
    except (
        Exception
    ) as exc:  # a corrupt file fails in many ways (KeyError, IndexError, UnicodeDecodeError...)
        raise ModelLoadError(
            f"{path} is not a readable PyTorch file ({exc.__class__.__name__}: {exc})"
        ) from exc


def load_weights(path: str | Path, *, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """Read a state_dict from safetensors or a ``torch.load``-able file, safely.

    Common wrappers (``{"state_dict": ...}``, ``{"model": ...}``) and DataParallel's ``module.`` prefix are
    unwrapped.

    Raises:
        ModelLoadError: missing, unreadable, unsafe (pickle without ``trust_pickle``) or not a state_dict.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelLoadError(f"weights file {str(path)!r} does not exist; check the path")
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state: Any = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise ModelLoadError(f"{path} is not a valid safetensors file: {exc}") from exc
    else:
        state = _torch_load(path, trust_pickle)
    if isinstance(state, nn.Module):
        state = state.state_dict()
    for key in ("state_dict", "model_state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path} does not hold a state_dict (a mapping of names to tensors)")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _load_state(module: nn.Module, state: dict[str, torch.Tensor], source: str | Path) -> None:
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)}≠{tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if wrong or missing or unexpected:
        parts = []
        if wrong:
            parts.append(f"wrong shapes: {'; '.join(wrong[:3])}")
        if missing:
            parts.append(f"missing: {', '.join(missing[:3])}")
        if unexpected:
            parts.append(f"unexpected: {', '.join(unexpected[:3])}")
        raise ModelLoadError(
            f"weights {source} do not fit the architecture ({'; '.join(parts)}): pass the architecture these "
            "weights were saved from"
        )
    module.load_state_dict(state, strict=True)


def model_fingerprint(module: nn.Module, architecture: str = "") -> str:
    """Hash of the architecture name, the module structure and every parameter and buffer."""
    h = hashlib.sha256(architecture.encode())
    h.update(type(module).__qualname__.encode())
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------------------------------- data


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
        spec: ``demo:SPLIT``, ``digits``, ``folder:PATH``, ``csv:PATH`` or ``npz:PATH``.
        preprocessing: the recipe to apply (normally the model's); a default fitting the data otherwise.
        class_names: the model's classes, if known: labels given as names are mapped onto them.
        on_bad_image: ``"error"`` stops at the first unreadable image; ``"skip"`` leaves it out and
            records it in ``ImageData.skipped``.
        data_root: files must lie under this folder (default: the folder or CSV's own folder).

    Raises:
        SpecError, DataLoadError.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError("empty data spec: use demo:train|val|test, digits, folder:PATH, csv:PATH or npz:PATH")
    spec = spec.strip()
    kind, _, arg = spec.partition(":")
    if on_bad_image not in ("error", "skip"):
        raise SpecError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
    if kind == "demo":
        return _load_demo_data(spec, arg, preprocessing)
    if spec == "digits":
        return _load_digits(preprocessing)
    if kind == "npz" and arg:
        return _load_npz(spec, Path(arg), preprocessing, class_names)
    if kind == "folder" and arg:
        return _load_folder(spec, Path(arg), preprocessing, on_bad_image, data_root, class_names)
    if kind == "csv" and arg:
        return _load_csv(spec, Path(arg), preprocessing, on_bad_image, data_root, class_names)
    raise SpecError(
        f"data spec {spec!r} is not understood: use demo:train|val|test, digits, folder:PATH, csv:PATH or npz:PATH"
    )


def _load_demo_data(spec: str, split: str, preprocessing: Preprocessing | None) -> ImageData:
    from essence import sample_data

    if split not in ("train", "val", "test"):
        raise SpecError(f"unknown demo split {split!r}: use demo:train, demo:val or demo:test")
    images, labels = sample_data.load_split(split)
    return ImageData(
        spec=spec,
        labels=labels,
        class_names=list(sample_data.CLASS_NAMES),
        preprocessing=preprocessing or Preprocessing(),
        fingerprint=hash_arrays(images, labels),
        arrays=images,
    )


def _load_digits(preprocessing: Preprocessing | None) -> ImageData:
    from sklearn.datasets import load_digits

    d = load_digits()
    images = d.images.astype(np.float32)
    labels = d.target.astype(np.int64)
    return ImageData(
        spec="digits",
        labels=labels,
        class_names=[str(i) for i in range(10)],
        preprocessing=preprocessing or Preprocessing(mode="L", mean=(0.0,), std=(1.0,), scale=16.0),
        fingerprint=hash_arrays(images, labels),
        arrays=images,
    )


def _load_npz(
    spec: str, path: Path, preprocessing: Preprocessing | None, class_names: list[str] | None
) -> ImageData:
    if not path.is_file():
        raise DataLoadError(f"{path}: file not found; check the path of npz:PATH")
    try:
        with np.load(path, allow_pickle=False) as f:
            keys = set(f.files)
            if not {"images", "labels"} <= keys:
                raise DataLoadError(
                    f"{path}: an npz needs arrays 'images' and 'labels'; it has {sorted(keys)}"
                )
            images, labels = f["images"], f["labels"]
            if not (isinstance(images, np.ndarray) and isinstance(labels, np.ndarray)):  # a non-.npy member
                raise DataLoadError(f"{path}: 'images' and 'labels' must be .npy arrays; save with np.savez")
            names = [str(n) for n in f["class_names"]] if "class_names" in keys else None
    except DataLoadError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, EOFError, KeyError) as exc:
        raise DataLoadError(
            f"{path}: not a readable .npz of plain arrays ({exc}); save with np.savez"
        ) from exc
    if images.dtype.kind not in "uif" or images.ndim not in (3, 4):
        raise DataLoadError(
            f"{path}: 'images' must be numeric N×H×W(×C) or N×C×H×W, got {images.dtype} {images.shape}"
        )
    if images.ndim == 4 and images.shape[-1] not in (1, 3, 4) and images.shape[1] not in (1, 3, 4):
        raise DataLoadError(f"{path}: images of shape {images.shape} have no channel axis of 1, 3 or 4")
    if not np.isfinite(images).all():
        raise DataLoadError(f"{path}: 'images' holds NaN or infinite values; clean the array")
    labels, names = _labels_to_indices(labels, names or class_names, str(path))
    if len(labels) != len(images):
        raise DataLoadError(f"{path}: {len(images)} images but {len(labels)} labels")
    recipe = preprocessing or _default_recipe(images)
    if images.dtype.kind == "f" and images.size and float(images.max()) <= 1.0 and recipe.scale == 255.0:
        recipe = dataclasses.replace(recipe, scale=1.0)  # float images already in [0, 1]
    return ImageData(
        spec=spec,
        labels=labels,
        class_names=names,
        preprocessing=recipe,
        fingerprint=hash_arrays(images, labels),
        arrays=images,
    )


def _default_recipe(images: np.ndarray) -> Preprocessing:
    channels = (
        images.shape[-1]
        if images.ndim == 4 and images.shape[-1] in (1, 3, 4)
        else (images.shape[1] if images.ndim == 4 else 1)
    )
    if channels == 1:
        return Preprocessing(mode="L", mean=(0.0,), std=(1.0,))
    return Preprocessing()


def _labels_to_indices(raw: Any, names: list[str] | None, where: str) -> tuple[np.ndarray, list[str]]:
    """Map labels given as ints or names to indices, with the class names they index."""
    arr = np.asarray(raw)
    if arr.ndim != 1:
        raise DataLoadError(f"{where}: labels must be one per instance (1-D), got shape {arr.shape}")
    if arr.dtype.kind in "iu":
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
    as_str = [str(v) for v in arr.tolist()]
    if names is None:
        names = sorted(set(as_str))
    lookup = {n: i for i, n in enumerate(names)}
    unknown = sorted({s for s in as_str if s not in lookup})
    if unknown:
        raise LabelMismatchError(f"{where}: labels {unknown[:5]} are not among the classes {names[:8]}")
    return np.array([lookup[s] for s in as_str], dtype=np.int64), list(names)


_HASH_CACHE: dict[tuple[str, int, int], str] = {}


def file_digest(path: Path) -> str:
    """SHA-256 of a file's contents, streamed, cached by (path, mtime, size)."""
    st = path.stat()
    key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
    if key not in _HASH_CACHE:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _HASH_CACHE[key] = h.hexdigest()
    return _HASH_CACHE[key]


def confine(path: Path, root: Path, where: str) -> Path:
    """Resolve ``path`` (following symlinks) and check it lies under ``root``.

    Raises:
        DataLoadError: the path escapes the data root (``..`` or a symlink pointing outside).
    """
    resolved = path.resolve()
    root = root.resolve()
    if resolved != root and root not in resolved.parents:
        raise DataLoadError(
            f"{where}: {path} lies outside the data root {root}; move the file under it or set the data root"
        )
    return resolved


def _check_images(
    files: list[Path], labels: list[int], policy: BadImagePolicy, spec: str
) -> tuple[list[Path], list[int], list[tuple[str, str]]]:
    kept, kept_labels, skipped = [], [], []
    for f, y in zip(files, labels, strict=True):
        try:
            open_image(f)
        except DataLoadError as exc:
            if policy == "error":
                raise DataLoadError(f"{exc} (or pass --skip-bad-images to leave such files out)") from exc
            skipped.append((str(f), str(exc)))
            continue
        kept.append(f)
        kept_labels.append(y)
    if not kept:
        raise DataLoadError(f"{spec}: no readable image left ({len(skipped)} skipped)")
    return kept, kept_labels, skipped


def _fingerprint_files(files: list[Path], labels: list[int], names: list[str]) -> str:
    h = hashlib.sha256()
    for f, y in zip(files, labels, strict=True):
        h.update(file_digest(f).encode())
        h.update(f"{y}\n".encode())
    h.update(repr(names).encode())
    return h.hexdigest()[:16]


def _load_folder(
    spec: str,
    root: Path,
    preprocessing: Preprocessing | None,
    policy: BadImagePolicy,
    data_root: str | Path | None,
    class_names: list[str] | None,
) -> ImageData:
    if not root.is_dir():
        raise DataLoadError(f"{root}: not a folder; folder:PATH needs a folder with one subfolder per class")
    base = Path(data_root) if data_root else root
    confine(root, base, spec)
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not classes:
        raise DataLoadError(
            f"{root}: no class subfolders; put each class's images in a subfolder named after it"
        )
    names = class_names or classes
    unknown = [c for c in classes if c not in names]
    if unknown:
        raise LabelMismatchError(
            f"{root}: class folders {unknown[:5]} are not among the model's classes {names[:8]}"
        )
    files, labels = [], []
    for c in classes:
        for f in sorted((root / c).rglob("*")):
            if f.suffix.lower() in IMAGE_SUFFIXES and (f.is_file() or f.is_symlink()):
                confine(f, base, spec)
                files.append(f)
                labels.append(names.index(c))
    if not files:
        raise DataLoadError(
            f"{root}: no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) in the class folders"
        )
    files, labels, skipped = _check_images(files, labels, policy, spec)
    return ImageData(
        spec=spec,
        labels=np.array(labels),
        class_names=list(names),
        preprocessing=preprocessing or Preprocessing(),
        fingerprint=_fingerprint_files(files, labels, names),
        paths=files,
        skipped=skipped,
    )


def _load_csv(
    spec: str,
    path: Path,
    preprocessing: Preprocessing | None,
    policy: BadImagePolicy,
    data_root: str | Path | None,
    class_names: list[str] | None,
) -> ImageData:
    if not path.is_file():
        raise DataLoadError(f"{path}: file not found; check the path of csv:PATH")
    base = Path(data_root) if data_root else path.parent
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except (UnicodeDecodeError, csv.Error, OSError) as exc:
        raise DataLoadError(f"{path}: not a readable UTF-8 CSV of path,label ({exc})") from exc
    if rows and [c.strip().lower() for c in rows[0][:2]] == ["path", "label"]:
        rows = rows[1:]
    if not rows:
        raise DataLoadError(f"{path}: no rows; the CSV needs lines of path,label")
    files, raw_labels = [], []
    for n, row in enumerate(rows, start=1):
        if len(row) < 2 or not row[0].strip() or not row[1].strip():
            raise DataLoadError(f"{path} row {n}: expected path,label, got {row!r}")
        p = Path(row[0].strip())
        p = p if p.is_absolute() else path.parent / p
        confine(p, base, f"{path} row {n}")
        if not p.is_file():
            raise DataLoadError(
                f"{path} row {n}: image {row[0].strip()!r} not found; fix the path or remove the row"
            )
        files.append(p)
        raw_labels.append(row[1].strip())
    as_int = all(s.lstrip("-").isdigit() for s in raw_labels)
    labels_arr, names = _labels_to_indices(
        np.array([int(s) for s in raw_labels]) if as_int else np.array(raw_labels), class_names, str(path)
    )
    files, labels, skipped = _check_images(files, labels_arr.tolist(), policy, spec)
    return ImageData(
        spec=spec,
        labels=np.array(labels),
        class_names=names,
        preprocessing=preprocessing or Preprocessing(),
        fingerprint=_fingerprint_files(files, labels, names),
        paths=files,
        skipped=skipped,
    )


def check_compatible(model: LoadedModel | nn.Module, data: ImageData) -> int:
    """Run the model on two instances: check it accepts the data and its outputs match the data's classes.

    Returns:
        The number of model outputs.

    Raises:
        DataLoadError: the model cannot run on these inputs (size, channels).
        LabelMismatchError: the model's number of outputs differs from the data's number of classes.
    """
    module = model.module if isinstance(model, LoadedModel) else model
    x = data.tensors(np.arange(min(2, len(data))))
    was = module.training
    try:
        module.eval()
        with torch.no_grad():
            device = next(iter(module.parameters()), torch.empty(0)).device
            out = module(x.to(device))
    except RuntimeError as exc:
        msg = str(exc).splitlines()[0][:200]
        raise DataLoadError(
            f"the model cannot run on {data.spec} (inputs {tuple(x.shape[1:])}): {msg}; check the image size "
            "and channels of the preprocessing (--size, mode)"
        ) from exc
    finally:
        module.train(was)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise DataLoadError(
            f"the model must return [batch, classes] logits; got {getattr(out, 'shape', type(out))}"
        )
    k = int(out.shape[1])
    if k != data.num_classes:
        raise LabelMismatchError(
            f"the model has {k} outputs but {data.spec} has {data.num_classes} classes {data.class_names[:6]}: "
            "use data labelled with the model's classes"
        )
    return k


def environment_data_root() -> Path | None:
    """The configured data root (``ESSENCE_DATA_ROOT``), if any."""
    root = os.environ.get("ESSENCE_DATA_ROOT")
    return Path(root) if root else None
