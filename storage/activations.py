"""Stored slices: z = h(x) of a dataset at a layer, in files beside the store, for follow-up questions.

A slice is stored once, by the first full pass at it (the engine hands over z batch by batch: no extra pass),
and read back memory-mapped, so a follow-up question runs the layers above the slice only
(:mod:`essence.core.engine.activation_source`). :class:`StoreSlices` is the activation source the engine is
handed explicitly (``activations=store.slice_source(model, data)``). Keyed like profiles, without the question: model, dataset and
preprocessing fingerprints, layer, engine version. Same key → the same z.

Layout: ``essence.slices/<key digest>/`` holds ``z.npy`` ``[N, *z_shape]`` (written in place through a memory
map, one batch at a time: memory stays O(batch)), ``labels.npy`` ``[N]``, ``outputs.npy`` ``[N, K]`` and
``slice.json`` (the key, shapes, layout, SHA-256 of each file, sizes). A slice is written under a temporary
name and renamed into place once complete and flushed, so a crash leaves at most a temporary folder (removed
by ``prune``); a reader never sees half a slice. On reading, each file's size and header are checked and g is
run on a few stored z, which must give the stored outputs: a stale or foreign z is recomputed, never served.
Before that, every file is checked to be byte for byte what was written (:mod:`essence.storage.activation_manifest`:
a regular file, no link, of the recorded size whose SHA-256, streamed over the whole file, is the one in
``slice.json``); a damaged slice — a changed row, rotated labels, a zeroed block, a link to another file, a
manifest of another shape — is named in one warning, removed and recomputed by the question that found it
(docs/store.md gives the cost).

Size: at most :func:`slice_limit_bytes` in all (``ESSENCE_SLICE_CACHE_MB``, default
:data:`DEFAULT_LIMIT_MB`; ``0`` turns stored slices off). A new slice makes room by removing the least
recently used ones; a slice larger than the whole limit is not stored. Only a store in a file (SQLite) has a
folder for slices; a database server's store keeps none.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from essence.core.base.errors import StoreError
from essence.storage.activation_manifest import (
    MANIFEST,
    SliceKey,
    check_file,
    checked_manifest,
    write_manifest,
)
from essence.storage.matrices import ORPHAN_GRACE_S

if TYPE_CHECKING:  # PyTorch and the engine are imported where a slice is read, not by a store that only lists
    import torch
    from torch import nn

    from essence.core.engine.activation_source import StoredSlice
    from essence.core.engine.slices import Layout
    from essence.core.inputs.data import ImageData
    from essence.core.inputs.models import LoadedModel

LIMIT_ENV = "ESSENCE_SLICE_CACHE_MB"
DEFAULT_LIMIT_MB = 4096
_TMP = ".tmp-"


def slice_limit_bytes() -> int:
    """The most bytes stored slices may take (``ESSENCE_SLICE_CACHE_MB``; 0: none are stored or read).

    Raises:
        StoreError: the variable is not a number ≥ 0.
    """
    text = os.environ.get(LIMIT_ENV, "").strip()
    if not text:
        return DEFAULT_LIMIT_MB << 20
    try:
        mb = float(text)
    except ValueError:
        mb = -1.0
    if not (mb >= 0 and math.isfinite(mb)):
        raise StoreError(f"{LIMIT_ENV}={text!r}: give a size in MB ≥ 0 (0 turns stored slices off)")
    return int(mb * (1 << 20))


@dataclass(frozen=True)
class SliceEntry:
    """One stored slice as ``store info`` lists it.

    Attributes:
        digest: its key's digest (the folder name). key: the key.
        num_instances: N. z_shape: one instance's z. nbytes: bytes on disk. used_at: last use (epoch seconds).
    """

    digest: str
    key: SliceKey
    num_instances: int
    z_shape: tuple[int, ...]
    nbytes: int
    used_at: float


class SliceWriter:
    """Receives z, labels and outputs batch by batch (an :class:`~essence.core.engine.activation_source.
    ActivationRecorder`)."""

    def __init__(self, folder: Path, n: int, limit: int) -> None:
        self.folder = folder
        self.n = n
        self.limit = limit
        self.rows = 0
        self.layout: Layout = "unknown"
        self.skipped = False
        self._z: np.memmap[Any, np.dtype[Any]] | None = None
        self._labels: list[np.ndarray[Any, np.dtype[Any]]] = []
        self._outputs: list[np.ndarray[Any, np.dtype[Any]]] = []

    def write(self, z: torch.Tensor, labels: torch.Tensor, outputs: torch.Tensor, layout: Layout) -> None:
        if self.skipped:
            return
        a = z.detach().contiguous().cpu().numpy()
        if self._z is None:
            if self.n * a[0].nbytes > self.limit:  # larger than the whole limit: not stored at all
                self.skipped = True
                return
            try:
                self._z = self._create(a.dtype, (self.n, *a.shape[1:]))
            except OSError as exc:  # no room on the disk: the analysis goes on, the slice is not stored
                self.skipped = True
                warnings.warn(f"the slice was not stored ({exc}): follow-ups will run h again", stacklevel=2)
                return
            self.layout = layout
        self._z[self.rows : self.rows + len(a)] = a
        self.rows += len(a)
        self._labels.append(labels.detach().long().cpu().numpy())
        self._outputs.append(outputs.detach().float().cpu().numpy())

    def _create(self, dtype: np.dtype, shape: tuple[int, ...]) -> np.memmap:
        """``z.npy``, its blocks reserved on disk first: a memory map's write into a sparse file on a full disk
        ends the process (SIGBUS), a refused reservation is an ``OSError``."""
        self.folder.mkdir(parents=True)
        path = self.folder / "z.npy"
        z = np.lib.format.open_memmap(path, "w+", dtype, shape)
        with open(path, "rb+") as f:
            if hasattr(os, "posix_fallocate"):
                os.posix_fallocate(f.fileno(), 0, path.stat().st_size)
        return z

    def finish(self, key: SliceKey) -> None:
        """Flush every file, write the manifest last."""
        assert self._z is not None
        self._z.flush()
        z_shape = list(self._z.shape[1:])
        dtype = self._z.dtype.str
        del self._z
        np.save(self.folder / "labels.npy", np.concatenate(self._labels))
        np.save(self.folder / "outputs.npy", np.concatenate(self._outputs))
        write_manifest(self.folder, key, self.n, z_shape, dtype, self.layout)


class SliceFiles:
    """The stored slices of one store: a folder of slice folders, bounded in size."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def folder(self, key: SliceKey) -> Path:
        return self.root / key.digest()

    def entries(self) -> list[SliceEntry]:
        """Every complete stored slice, least recently used first."""
        out: list[SliceEntry] = []
        for manifest in self.root.glob(f"*/{MANIFEST}") if self.root.is_dir() else []:
            if manifest.parent.name.startswith(_TMP):  # being written (or left by a crash): not a slice yet
                continue
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError, AttributeError):
                m = json.loads(manifest.read_text())
                out.append(
                    SliceEntry(
                        digest=manifest.parent.name,
                        key=SliceKey(**m["key"]),
                        num_instances=int(m["num_instances"]),
                        z_shape=tuple(m["z_shape"]),
                        nbytes=_folder_bytes(manifest.parent),
                        used_at=manifest.stat().st_mtime,
                    )
                )
        return sorted(out, key=lambda e: e.used_at)

    def size(self) -> int:
        """Bytes of every slice folder, temporary ones included."""
        return sum(_folder_bytes(p) for p in self.root.iterdir() if p.is_dir()) if self.root.is_dir() else 0

    def find(self, key: SliceKey, model: nn.Module, data: object) -> StoredSlice | None:
        """The stored z of ``key`` for ``model`` (memory-mapped), or ``None`` (not stored, damaged, or stale).

        A stored slice is served only if it is byte for byte what was written: its manifest has the recorded
        shape, every file is a regular file (not a link) of the recorded size whose SHA-256 — streamed over the
        whole file — is the recorded one, and g on a few stored z gives the stored outputs. A slice that fails
        any check is named in one warning and removed, so the question that found it stores a fresh one.
        """
        folder = self.folder(key)
        if not os.path.lexists(folder):
            return None
        try:
            m = checked_manifest(folder, key)
            for name, facts in m["files"].items():
                check_file(folder / name, facts)
            z = np.load(folder / "z.npy", mmap_mode="c", allow_pickle=False)  # copy-on-write: never changed
            labels = np.load(folder / "labels.npy", allow_pickle=False)
            outputs = np.load(folder / "outputs.npy", allow_pickle=False)
            if (
                z.shape != (m["num_instances"], *m["z_shape"])
                or labels.shape != (len(z),)
                or outputs.ndim != 2
                or len(outputs) != len(z)
            ):
                raise StoreError("its arrays do not have the shapes its manifest records")
        except (OSError, ValueError, KeyError, TypeError, AttributeError, StoreError) as exc:
            self._discard_damaged(folder, str(exc))
            return None
        import torch

        from essence.core.engine.activation_source import open_stored_slice

        found = open_stored_slice(
            model,
            data,
            key.layer,
            torch.from_numpy(z),
            torch.from_numpy(labels).long(),
            torch.from_numpy(outputs),
            layout=m.get("layout", "unknown"),
            nbytes=int(m["files"]["z.npy"]["bytes"]),
        )
        if found is not None:
            with contextlib.suppress(OSError):
                os.utime(folder / MANIFEST)  # the least recently used slices go first
        return found

    def _discard_damaged(self, folder: Path, why: str) -> None:
        """One warning, and the damaged slice removed: the next full pass stores it again."""
        warnings.warn(
            f"stored slice {folder.name[:12]} is damaged ({why}); it was removed and will be recomputed",
            StoredSliceWarning,
            stacklevel=4,
        )
        if folder.is_symlink() or not folder.is_dir():
            with contextlib.suppress(OSError):
                folder.unlink()
        else:
            shutil.rmtree(folder, ignore_errors=True)

    @contextmanager
    def record(
        self, key: SliceKey, n: int, limit: int, deferred: list[PendingSlice] | None = None
    ) -> Iterator[SliceWriter]:
        """Collect a full pass's z; on a clean exit with every row written, store it (making room first).

        Nothing is stored when the block raises, when fewer than ``n`` rows arrived, or when the slice alone is
        larger than ``limit``; the temporary folder is removed in every case.

        Args:
            key, n, limit: the slice, its number of instances and the size limit of all slices.
            deferred: when given, a complete slice is not put in place yet: a :class:`PendingSlice` is appended
                instead, to be published once the command that asked for it has succeeded as a whole (a failed
                command leaves the store as it found it), or discarded.
        """
        tmp = self.root / f"{_TMP}{uuid.uuid4().hex}"
        writer = SliceWriter(tmp, n, limit)
        pending = PendingSlice(self, key, writer, limit)
        handed_over = False
        try:
            yield writer  # an error of the pass itself propagates: nothing is stored
            if writer.skipped or writer._z is None or writer.rows != n:
                return
            if deferred is not None:
                deferred.append(pending)
                handed_over = True  # its owner publishes or discards it
                return
            pending.publish()
        finally:
            if not handed_over:
                pending.discard()

    def _publish(self, key: SliceKey, writer: SliceWriter, limit: int) -> None:
        try:
            writer.finish(key)
            self._make_room(_folder_bytes(writer.folder), limit, keep=key.digest())
            with contextlib.suppress(OSError):  # stored meanwhile by another process: theirs stands
                os.replace(writer.folder, self.folder(key))
        except OSError as exc:
            _not_stored(key, exc)

    def _make_room(self, incoming: int, limit: int, keep: str) -> None:
        """Remove the least recently used slices until ``incoming`` more bytes fit under ``limit``."""
        entries = [e for e in self.entries() if e.digest != keep]
        total = sum(e.nbytes for e in entries)
        for e in entries:
            if total + incoming <= limit:
                break
            shutil.rmtree(self.root / e.digest, ignore_errors=True)
            total -= e.nbytes

    def prune(
        self,
        *,
        older_than_days: float | None = None,
        model_fp: str | None = None,
        everything: bool = False,
        dry_run: bool = False,
    ) -> tuple[int, int]:
        """Remove slices unused for a number of days, of one model, or all; and temporary leftovers.

        Returns:
            ``(slices removed, bytes freed)`` (what would be, with ``dry_run``).
        """
        now = time.time()
        chosen = [
            e
            for e in self.entries()
            if everything
            or (
                (older_than_days is not None or model_fp is not None)
                and (older_than_days is None or now - e.used_at > older_than_days * 86400)
                and (model_fp is None or e.key.model_fp == model_fp)
            )
        ]
        folders = [self.root / e.digest for e in chosen]
        leftovers = [
            p
            for p in (self.root.iterdir() if self.root.is_dir() else [])
            if p.is_dir() and p.name.startswith(_TMP) and now - p.stat().st_mtime > ORPHAN_GRACE_S
        ]
        freed = sum(_folder_bytes(p) for p in folders + leftovers)
        if not dry_run:
            for p in folders + leftovers:
                shutil.rmtree(p, ignore_errors=True)
        return len(folders), freed


