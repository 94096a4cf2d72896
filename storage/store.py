"""The store: cached class profiles (with per-instance matrices), runs and review verdicts.

Every write is one transaction: a profile, its run and its matrices appear together or not at all, and a
committed verdict is never lost or overwritten (a change of mind is a new row).
"""

from __future__ import annotations

import csv
import dataclasses
import getpass
import io
import json
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import torch
from sqlalchemy import Engine, delete, func, select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session

from essence import __version__
from essence.core.data import ImageData
from essence.core.engine import Influence
from essence.core.errors import EssenceError, SpecError, StoreError
from essence.core.models import LoadedModel
from essence.core.profiles import ClassProfiles
from essence.core.slice_source import use_slices
from essence.core.sums import InfluenceSums
from essence.storage import connect
from essence.storage.matrices import FileBlobs, from_bytes, sha256, to_bytes
from essence.storage.models import BlobRow, MatrixRow, ProfileRow, RunRow, UploadRow, VerdictRow
from essence.storage.records import (
    UPLOAD_KINDS,
    VERDICTS,
    ProfileKey,
    PruneReport,
    Run,
    RunInfo,
    StoreInfo,
    Upload,
    Verdict,
)
from essence.storage.slices import SliceFiles, StoreSlices, slice_limit_bytes

# Per-instance matrices kept with a profile, by name: what triage needs from the same pass.
MATRIX_NAMES = ("vectors", "indices", "labels", "outputs")


