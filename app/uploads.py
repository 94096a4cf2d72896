"""Uploads of a user's own model and dataset: size-checked, saved by content hash, extracted safely.

Limits (:mod:`essence.app.limits`, documented in ``docs/app.md``):

- every uploaded file: at most :data:`UPLOAD_LIMIT_MB` MB — the same figure ``essence app`` gives Streamlit
  as ``server.maxUploadSize``, and checked here too, so the limit holds in tests and behind any server;
- a dataset zip: at most :data:`EXTRACT_LIMIT_MB` MB once extracted (counted while extracting, not read from
  the zip's own headers, which can lie), at most :data:`MAX_MEMBERS` members; no member may be absolute,
  climb out with ``..`` or be a symbolic link.

DICOM files are kept in Essence's own form only (:func:`~essence.app.upload_contents.deidentify_tree`): before an
extracted zip is moved into place, every DICOM file in it is rewritten with the pixel data and the few header
elements the analyses read, and the patient's pseudonym instead of the patient ID; names, birth dates,
institutions and every other element are not kept, and neither is the uploaded zip. Removing an upload (:func:`remove_files`) deletes its
folder under :func:`uploads_root`.

Nothing here imports Streamlit: the page calls these and shows their :class:`EssenceError`\\ s.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import os
import re
import shutil
import stat
import tempfile
import unicodedata
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from essence.app.limits import EXTRACT_LIMIT_MB, MAX_MEMBERS, MB, UPLOAD_LIMIT, UPLOAD_LIMIT_MB
from essence.app.state import DataChoice, ModelChoice
from essence.app.upload_contents import dataset_root, deidentify_tree
from essence.core.base.errors import DataLoadError, ModelLoadError, SpecError, StoreError
from essence.core.inputs.cards import check_class_names as core_check_class_names
from essence.core.inputs.datasets import load_dataset
from essence.core.inputs.models import load_model
from essence.core.inputs.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from essence.storage import default_store_path

CHUNK = 1 << 20

# The whole-model choice: a torch.export program (.pt2). TorchScript cannot be analysed (PyTorch runs no hooks
# on ScriptModules) and load_model refuses it, naming this format.
TORCHSCRIPT = "Exported program (.pt2 from torch.export, architecture inside the file)"
ONNX = "ONNX model (.onnx, architecture inside the file)"
LIBRARY = "A timm or MONAI architecture (name it below)"
LIBRARY_PREFIXES = ("timm:", "monai:")
# The folders of uploads under the uploads root, each holding one folder per upload (named by content hash).
UPLOAD_KINDS = ("datasets", "models")


def uploads_root() -> Path:
    """Where uploads are kept: ``uploads/`` beside the app's store (``$ESSENCE_HOME``)."""
    return default_store_path().parent / "uploads"


def check_upload_size(size: int, name: str) -> None:
    """Refuse a file over the upload limit.

    Raises:
        DataLoadError: naming the file, its size and the limit.
    """
    if size > UPLOAD_LIMIT:
        raise DataLoadError(
            f"{name} is {size / MB:.0f} MB, over the {UPLOAD_LIMIT_MB} MB upload limit: upload a smaller file "
            "(for a large dataset, point `essence` at its folder from the command line instead)"
        )


# The longest name kept for a saved upload: well under the 255 bytes a file name may have, with room for the
# temporary suffixes added while it is written.
MAX_NAME = 120


def safe_name(name: str) -> str:
    """A file name with only letters, digits, ``.``, ``_`` and ``-`` (no folders)."""
    base = PurePosixPath(name.replace("\\", "/")).name
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".") or "upload"
    if len(cleaned) > MAX_NAME:  # file systems take 255 bytes a name: keep the start and the suffix
        suffix = PurePosixPath(cleaned).suffix[:16]
        cleaned = cleaned[: MAX_NAME - len(suffix)] + suffix
    return cleaned


