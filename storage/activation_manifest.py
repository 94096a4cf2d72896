"""One stored slice's manifest: the key it is stored under, and its files' sizes and SHA-256, written last.

A slice folder (:mod:`essence.storage.activations`) holds ``z.npy``, ``labels.npy``, ``outputs.npy`` and
``slice.json``, the manifest: the :class:`SliceKey`, the number of instances, z's shape, dtype and layout, and
each file's size and SHA-256. :func:`write_manifest` writes it once every file is flushed to disk, so a folder
with a manifest is complete. Before a slice is served, :func:`checked_manifest` checks the manifest's shape and
key and :func:`check_file` that every file is byte for byte what was written: a regular file (no link) of the
recorded size whose SHA-256, streamed over the whole file (:func:`file_sha256`), is the recorded one.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from essence.core.base.errors import StoreError
from essence.storage.records import ENGINE_VERSION

if TYPE_CHECKING:  # names for the annotations only: reading a manifest needs neither PyTorch nor the engine
    from essence.core.engine.slices import Layout
    from essence.core.inputs.data import ImageData
    from essence.core.inputs.models import LoadedModel

MANIFEST = "slice.json"
SLICE_FILES = ("z.npy", "labels.npy", "outputs.npy")


@dataclass(frozen=True)
class SliceKey:
    """What z depends on: the model, the images, their preprocessing and the layer (not the question)."""

    model_fp: str
    dataset_fp: str
    preprocessing_fp: str
    layer: str
    engine_version: int = ENGINE_VERSION

    def digest(self) -> str:
        """SHA-256 (hex) of the key's canonical JSON: the slice's folder name."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    @classmethod
    def of(cls, model: LoadedModel, data: ImageData, layer: str) -> SliceKey:
        return cls(
            model.fingerprint, data.fingerprint, data.preprocessing.fingerprint(), layer, ENGINE_VERSION
        )


def write_manifest(
    folder: Path, key: SliceKey, n: int, z_shape: list[int], dtype: str, layout: Layout
) -> None:
    """Sync the slice's files to disk, then write the manifest last: their sizes and SHA-256 with the key.

    Args:
        folder: the slice's folder, holding every file of :data:`SLICE_FILES`.
        key: the slice's key. n: its number of instances. z_shape: one instance's z. dtype: z's NumPy dtype
            string. layout: z's layout, as the engine recorded it.
    """
    files = {}
    for name in SLICE_FILES:
        path = folder / name
        with open(path, "rb+") as f:
            os.fsync(f.fileno())
        files[name] = {"bytes": path.stat().st_size, "sha256": file_sha256(path)}
    manifest = {
        "key": asdict(key),
        "num_instances": n,
        "z_shape": z_shape,
        "dtype": dtype,
        "layout": layout,
        "files": files,
        "created_at": time.time(),
    }
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))


def checked_manifest(folder: Path, key: SliceKey) -> dict[str, Any]:
    """The slice's manifest, checked for the shape :func:`write_manifest` writes.

    Raises:
        StoreError: missing, not JSON, or of another shape (each named).
    """
    path = folder / MANIFEST
    if folder.is_symlink() or path.is_symlink():
        raise StoreError("it is a symbolic link, not the folder the store wrote")
    try:
        m = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"its manifest cannot be read: {exc}") from exc
    if not isinstance(m, dict) or not isinstance(m.get("key"), dict):
        raise StoreError("its manifest is not an object with a key")
    if SliceKey(**m["key"]) != key:
        raise StoreError("its manifest names another key")
    n, shape, files = m.get("num_instances"), m.get("z_shape"), m.get("files")
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise StoreError("its manifest's num_instances is not a count")
    if not isinstance(shape, list) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape
    ):
        raise StoreError("its manifest's z_shape is not a list of sizes")
    if not isinstance(files, dict) or sorted(files) != sorted(SLICE_FILES):
        raise StoreError(f"its manifest's files are not {', '.join(SLICE_FILES)}")
    for name, facts in files.items():
        if (
            not isinstance(facts, dict)
            or not isinstance(facts.get("bytes"), int)
            or not isinstance(facts.get("sha256"), str)
            or len(facts["sha256"]) != 64
        ):
            raise StoreError(f"its manifest records no size and SHA-256 for {name}")
    return m


def check_file(path: Path, facts: dict[str, Any]) -> None:
    """A regular file (not a link) of the recorded size and SHA-256, streamed once over the whole file.

    Raises:
        StoreError: a link, another size, or other bytes.
    """
    st = os.lstat(path)
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"{path.name} is not a regular file (a link or another kind)")
    if st.st_size != facts["bytes"]:
        raise StoreError(f"{path.name} has {st.st_size} bytes, not {facts['bytes']}")
    if file_sha256(path) != facts["sha256"]:
        raise StoreError(f"{path.name} is not what was written (its SHA-256 differs)")


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, streamed in 4 MiB blocks through one buffer (memory stays O(1))."""
    h = hashlib.sha256()
    buf = bytearray(1 << 22)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while n := f.readinto(buf):
            h.update(view[:n])
    return h.hexdigest()
