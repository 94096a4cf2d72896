"""The store's profile cache: class profiles (with per-instance matrices) under their full key, and the
slices (z = h(x)) stored beside them for follow-up questions.

A profile, its run and its matrices are written in one transaction: together or not at all. The stored z reaches
an analysis only as an argument: :meth:`ProfileCache.slice_source` hands out the source, and the caller passes it
on (``activations=``).
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import TYPE_CHECKING, cast

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from essence.core.base.errors import EssenceError, StoreError
from essence.storage import connect
from essence.storage.activations import SliceFiles, StoreSlices, slice_limit_bytes
from essence.storage.matrices import FileBlobs, from_bytes, sha256, to_bytes
from essence.storage.models import BlobRow, MatrixRow, ProfileRow
from essence.storage.records import (
    ProfileKey,
    RunInfo,
)
from essence.storage.reviews import damaged_row, new_run_row

# PyTorch and the engine are imported by the methods that read or write profiles: a store opened for verdicts,
# runs or its own upkeep never loads them (``essence store info`` answers without PyTorch's import).
if TYPE_CHECKING:
    import torch

    from essence.core.analyses.profiles import ClassProfiles
    from essence.core.engine.influence import Influence
    from essence.core.engine.slices import Granularity
    from essence.core.inputs.data import ImageData
    from essence.core.inputs.models import LoadedModel

# Per-instance matrices kept with a profile, by name: what triage needs from the same pass.
MATRIX_NAMES = ("vectors", "indices", "labels", "outputs")


class ProfileCache:
    """The profile-cache half of :class:`~essence.storage.store.Store` (a mixin: it uses the store's
    sessions and files)."""

    # Provided by Store (storage/store.py).
    location: connect.Location
    _files: FileBlobs | None
    slice_files: SliceFiles | None

    if TYPE_CHECKING:

        def _session(self, write: bool = False) -> AbstractContextManager[Session]: ...

    # ------------------------------------------------------------------------------------------- slices

    def slice_source(self, model: LoadedModel, data: ImageData) -> StoreSlices | None:
        """The source of stored z for ``model`` on ``data`` (``None``: a server store, or slices turned off).

        Pass it as ``activations=`` to the analyses of ``model.module`` on ``data``: the first full pass at a
        slice stores its z, and every later question at that slice runs the layers above it only
        (:mod:`essence.core.engine.activation_source`). It works on after the store is closed (it reads and
        writes the slice folder only).

        Raises:
            StoreError: ``ESSENCE_SLICE_CACHE_MB`` is not a size.
        """
        limit = slice_limit_bytes()
        if self.slice_files is None or limit <= 0:
            return None
        return StoreSlices(self.slice_files, model, data, limit)

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
        from essence.core.analyses.profiles import ClassProfiles
        from essence.core.engine.sums import InfluenceSums

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
            granularity=_granularity(row.granularity),
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
        import torch

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
                    run = new_run_row("profiles", key.model_fp, key.dataset_fp, key.layer, info)
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
        activations: StoreSlices | None = None,
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
            activations: the source ``compute`` reads and records z through (:meth:`slice_source` of the same
                model and data): the z it records is stored only together with the profiles, both or (on any
                error) neither.

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
        with activations.held() if activations is not None else nullcontext():
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


# ----------------------------------------------------------------------------------------------- helpers


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


def _granularity(text: str) -> Granularity:
    """A stored granularity, checked (a row with another one is damaged: ``ValueError``)."""
    from essence.core.engine.slices import GRANULARITIES

    if text not in GRANULARITIES:
        raise ValueError(f"granularity {text!r} is not one the engine knows")
    return cast("Granularity", text)  # one of GRANULARITIES, checked above


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
    import torch

    from essence.core.engine.influence import Influence

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