def save_upload(data: bytes, name: str, kind: str) -> Path:
    """Save an upload under ``uploads/KIND/SHA/NAME`` (the same bytes always land in the same place)."""
    check_upload_size(len(data), name)
    digest = hashlib.sha256(data).hexdigest()[:16]
    folder = uploads_root() / kind / digest
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / safe_name(name)
    if not path.exists():
        # A temporary file of this call's own: two sessions saving the same upload never share one.
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".upload-", suffix=".part")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(tmp, path)  # the same bytes either way: the last rename wins, both are whole
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
    return path


# ----------------------------------------------------------------------------------------------- datasets


def _member_path(info: zipfile.ZipInfo) -> PurePosixPath | None:
    """The member's relative path, ``None`` for folders and macOS metadata.

    Raises:
        DataLoadError: an absolute path, a ``..`` component or a symbolic link.
    """
    raw = info.filename.replace("\\", "/")
    path = PurePosixPath(raw)
    if raw.startswith("/") or re.match(r"^[A-Za-z]:", raw) or ".." in path.parts:
        raise DataLoadError(
            f"the zip's member {info.filename!r} points outside the archive: re-create the zip from the "
            "dataset's folder (relative paths only)"
        )
    if stat.S_ISLNK(info.external_attr >> 16):
        raise DataLoadError(
            f"the zip's member {info.filename!r} is a symbolic link, which is refused: zip the files themselves"
        )
    if info.is_dir() or not path.parts or path.parts[0] == "__MACOSX" or path.name.startswith("._"):
        return None
    return path


