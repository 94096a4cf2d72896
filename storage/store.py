"""The store: cached class profiles (with per-instance matrices), runs and review verdicts.

Every write is one transaction: a profile, its run and its matrices appear together or not at all, and a
committed verdict is never lost or overwritten (a change of mind is a new row).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine, delete, func, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from essence.core.base.errors import EssenceError, SpecError
from essence.storage import connect
from essence.storage.activations import SliceFiles
from essence.storage.matrices import FileBlobs
from essence.storage.models import BlobRow, MatrixRow, ProfileRow, RunRow, VerdictRow
from essence.storage.profile_cache import ProfileCache
from essence.storage.records import (
    PruneReport,
    StoreInfo,
)
from essence.storage.reviews import Reviews, damaged_row, spreadsheet_safe, storable

__all__ = ["Store", "damaged_row", "spreadsheet_safe", "storable"]


class Store(ProfileCache, Reviews):
    """A store of cached profiles, runs and verdicts; open with :meth:`Store.open`.

    Usable as a context manager (closes its connections on exit). Safe to use from several processes at
    once: SQLite serialises writers with its lock (waiting up to the timeout), PostgreSQL with its own.
    """

    def __init__(
        self, engine: Engine, location: connect.Location, schema_version: str, timeout: float
    ) -> None:
        self._engine = engine
        self._writer = engine.execution_options(essence_write=True)
        self.location = location
        self.schema_version = schema_version
        self.timeout = timeout
        self._files = FileBlobs(location.path.with_suffix(".blobs")) if location.path else None
        # z of the slices asked about, for follow-up questions (a folder: a database server keeps none).
        self.slice_files = SliceFiles(location.path.with_suffix(".slices")) if location.path else None

    # ------------------------------------------------------------------------------------------- opening

    @classmethod
    def open(
        cls, url_or_path: str | os.PathLike[str] | None = None, *, timeout: float | None = None
    ) -> Store:
        """Open (creating or upgrading as needed) the store at a path or SQLAlchemy URL.

        Args:
            url_or_path: a file, a folder (``essence.sqlite`` inside), a SQLAlchemy URL
                (``postgresql+psycopg://user@host/db``), or ``None`` for ``$ESSENCE_HOME/essence.sqlite``
                (default: the user's data folder).
            timeout: seconds to wait for a lock held by another process (default ``ESSENCE_STORE_TIMEOUT``,
                else 15).

        Returns:
            The open store, its schema at this version's head.

        Raises:
            StoreError: not a database, not an Essence store, a newer schema, a read-only location, locked
                past the timeout, or an unreachable server; each message names the store and the fix, and
                nothing is changed.
        """
        location = connect.resolve(url_or_path)
        wait = connect.default_timeout() if timeout is None else float(timeout)
        engine, revision = connect.open_engine(location, wait)
        return cls(engine, location, revision, wait)

    def close(self) -> None:
        """Release the store's connections (the store can no longer be used)."""
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.location.name!r}, schema {self.schema_version})"

    @property
    def url(self) -> str:
        """The store's URL, password hidden."""
        return self.location.url.render_as_string(hide_password=True)

    @property
    def path(self) -> Path | None:
        """The SQLite file, or ``None`` for a database server."""
        return self.location.path

    @contextmanager
    def _session(self, write: bool = False) -> Iterator[Session]:
        """One transaction: committed when the block ends normally, rolled back otherwise."""
        try:
            with (
                Session(self._writer if write else self._engine, expire_on_commit=False) as session,
                session.begin(),
            ):
                yield session
        except OperationalError as exc:
            raise connect.operational_error(self.location, exc, self.timeout) from exc
        except (ValueError, TypeError, KeyError) as exc:
            if isinstance(exc, EssenceError | UnicodeEncodeError):  # ours, or text on its way in: not a row
                raise
            raise damaged_row(self.location.name, exc) from exc

    # ------------------------------------------------------------------------------------------- upkeep

    def info(self, recent: int = 5) -> StoreInfo:
        """Counts, size and the most recent runs."""
        with self._session() as s:
            counts = {
                name: int(s.scalar(select(func.count()).select_from(table)) or 0)
                for name, table in (
                    ("profiles", ProfileRow),
                    ("matrices", MatrixRow),
                    ("verdicts", VerdictRow),
                    ("runs", RunRow),
                )
            }
        size = None
        if self.path is not None:
            size = sum(p.stat().st_size for p in _sqlite_files(self.path) if p.exists())
            size += self._files.size() if self._files is not None else 0
        slices = self.slice_files.entries() if self.slice_files is not None else []
        return StoreInfo(
            slices=len(slices),
            slice_bytes=self.slice_files.size() if self.slice_files is not None else 0,
            url=self.url,
            path=str(self.path) if self.path else None,
            schema_version=self.schema_version,
            size_bytes=size,
            recent_runs=self.runs(recent),
            **counts,
        )

    def prune(
        self,
        *,
        older_than_days: float | None = None,
        model_fp: str | None = None,
        slices: bool = False,
        dry_run: bool = False,
    ) -> PruneReport:
        """Remove cached profiles (and their matrices) older than a number of days and/or of one model.

        With neither filter no profile is removed; unreferenced matrix blobs are removed in every case.
        Verdicts and runs are never removed. Stored slices (z for follow-up questions) go by the same filters
        (age counted from their last use), all of them with ``slices``; their temporary leftovers always.

        Racing a write. A profile's matrix files are written before its rows (so a crash leaves at most an
        unreferenced file), and a file of the same content is reused, not rewritten. So "unreferenced" is only
        true at one moment: a writer may be about to reference a file that looks orphaned, even an old one it
        is reusing. A grace period alone cannot close this (an old reused file, or a computation slower than
        the period). The lock does: prune reads the references and deletes the orphan files while holding the
        database's write lock, and a writer checks that its files still exist after taking that lock, rewriting
        any that vanished (it holds the bytes) before it commits. Writers are serialised by the same lock, so
        either prune sees the writer's rows, or the writer sees prune's deletions. The grace period
        (:data:`~essence.storage.matrices.ORPHAN_GRACE_S`) stays for files still being written (temporary names
        renamed into place outside any transaction).

        Raises:
            SpecError: a negative age.
        """
        if older_than_days is not None and older_than_days < 0:
            raise SpecError(f"--older-than {older_than_days}: give a number of days ≥ 0")
        conditions = []
        if older_than_days is not None:
            conditions.append(ProfileRow.created_at < datetime.now(UTC) - timedelta(days=older_than_days))
        if model_fp is not None:
            conditions.append(ProfileRow.model_fp == model_fp)
        with self._session(write=not dry_run) as s:
            ids = list(s.scalars(select(ProfileRow.id).where(*conditions))) if conditions else []
            n_matrices = int(
                s.scalar(select(func.count()).select_from(MatrixRow).where(MatrixRow.profile_id.in_(ids)))
                or 0
            )
            if not dry_run and ids:
                # Matrices go by ON DELETE CASCADE too; deleting them explicitly keeps this independent of it.
                s.execute(delete(MatrixRow).where(MatrixRow.profile_id.in_(ids)))
                s.execute(delete(ProfileRow).where(ProfileRow.id.in_(ids)))
            if dry_run:
                referenced = set(s.scalars(select(MatrixRow.sha256).where(MatrixRow.profile_id.not_in(ids))))
            else:
                referenced = set(s.scalars(select(MatrixRow.sha256)))
            blob_count, blob_bytes = 0, 0
            rows = list(s.execute(select(BlobRow.sha256, func.length(BlobRow.data))))
            stale = [(d, n) for d, n in rows if d not in referenced]
            blob_count += len(stale)
            blob_bytes += sum(int(n or 0) for _, n in stale)
            if stale and not dry_run:
                s.execute(delete(BlobRow).where(BlobRow.sha256.in_([d for d, _ in stale])))
            if self._files is not None:
                orphans = self._files.orphans(referenced)
                blob_count += len(orphans)
                blob_bytes += sum(_size_of(p) for p in orphans)
                if not dry_run:
                    for p in orphans:
                        connect.remove_quietly(p)
        removed, slice_bytes = (
            self.slice_files.prune(
                older_than_days=older_than_days, model_fp=model_fp, everything=slices, dry_run=dry_run
            )
            if self.slice_files is not None
            else (0, 0)
        )
        return PruneReport(
            profiles=len(ids),
            matrices=n_matrices,
            blobs=blob_count,
            bytes_freed=blob_bytes,
            dry_run=dry_run,
            slices=removed,
            slice_bytes=slice_bytes,
        )


# ----------------------------------------------------------------------------------------------- helpers


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # removed meanwhile
        return 0


def _sqlite_files(path: Path) -> list[Path]:
    return [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]