class Store:
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
    def open(cls, url_or_path: str | os.PathLike | None = None, *, timeout: float | None = None) -> Store:
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

    # ------------------------------------------------------------------------------------------- slices

    def slice_source(self, model: LoadedModel, data: ImageData) -> StoreSlices | None:
        """The source of stored z for ``model`` on ``data`` (``None``: a server store, or slices turned off).

        Raises:
            StoreError: ``ESSENCE_SLICE_CACHE_MB`` is not a size.
        """
        limit = slice_limit_bytes()
        if self.slice_files is None or limit <= 0:
            return None
        return StoreSlices(self.slice_files, model, data, limit)

    @contextmanager
    def serving_slices(
        self, model: LoadedModel, data: ImageData, *, defer: bool = False
    ) -> Iterator[StoreSlices | None]:
        """Within the block, every analysis of ``model.module`` on ``data`` reads z from the store, or stores it.

        The first full pass at a slice stores its z; every later question at that slice runs the layers above
        it only (:mod:`essence.core.slice_source`).

        Args:
            model, data: whose z is served.
            defer: store what the block records only if the block succeeds as a whole (a command that fails
                after its pass — an empty class, a locked store — leaves the store as it found it).
        """
        source = self.slice_source(model, data)
        if source is None:
            yield None
            return
        if defer:
            source.deferred = []
        try:
            with use_slices(source):
                yield source
        except BaseException:
            source.discard_deferred()
            raise
        source.publish_deferred()

    # ------------------------------------------------------------------------------------------- profiles

    def get_profiles(self, key: ProfileKey, *, with_instances: bool = False) -> ClassProfiles | None:
        """The stored profiles of ``key`` (``cached=True``), or ``None`` if there are none.

        Args:
            key: the full cache key.
            with_instances: also load the per-instance matrices; ``None`` if they were not stored, or if a
                matrix fails its hash check (a warning says which), so that the caller recomputes.
        """
        with self._session() as s:
            row = s.scalars(select(ProfileRow).where(ProfileRow.key_digest == key.digest())).one_or_none()
            if row is None:
                return None
            matrices = list(s.scalars(select(MatrixRow).where(MatrixRow.profile_id == row.id)))
            blobs = self._read_blobs(s, matrices) if with_instances and matrices else {}
        if with_instances and len(matrices) < len(MATRIX_NAMES):
            return None
        if with_instances and blobs is None:
            return None
        try:
            return self._decode_profiles(row, matrices, blobs, with_instances)
        except (ValueError, TypeError, KeyError) as exc:
            if isinstance(exc, EssenceError | UnicodeEncodeError):  # ours, or text on its way in: not a row
                raise
            raise damaged_row(self.location.name, exc) from exc

    @staticmethod
    def _decode_profiles(
        row: ProfileRow, matrices: list[MatrixRow], blobs: dict[str, bytes] | None, with_instances: bool
    ) -> ClassProfiles:
        shape = json.loads(row.unit_shape)
        g, u = row.num_groups, row.num_units
        sums = InfluenceSums(
            sum=from_bytes(row.sum, row.dtype, [g, u]),
            sumsq=from_bytes(row.sumsq, row.dtype, [g, u]),
            count=from_bytes(row.counts, "<i8", [g]),
        )
        profiles = ClassProfiles.from_sums(
            sums,
            class_names=json.loads(row.class_names),
            layer=row.layer,
            granularity=row.granularity,  # type: ignore[arg-type]
            quantity=row.quantity,
            unit_shape=shape,
            cached=True,
        )
        if with_instances:
            assert blobs is not None
            tensors = {m.name: from_bytes(blobs[m.name], m.dtype, json.loads(m.shape)) for m in matrices}
            profiles = dataclasses.replace(
                profiles, instances=_influence_of(profiles, row.distribution, tensors)
            )
        return profiles

    def profile_keys(self) -> list[ProfileKey]:
        """The keys of every stored profile, oldest first."""
        with self._session() as s:
            rows = s.execute(
                select(
                    ProfileRow.model_fp,
                    ProfileRow.dataset_fp,
                    ProfileRow.preprocessing_fp,
                    ProfileRow.layer,
                    ProfileRow.granularity,
                    ProfileRow.quantity,
                    ProfileRow.distribution,
                    ProfileRow.engine_version,
                ).order_by(ProfileRow.id)
            ).all()
        return [ProfileKey(*row) for row in rows]

    def _read_blobs(self, s: Session, matrices: list[MatrixRow]) -> dict[str, bytes] | None:
        out: dict[str, bytes] = {}
        for m in matrices:
            try:
                if m.location == "file" and self._files is not None:
                    data = self._files.get(m.sha256)
                else:
                    blob = s.get(BlobRow, m.sha256)
                    if blob is None:
                        raise StoreError(f"matrix {m.sha256[:12]} is missing from the blobs table")
                    data = bytes(blob.data)
                    if sha256(data) != m.sha256:
                        raise StoreError(f"matrix {m.sha256[:12]} does not match its SHA-256")
            except StoreError as exc:
                warnings.warn(f"{exc}; the profile will be recomputed", stacklevel=3)
                return None
            out[m.name] = data
        return out

    def put_profiles(self, key: ProfileKey, profiles: ClassProfiles, run_info: RunInfo | None = None) -> int:
        """Store ``profiles`` under ``key`` (replacing what was there) with a run record; returns the row id.

        The running sums are stored (float64, mergeable); per-instance matrices too when ``profiles.instances``
        holds them. Matrix bytes are written first (content-addressed, so a crash leaves at most an
        unreferenced file); the rows follow in one transaction.

        Raises:
            StoreError: the profiles do not match the key, or the store cannot be written.
        """
        _check_matches(key, profiles)
        info = run_info or RunInfo()
        matrices = _instance_matrices(profiles)
        encoded = {name: to_bytes(t) for name, t in matrices.items()}
        digests: dict[str, str] = {}
        for name, (data, _, _) in encoded.items():
            digests[name] = self._files.put(data) if self._files is not None else sha256(data)
        sum_b, dtype, _ = to_bytes(profiles.sums.sum.to(torch.float64))
        sumsq_b, _, _ = to_bytes(profiles.sums.sumsq.to(torch.float64))
        count_b, _, _ = to_bytes(profiles.sums.count.to(torch.int64))
        for attempt in range(2):
            try:
                with self._session(write=True) as s:
                    s.execute(delete(ProfileRow).where(ProfileRow.key_digest == key.digest()))
                    self._restore_files(encoded, digests)  # under the write lock: see ``prune``
                    run = self._new_run("profiles", key.model_fp, key.dataset_fp, key.layer, info)
                    s.add(run)
                    s.flush()
                    row = ProfileRow(
                        key_digest=key.digest(),
                        model_fp=key.model_fp,
                        dataset_fp=key.dataset_fp,
                        preprocessing_fp=key.preprocessing_fp,
                        layer=key.layer,
                        granularity=key.granularity,
                        quantity=key.quantity,
                        distribution=key.distribution,
                        engine_version=key.engine_version,
                        class_names=json.dumps(list(profiles.class_names)),
                        unit_shape=json.dumps(list(profiles.unit_shape)),
                        num_groups=int(profiles.sums.sum.shape[0]),
                        num_units=int(profiles.sums.sum.shape[1]),
                        dtype=dtype,
                        sum=sum_b,
                        sumsq=sumsq_b,
                        counts=count_b,
                        run_id=run.id,
                    )
                    s.add(row)
                    s.flush()
                    self._add_matrices(s, row.id, encoded, digests)
                    return row.id
            except IntegrityError:
                # Another process stored the same key between our delete and insert (PostgreSQL's read
                # committed); once more replaces it, as the caller asked.
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _restore_files(
        self, encoded: dict[str, tuple[bytes, str, list[int]]], digests: dict[str, str]
    ) -> None:
        """Rewrite any matrix file a concurrent ``prune`` removed between writing it and taking the write lock."""
        if self._files is None:
            return
        for name, (data, _, _) in encoded.items():
            if not self._files.path(digests[name]).is_file():
                self._files.put(data)

    def _add_matrices(
        self,
        s: Session,
        profile_id: int,
        encoded: dict[str, tuple[bytes, str, list[int]]],
        digests: dict[str, str],
    ) -> None:
        for name, (data, dtype, shape) in encoded.items():
            digest = digests[name]
            location = "file" if self._files is not None else "table"
            if location == "table" and s.get(BlobRow, digest) is None:
                s.add(BlobRow(sha256=digest, data=data))
            s.add(
                MatrixRow(
                    profile_id=profile_id,
                    name=name,
                    sha256=digest,
                    dtype=dtype,
                    shape=json.dumps(shape),
                    nbytes=len(data),
                    location=location,
                )
            )
        s.flush()

    def cached_profiles(
        self,
        model: LoadedModel,
        data: ImageData,
        layer: str,
        granularity: str,
        kind: str,
        compute: Callable[[], ClassProfiles],
        *,
        keep_instances: bool = False,
        refresh: bool = False,
        run_info: RunInfo | None = None,
    ) -> ClassProfiles:
        """The class profiles of ``(model, data, layer, granularity, kind)``: from the store, or computed.

        On a hit the model is not run at all and the result has ``cached=True``. On a miss ``compute()`` is
        called, timed, stored with a run record, and returned (``cached=False``). Class names are always the
        caller's (model's, else data's): they label the numbers, they do not change them.

        Args:
            model, data: what the profiles are of; their fingerprints are part of the key.
            layer, granularity, kind: the slice, unit granularity and class score (``logit``/``prob``).
            compute: computes the profiles on a miss (keeping per-instance vectors if ``keep_instances``).
            keep_instances: the result must carry the per-instance matrices (a stored profile without them
                is a miss).
            refresh: recompute and replace even if stored.
            run_info: command and device for the run record (the time is measured here).

        Raises:
            StoreError: the store cannot be read or written.
        """
        key = ProfileKey.for_profiles(model, data, layer, granularity, kind)
        names = list(model.class_names or data.class_names or [])
        if not refresh:
            hit = self.get_profiles(key, with_instances=keep_instances)
            if hit is not None:
                if names and len(names) == len(hit.class_names):
                    hit = dataclasses.replace(hit, class_names=names)
                return hit
        start = time.perf_counter()
        # The slice's z is stored only together with the profiles: both, or (on any error) neither.
        with self.serving_slices(model, data, defer=True):
            profiles = compute()
            seconds = time.perf_counter() - start
            info = run_info or RunInfo()
            info = dataclasses.replace(
                info,
                preprocessing=info.preprocessing or data.preprocessing.to_dict(),
                seconds=seconds if info.seconds is None else info.seconds,
                description=info.description or f"class profiles of {model.name} on {data.spec} at {layer}",
            )
            self.put_profiles(key, profiles, info)
        return profiles

    # ------------------------------------------------------------------------------------------- runs

    @staticmethod
    def _new_run(kind: str, model_fp: str, dataset_fp: str, layer: str, info: RunInfo) -> RunRow:
        return RunRow(
            kind=kind,
            description=storable(info.description),  # may name a path that is not UTF-8
            model_fp=model_fp,
            dataset_fp=dataset_fp,
            layer=storable(layer),
            device=info.device,
            seconds=info.seconds,
            essence_version=__version__,
            command=storable(info.command),
            host=socket.gethostname(),
            preprocessing=json.dumps(info.preprocessing, sort_keys=True) if info.preprocessing else "",
        )

    def record_run(
        self, kind: str, info: RunInfo, *, model_fp: str = "", dataset_fp: str = "", layer: str = ""
    ) -> Run:
        """Record a computation that stores nothing else (e.g. an analysis), for the runs list."""
        with self._session(write=True) as s:
            row = self._new_run(kind, model_fp, dataset_fp, layer, info)
            s.add(row)
            s.flush()
            return _run_of(row)

    def runs(self, limit: int | None = 20) -> list[Run]:
        """Recorded runs, newest first."""
        with self._session() as s:
            q = select(RunRow).order_by(RunRow.id.desc())
            if limit is not None:
                q = q.limit(limit)
            return [_run_of(r) for r in s.scalars(q)]

    # ------------------------------------------------------------------------------------------- verdicts

    def record_verdict(
        self, dataset_fp: str, instance_id: int, verdict: str, note: str = "", reviewer: str | None = None
    ) -> Verdict:
        """Add a review verdict (earlier ones are kept: the newest is the current one).

        Args:
            dataset_fp: the dataset's fingerprint.
            instance_id: the instance's position in the dataset.
            verdict: one of ``"label error"``, ``"model error"``, ``"ambiguous"``, ``"fine"``, ``"custom"``.
            note: free text; required for ``"custom"``.
            reviewer: who decided (default: the login name).

        Raises:
            SpecError: an unknown verdict, a custom verdict without a note, or a negative instance id.
            StoreError: the store cannot be written.
        """
        if verdict not in VERDICTS:
            raise SpecError(f"verdict {verdict!r} is not known: use one of {', '.join(VERDICTS)}")
        note = (note or "").strip()
        if verdict == "custom" and not note:
            raise SpecError("a custom verdict needs a note saying what it is")
        if isinstance(instance_id, bool) or int(instance_id) != instance_id or instance_id < 0:
            raise SpecError(
                f"instance id {instance_id!r} must be a non-negative integer (its dataset position)"
            )
        if reviewer is None:
            try:
                reviewer = getpass.getuser()
            except (KeyError, OSError):
                reviewer = ""
        with self._session(write=True) as s:
            row = VerdictRow(
                dataset_fp=dataset_fp,
                instance_id=int(instance_id),
                verdict=verdict,
                note=note,
                reviewer=reviewer,
            )
            s.add(row)
            s.flush()
            return _verdict_of(row)

    def latest_verdicts(self, dataset_fp: str) -> dict[int, Verdict]:
        """The current (newest) verdict of each reviewed instance of a dataset, by instance id."""
        newest = (
            select(func.max(VerdictRow.id))
            .where(VerdictRow.dataset_fp == dataset_fp)
            .group_by(VerdictRow.instance_id)
        )
        with self._session() as s:
            rows = s.scalars(select(VerdictRow).where(VerdictRow.id.in_(newest)))
            return {r.instance_id: _verdict_of(r) for r in rows}

    def verdict_history(self, dataset_fp: str, instance_id: int) -> list[Verdict]:
        """Every verdict on one instance, oldest first."""
        with self._session() as s:
            rows = s.scalars(
                select(VerdictRow)
                .where(VerdictRow.dataset_fp == dataset_fp, VerdictRow.instance_id == int(instance_id))
                .order_by(VerdictRow.id)
            )
            return [_verdict_of(r) for r in rows]

    def all_verdicts(self, dataset_fp: str | None = None) -> list[Verdict]:
        """Every verdict (of one dataset, or all), oldest first."""
        with self._session() as s:
            q = select(VerdictRow).order_by(VerdictRow.id)
            if dataset_fp is not None:
                q = q.where(VerdictRow.dataset_fp == dataset_fp)
            return [_verdict_of(r) for r in s.scalars(q)]

    def export_verdicts(self, fmt: Literal["csv", "json"] = "csv", dataset_fp: str | None = None) -> str:
        """The full verdict history as CSV or JSON text; a ``latest`` column marks each instance's current one.

        CSV cells are made safe for spreadsheets (:func:`spreadsheet_safe`); JSON keeps the text as typed.

        Raises:
            SpecError: an unknown format.
        """
        if fmt not in ("csv", "json"):
            raise SpecError(f"export format {fmt!r} is not known: use csv or json")
        verdicts = self.all_verdicts(dataset_fp)
        latest: dict[tuple[str, int], int] = {}
        for v in verdicts:
            latest[(v.dataset_fp, v.instance_id)] = v.id
        records = [{**v.to_json(), "latest": latest[(v.dataset_fp, v.instance_id)] == v.id} for v in verdicts]
        if fmt == "json":
            return json.dumps({"verdicts": records}, indent=2) + "\n"
        out = io.StringIO()
        fields = [
            "id",
            "dataset_fingerprint",
            "instance_id",
            "verdict",
            "note",
            "reviewer",
            "created_at",
            "latest",
        ]
        writer = csv.DictWriter(out, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: spreadsheet_safe(v) for k, v in r.items()} for r in records)
        return out.getvalue()

    # ------------------------------------------------------------------------------------------- uploads

    def register_upload(self, kind: str, label: str, spec: str, details: dict | None = None) -> Upload:
        """Register a model or dataset uploaded in the app (the same kind and label again replaces it).

        Args:
            kind: ``"model"`` or ``"dataset"``.
            label: what the app shows for it (unique per kind).
            spec: its model or data spec.
            details: plain JSON values given beside the spec (weights file, class names, recipe, slice).

        Raises:
            SpecError: an unknown kind or an empty label.
            StoreError: the store cannot be written.
        """
        if kind not in UPLOAD_KINDS:
            raise SpecError(f"upload kind {kind!r} is not known: use one of {', '.join(UPLOAD_KINDS)}")
        if not label.strip():
            raise SpecError("an upload needs a label to be shown under")
        text = json.dumps(details or {}, sort_keys=True)
        with self._session(write=True) as s:
            row = s.scalars(select(UploadRow).where(UploadRow.kind == kind, UploadRow.label == label)).first()
            if row is None:
                row = UploadRow(kind=kind, label=label, spec=spec, details=text)
                s.add(row)
            else:
                row.spec, row.details = spec, text
            s.flush()
            return _upload_of(row)

    def uploads(self, kind: str | None = None) -> list[Upload]:
        """The registered uploads (of one kind, or all), oldest first."""
        with self._session() as s:
            q = select(UploadRow).order_by(UploadRow.id)
            if kind is not None:
                q = q.where(UploadRow.kind == kind)
            return [_upload_of(r) for r in s.scalars(q)]

    def remove_upload(self, kind: str, label: str) -> bool:
        """Forget an upload (its files stay on disk, named by their hash). Returns whether it was registered."""
        with self._session(write=True) as s:
            row = s.scalars(select(UploadRow).where(UploadRow.kind == kind, UploadRow.label == label)).first()
            if row is None:
                return False
            s.delete(row)
            return True

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