class PendingSlice:
    """A complete slice in its temporary folder, waiting for the command that computed it to succeed."""

    def __init__(self, files: SliceFiles, key: SliceKey, writer: SliceWriter, limit: int) -> None:
        self.files, self.key, self.writer, self.limit = files, key, writer, limit

    def publish(self) -> None:
        """Put it in place (a failure to store is a warning: follow-ups will run h again)."""
        try:
            self.files._publish(self.key, self.writer, self.limit)
        finally:
            self.discard()

    def discard(self) -> None:
        """Remove the temporary folder (after :meth:`publish`, only what was not moved into place)."""
        self.writer._z = None
        shutil.rmtree(self.writer.folder, ignore_errors=True)


class StoreSlices:
    """The activation source of one (model, data) pair: finds and records their z in a store's slice folder.

    An :class:`~essence.core.engine.activation_source.ActivationSource`, handed out by ``Store.slice_source``.
    Pass it as ``activations=`` to the analyses of exactly this model and data object: they read z through it,
    and the first full pass at a slice records z into it. It vouches for its own objects only: asked about
    another model or data, it finds nothing and records nothing.
    """

    def __init__(self, files: SliceFiles, model: LoadedModel, data: ImageData, limit: int) -> None:
        self.files = files
        self.model = model
        self.data = data
        self.limit = limit
        self._found: dict[str, StoredSlice] = {}
        # Slices recorded inside :meth:`held`: published when its block succeeds.
        self.deferred: list[PendingSlice] | None = None

    def _key(self, model: nn.Module, data: object, layer: str) -> SliceKey | None:
        if model is not self.model.module or data is not self.data:
            return None  # another model or data than this source's: no key to vouch for
        return SliceKey.of(self.model, self.data, layer)

    def find(self, model: nn.Module, data: object, layer: str) -> StoredSlice | None:
        key = self._key(model, data, layer)
        if key is None or self.limit <= 0:
            return None
        digest = key.digest()
        if digest not in self._found:
            found = self.files.find(key, model, data)
            if found is None:
                return None
            self._found[digest] = found
        return self._found[digest]

    def recorder(
        self, model: nn.Module, data: object, layer: str, n: int
    ) -> AbstractContextManager[SliceWriter] | None:
        """A context that stores the z written to it (``None``: another model or data, or already stored)."""
        key = self._key(model, data, layer)
        if key is None or self.limit <= 0 or self.files.folder(key).is_dir():
            return None
        return self.files.record(key, n, self.limit, self.deferred)

    @contextmanager
    def held(self) -> Iterator[None]:
        """Hold what is recorded inside the block: store it once the block succeeds, drop it if it raises.

        A command that fails after its pass (an empty class, a locked store) then leaves the store as it found
        it: the slice's z and the command's results are stored together or not at all.
        """
        self.deferred = []
        try:
            yield
        except BaseException:
            self.discard_deferred()
            raise
        self.publish_deferred()

    def publish_deferred(self) -> None:
        """Store what was recorded while deferred (the command succeeded)."""
        pending, self.deferred = self.deferred or [], None
        for p in pending:
            p.publish()

    def discard_deferred(self) -> None:
        """Drop what was recorded while deferred (the command failed: the store stays as it was)."""
        pending, self.deferred = self.deferred or [], None
        for p in pending:
            p.discard()


class StoredSliceWarning(UserWarning):
    """A stored slice was damaged (changed, truncated, linked elsewhere) and is being recomputed."""


def _not_stored(key: SliceKey, exc: OSError) -> None:
    warnings.warn(
        f"the slice at {key.layer!r} was not stored ({exc}): follow-ups will run h again", stacklevel=4
    )


def _folder_bytes(folder: Path) -> int:
    total = 0
    for p in folder.glob("*"):
        with contextlib.suppress(OSError):
            total += p.stat().st_size
    return total
