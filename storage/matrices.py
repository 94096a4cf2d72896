"""Tensors as bytes, and per-instance matrices stored by content hash.

Bytes are little-endian with the numpy dtype string (``"<f8"``, ``"<f4"``, ``"<i8"``) and the shape kept
beside them, so a store is portable between machines. A matrix's bytes are named by their SHA-256 and the
hash is checked on every read: a damaged or swapped file is detected, never served.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from essence.core.base.errors import StoreError

if TYPE_CHECKING:  # PyTorch is imported by the functions that make tensors, not by a store that only reads
    import torch

# An unreferenced matrix file younger than this may belong to a write whose transaction has not committed yet
# (files are written first, then referenced in one transaction): prune leaves it alone. This guards files
# still being written; a file being reused, or a write slower than this, is guarded by the write lock
# (see ``Store.prune``).
ORPHAN_GRACE_S = 3600.0


def to_bytes(t: torch.Tensor) -> tuple[bytes, str, list[int]]:
    """``(bytes, dtype string, shape)`` of a tensor, little-endian."""
    a = t.detach().cpu().contiguous().numpy()
    a = a.astype(a.dtype.newbyteorder("<"), copy=False)
    return a.tobytes(), a.dtype.str, list(a.shape)


def from_bytes(data: bytes, dtype: str, shape: list[int] | tuple[int, ...]) -> torch.Tensor:
    """The tensor of :func:`to_bytes` (a copy that owns its memory)."""
    import torch

    dt = np.dtype(dtype)
    expected = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    if len(data) != expected:
        raise StoreError(
            f"stored bytes have length {len(data)}, expected {expected} for {dtype} {list(shape)}"
        )
    a = np.frombuffer(data, dtype=dt).reshape(tuple(shape))
    return torch.from_numpy(a.astype(dt.newbyteorder("="), copy=True))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class FileBlobs:
    """Content-addressed files in a folder beside the database (``essence.blobs/ab/abcdef...``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, digest: str) -> Path:
        return self.root / digest[:2] / digest

    def put(self, data: bytes) -> str:
        """Write ``data`` (atomically: a temporary file renamed into place) and return its SHA-256."""
        digest = sha256(data)
        target = self.path(digest)
        if target.is_file() and target.stat().st_size == len(data) and sha256(target.read_bytes()) == digest:
            # Same content, same name: already there (a damaged copy is rewritten below). Made young again,
            # so that a prune's grace period covers it as it covers a new file.
            with contextlib.suppress(OSError):
                os.utime(target)
            return digest
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, target)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise StoreError(
                f"cannot write {target} ({exc.strerror or exc}): make {self.root} writable or free space"
            ) from exc
        return digest

    def get(self, digest: str) -> bytes:
        """The bytes named ``digest``, verified.

        Raises:
            StoreError: missing, unreadable, or not matching its hash.
        """
        target = self.path(digest)
        try:
            data = target.read_bytes()
        except OSError as exc:
            raise StoreError(
                f"matrix file {target} is missing or unreadable ({exc.strerror or exc})"
            ) from exc
        if sha256(data) != digest:
            raise StoreError(f"matrix file {target} does not match its SHA-256 (damaged or replaced)")
        return data

    def files(self) -> list[Path]:
        if not self.root.is_dir():
            return []
        return [p for p in self.root.glob("??/*") if p.is_file() and not p.name.startswith(".tmp-")]

    def size(self) -> int:
        return sum(p.stat().st_size for p in self.files())

    def orphans(self, referenced: set[str], now: float | None = None) -> list[Path]:
        """Files no row references, older than :data:`ORPHAN_GRACE_S` (temporary leftovers included)."""
        now = time.time() if now is None else now
        candidates = [p for p in self.root.glob("??/*") if p.is_file()] if self.root.is_dir() else []
        return [
            p
            for p in candidates
            if (p.name.startswith(".tmp-") or p.name not in referenced)
            and now - p.stat().st_mtime > ORPHAN_GRACE_S
        ]