def safe_extract(data: bytes, dest: Path, prepare: Callable[[Path], None] | None = None) -> Path:
    """Extract a zip into ``dest`` after checking every member (see the module docstring).

    Args:
        data: the zip's bytes.
        dest: the folder to extract into (content-addressed: already there, it is kept).
        prepare: called on the extracted folder before it is moved into place (and on ``dest`` where it was
            already there): rewrites what may not be kept as uploaded.

    Returns:
        ``dest``.

    Raises:
        DataLoadError: not a zip, too many members, a bad member, or over :data:`EXTRACT_LIMIT_MB` MB; whatever
            ``prepare`` raises (nothing of the zip is then kept).
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile as exc:
        raise DataLoadError(
            "the dataset upload is not a zip file: zip the dataset's folder (one sub-folder per class, or a "
            "CSV of path,label beside the images)"
        ) from exc
    with archive:
        infos = archive.infolist()
        if len(infos) > MAX_MEMBERS:
            raise DataLoadError(
                f"the zip has {len(infos)} members, over the limit of {MAX_MEMBERS}: upload a smaller dataset"
            )
        members = [(info, p) for info in infos if (p := _member_path(info)) is not None]
        if not members:
            raise DataLoadError("the zip holds no files: zip the dataset's folder with its images")
        if dest.is_dir():  # content-addressed and only ever renamed into place whole: already extracted
            if prepare is not None:
                prepare(dest)  # idempotent: a folder kept by an earlier version is brought to today's form
            return dest
        # Each call extracts into a folder of its own, renamed into place at once: two sessions uploading the
        # same zip never write into, or delete, each other's files.
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part"))
        try:
            _extract(archive, members, tmp)
            if prepare is not None:
                prepare(tmp)
            try:
                tmp.rename(dest)
            except OSError:
                if not dest.is_dir():  # not another session's finished copy of the same zip
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _extract(archive: zipfile.ZipFile, members: list, root: Path) -> None:
    budget = EXTRACT_LIMIT_MB * MB
    root.mkdir(parents=True, exist_ok=True)
    top = root.resolve()
    for info, rel in members:
        target = (root / Path(*rel.parts)).resolve()
        if top not in target.parents:
            raise DataLoadError(f"the zip's member {info.filename!r} points outside the archive")
        try:
            target.parent.mkdir(parents=True, exist_ok=True)  # a name over the file system's limit fails here
            with archive.open(info) as src, open(target, "wb") as out:
                while chunk := src.read(CHUNK):
                    budget -= len(chunk)
                    if budget < 0:
                        raise DataLoadError(
                            f"the zip expands to more than {EXTRACT_LIMIT_MB} MB: upload a smaller dataset"
                        )
                    out.write(chunk)
        except OSError as exc:
            if exc.errno != errno.ENAMETOOLONG:
                raise DataLoadError(
                    f"the zip's member {info.filename[:80]!r} cannot be written ({exc.strerror})"
                ) from exc
            raise DataLoadError(
                f"the zip's member {info.filename[:80]!r}... has a name longer than the file system allows: rename "
                "it (or its folders) shorter and re-create the zip"
            ) from exc
        except (zipfile.BadZipFile, RuntimeError, NotImplementedError) as exc:
            raise DataLoadError(
                f"the zip's member {info.filename!r} cannot be read ({exc}): re-create the zip"
            ) from exc


def dataset_from_zip(
    data: bytes, name: str, preprocessing: Preprocessing | None = None, *, skip_bad_images: bool = False
) -> DataChoice:
    """Extract, locate and check an uploaded dataset; its DICOM files are kept in Essence's own form only
    (:func:`~essence.app.upload_contents.deidentify_tree`), nothing else of them.

    Args:
        data, name: the zip's bytes and file name.
        preprocessing: the recipe to check the images with (default: 64 px).
        skip_bad_images: leave unreadable images out instead of refusing the dataset.

    Returns:
        The choice to add to the sidebar.

    Raises:
        DataLoadError, SpecError: an unsafe or unreadable zip, or images that cannot be loaded.
    """
    check_upload_size(len(data), name)
    digest = hashlib.sha256(data).hexdigest()[:16]

    def prepare(folder: Path) -> None:
        deidentify_tree(folder, skip_bad_images=skip_bad_images)

    root = safe_extract(data, uploads_root() / "datasets" / digest, prepare)
    spec = dataset_root(root)
    loaded = load_dataset(
        spec,
        preprocessing or Preprocessing(size=(64, 64)),
        data_root=root,
        on_bad_image="skip" if skip_bad_images else "error",
    )
    check_class_names(loaded.class_names)
    return DataChoice(label=f"{safe_name(name)} (uploaded)", spec=spec)


def upload_folder(path: str) -> Path | None:
    """The folder of the upload a path lies in (``uploads/KIND/DIGEST``), or None for a path outside the uploads."""
    root = uploads_root().resolve()
    try:
        parts = Path(path).resolve().relative_to(root).parts
    except (ValueError, OSError, RuntimeError):
        return None
    return root / parts[0] / parts[1] if len(parts) >= 2 and parts[0] in UPLOAD_KINDS else None


def remove_files(folder: Path) -> None:
    """Delete an upload's folder (:func:`upload_folder`) with everything in it; nothing outside the uploads.

    Raises:
        StoreError: the folder is not an upload's, or cannot be deleted (naming it and the fix).
    """
    if upload_folder(str(folder)) != folder.resolve():
        raise StoreError(
            f"{folder} is not an upload's folder: only folders under {uploads_root()} are deleted"
        )
    try:
        shutil.rmtree(folder)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(
            f"the upload's files in {folder} cannot be deleted ({exc.strerror}): delete that folder by hand"
        ) from exc


def check_class_names(names: list[str]) -> None:
    """Refuse class names with control characters (a renderer may abort on them; nobody types them).

    Raises:
        DataLoadError: naming the class (its control characters shown escaped) and the fix.
    """
    for name in names:
        if any(unicodedata.category(ch) in ("Cc", "Cf") for ch in str(name)):
            raise DataLoadError(
                f"the class name {ascii(name)} holds control characters: rename that folder (or label) with "
                "printable characters only"
            )


# ----------------------------------------------------------------------------------------------- models


def model_class_names(names: list[str]) -> list[str]:
    """The model form's class names, checked: distinct, non-empty, no control characters (one line naming it).

    Raises:
        SpecError: a repeated or empty name; DataLoadError: a control character (as for the data's names).
    """
    check_class_names(names)
    return core_check_class_names(list(names), "Class names")


def architectures() -> list[str]:
    """Architectures an uploaded state_dict can be for: TorchScript first, then torchvision's classifiers."""
    import torchvision

    return [TORCHSCRIPT, ONNX, LIBRARY, *sorted(torchvision.models.list_models(module=torchvision.models))]


def recipe_of(size: int | None, blur: float, normalise: str, mode: str = "RGB") -> Preprocessing:
    """The preprocessing recipe chosen with an upload.

    Args:
        size: square side to resize to (``None``: keep each image's size).
        blur: Gaussian blur σ in px (0: none).
        normalise: ``"imagenet"`` (torchvision's mean/std) or ``"none"``.
        mode: ``"RGB"`` or ``"L"``.

    Raises:
        SpecError: a value out of range.
    """
    if size is not None and not 8 <= size <= 1024:
        raise SpecError(f"image size {size} px is out of range: choose 8 to 1024")
    if blur < 0:
        raise SpecError(f"blur σ {blur} must be ≥ 0")
    channels = 3 if mode == "RGB" else 1
    mean, std = (
        (IMAGENET_MEAN, IMAGENET_STD) if normalise == "imagenet" else ((0.0,) * channels, (1.0,) * channels)
    )
    if channels == 1:
        mean, std = mean[:1], std[:1]
    return Preprocessing(
        mode=mode, size=(size, size) if size else None, blur_sigma=blur, mean=tuple(mean), std=tuple(std)
    )


def model_from_upload(
    data: bytes,
    name: str,
    architecture: str,
    preprocessing: Preprocessing,
    class_names: list[str] | None = None,
    layer: str | None = None,
    *,
    trust_pickle: bool = False,
) -> ModelChoice:
    """Save and load an uploaded model to check it, and return its sidebar choice.

    Args:
        data, name: the file's bytes and name (``.safetensors``, ``.pt``/``.pth`` state_dict, or TorchScript).
        architecture: :data:`TORCHSCRIPT` or a torchvision architecture name.
        preprocessing: the recipe its inputs need.
        class_names: its classes in output order (``None``: the dataset's).
        layer: its default slice (``None``: pick one in the sidebar).
        trust_pickle: read a full pickle, which can run code: only for a file from a trusted source.

    Raises:
        ModelLoadError, SpecError: the file does not load (unsafe pickle, wrong architecture, bad file).
    """
    if class_names:  # typed by a person: distinct, printable names (the data's names are held to the same)
        class_names = model_class_names(class_names)
    path = save_upload(data, name, "models")
    if architecture == TORCHSCRIPT:
        if path.suffix == ".safetensors":
            raise ModelLoadError(
                f"{name} holds weights only (safetensors): choose the architecture they were saved from"
            )
        spec, weights = str(path), None
    elif architecture == ONNX:
        spec, weights = f"onnx:{path}", None
    elif architecture.startswith(LIBRARY_PREFIXES):  # timm:ARCH or monai:NETWORK, typed on the page
        spec, weights = architecture.strip(), str(path)
    elif architecture == LIBRARY:
        raise SpecError(
            "name the architecture: timm:ARCH (e.g. timm:resnet18) or monai:NETWORK (e.g. monai:DenseNet121)"
        )
    else:
        spec, weights = f"torchvision:{architecture}", str(path)
    try:
        model = load_model(spec, weights, trust_pickle=trust_pickle)
    except (IndexError, KeyError, TypeError) as exc:
        # torch's safe unpickler can fail this way on bytes that are no pickle at all
        raise ModelLoadError(
            f"{name} is not a readable PyTorch file ({type(exc).__name__}: {exc}): upload a .safetensors file, "
            "a state_dict saved with torch.save, or a TorchScript model"
        ) from exc
    if layer:
        from essence.core.engine.slices import resolve_layer

        resolve_layer(model.module, layer)
    label = f"{safe_name(name)} ({architecture.split(' ')[0]})"
    return ModelChoice(
        label=label,
        spec=spec,
        weights=weights,
        class_names=tuple(class_names) if class_names else None,
        preprocessing=tuple(
            (k, tuple(v) if isinstance(v, list) else v) for k, v in sorted(preprocessing.to_dict().items())
        ),
        default_layer=layer or None,
        trust_pickle=trust_pickle,
    )