# A spreadsheet reads a cell starting with one of these as a formula (or, for tab and CR, strips them and
# reads what follows): OWASP's list for CSV injection.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def storable(text: str | None) -> str | None:
    """Text a SQLite row can hold: a lone surrogate (a file name that was not UTF-8, as Python decodes it) is
    kept as its escape (``\\udcff``) instead of failing the whole transaction."""
    if text is None:
        return None
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def damaged_row(store: str, exc: BaseException) -> StoreError:
    """The error for a row that no longer decodes (edited by hand, or by another program): a JSON column that is
    not JSON, a date that is not a date, a dtype that is none. Essence never writes such rows."""
    text = " ".join(str(exc).split())[:160]
    return StoreError(
        f"the store {store} holds a damaged row ({type(exc).__name__}: {text}); it was not written by Essence: "
        "restore the store from a backup, or move it aside and let Essence start a new one (or use --store PATH)"
    )


def spreadsheet_safe(value: object) -> object:
    """A CSV cell that a spreadsheet shows as text: a string starting like a formula gets a leading ``'``.

    OWASP's advice against CSV injection (a note ``=HYPERLINK(...)`` or ``=cmd|...`` run by whoever opens the
    export). Numbers and booleans are left alone; the JSON export is not changed.
    """
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _size_of(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # removed meanwhile
        return 0


def _sqlite_files(path: Path) -> list[Path]:
    return [path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]


def _check_matches(key: ProfileKey, p: ClassProfiles) -> None:
    """A profile stored under a key must be what the key names (a guard against mixing up results)."""
    mismatched = [
        f"{what} {got!r} ≠ key {want!r}"
        for what, got, want in (
            ("layer", p.layer, key.layer),
            ("granularity", p.granularity, key.granularity),
            ("quantity", p.quantity, key.quantity),
        )
        if got != want
    ]
    if mismatched:
        raise StoreError("refusing to store profiles under a key they do not match: " + "; ".join(mismatched))


def _instance_matrices(p: ClassProfiles) -> dict[str, torch.Tensor]:
    inst = p.instances
    if inst is None or inst.instance_vectors is None:
        return {}
    assert inst.instance_indices is not None and inst.instance_labels is not None and inst.outputs is not None
    return {
        "vectors": inst.instance_vectors.float(),
        "indices": inst.instance_indices.long(),
        "labels": inst.instance_labels.long(),
        "outputs": inst.outputs.float(),
    }


def _influence_of(p: ClassProfiles, distribution: str, t: dict[str, torch.Tensor]) -> Influence:
    return Influence(
        mean=p.mean,
        stderr=p.stderr,
        counts=p.counts,
        groups=torch.arange(p.mean.shape[0]),
        unit_shape=p.unit_shape,
        layer=p.layer,
        granularity=p.granularity,
        quantity=p.quantity,
        distribution=distribution,
        sums=p.sums,
        instance_vectors=t["vectors"],
        instance_indices=t["indices"],
        instance_labels=t["labels"],
        outputs=t["outputs"],
    )


def _run_of(r: RunRow) -> Run:
    return Run(
        id=r.id,
        created_at=r.created_at,
        kind=r.kind,
        description=r.description,
        model_fp=r.model_fp,
        dataset_fp=r.dataset_fp,
        layer=r.layer,
        device=r.device,
        seconds=r.seconds,
        command=r.command,
        host=r.host,
        essence_version=r.essence_version,
        preprocessing=_recipe_of(r.preprocessing),
    )


def _recipe_of(text: str | None) -> dict | None:
    """The recorded recipe, or ``None`` (not recorded, or not readable: a run record is never an error)."""
    if not text:
        return None
    try:
        recipe = json.loads(text)
    except ValueError:
        return None
    return recipe if isinstance(recipe, dict) else None


def _upload_of(r: UploadRow) -> Upload:
    try:
        details = json.loads(r.details or "{}")
    except ValueError:
        details = {}
    return Upload(
        id=r.id,
        kind=r.kind,
        label=r.label,
        spec=r.spec,
        details=details if isinstance(details, dict) else {},
        created_at=r.created_at,
    )


def _verdict_of(r: VerdictRow) -> Verdict:
    return Verdict(
        id=r.id,
        dataset_fp=r.dataset_fp,
        instance_id=r.instance_id,
        verdict=r.verdict,
        note=r.note,
        reviewer=r.reviewer,
        created_at=r.created_at,
    )
