"""What goes into and comes out of the store: the cache key and frozen records.

Records are plain frozen dataclasses (no ORM objects leave the store), so callers never hold a live session.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, get_args

if TYPE_CHECKING:  # the engine (and PyTorch) is imported where a key is made, not by a store that only reads
    from essence.core.inputs.data import ImageData
    from essence.core.inputs.models import LoadedModel

# Version of the numbers' definition. Bump it whenever the engine's meaning of a stored profile changes
# (a different gradient, reduction or normalisation): every profile stored under an older version then
# stops matching its key and is recomputed, never served stale.
ENGINE_VERSION = 1

VerdictName = Literal["label error", "model error", "ambiguous", "fine", "custom"]
VERDICTS: tuple[str, ...] = get_args(VerdictName)


@dataclass(frozen=True)
class ProfileKey:
    """Everything a set of class profiles depends on; equal keys mean equal numbers.

    Attributes:
        model_fp: hash of the architecture and every weight (``LoadedModel.fingerprint``).
        dataset_fp: hash of the images and labels (``ImageData.fingerprint``).
        preprocessing_fp: hash of the preprocessing recipe (``Preprocessing.fingerprint()``).
        layer: the slice's module path.
        granularity: ``"channel"`` or ``"neuron"``.
        quantity: the quantity's name as the engine reports it (``"logit[label]"``, ``"prob[label]"``).
        distribution: the distribution's name (``"class"`` for class profiles).
        engine_version: :data:`ENGINE_VERSION` when the numbers were computed.
    """

    model_fp: str
    dataset_fp: str
    preprocessing_fp: str
    layer: str
    granularity: str
    quantity: str
    distribution: str = "class"
    engine_version: int = ENGINE_VERSION

    def digest(self) -> str:
        """SHA-256 (hex) of the key's canonical JSON: the unique index of a stored profile."""
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()

    @classmethod
    def for_profiles(
        cls, model: LoadedModel, data: ImageData, layer: str, granularity: str, kind: str
    ) -> ProfileKey:
        """The key of ``class_profiles(model, data, layer, granularity=..., kind=...)``.

        The quantity and distribution names come from the engine itself, so the key names what is computed.
        """
        from essence.core.engine.distributions import ClassConditional
        from essence.core.engine.quantities import OwnLabel, quantity_name

        return cls(
            model_fp=model.fingerprint,
            dataset_fp=data.fingerprint,
            preprocessing_fp=data.preprocessing.fingerprint(),
            layer=layer,
            granularity=granularity,
            quantity=quantity_name(OwnLabel(kind)),  # type: ignore[arg-type]
            distribution=ClassConditional().name,
            engine_version=ENGINE_VERSION,  # read now, so a bumped version takes effect everywhere at once
        )


@dataclass(frozen=True)
class RunInfo:
    """How a result was computed, given by the caller when storing it.

    Attributes:
        command: the command line or action that asked for it (e.g. ``essence precompute ...``).
        device: the device it ran on (``cpu``, ``cuda``).
        seconds: wall-clock seconds of the computation (``None``: unknown).
        description: one line for people (what was computed).
        preprocessing: the preprocessing recipe as applied (``Preprocessing.to_dict()``), when known; the
            store fills it from the data where it has the data (``cached_profiles``).
    """

    command: str = ""
    device: str = ""
    seconds: float | None = None
    description: str = ""
    preprocessing: dict[str, Any] | None = None


@dataclass(frozen=True)
class Run:
    """One stored computation (a row of the runs table); ``preprocessing`` is the recipe as applied, or
    ``None`` for runs recorded without one (and before schema 0003)."""

    id: int
    created_at: datetime
    kind: str
    description: str
    model_fp: str
    dataset_fp: str
    layer: str
    device: str
    seconds: float | None
    command: str
    host: str
    essence_version: str
    preprocessing: dict[str, Any] | None = None


@dataclass(frozen=True)
class Verdict:
    """One review verdict on one instance; a change of mind is a new verdict (history is kept)."""

    id: int
    dataset_fp: str
    instance_id: int
    verdict: str
    note: str
    reviewer: str
    created_at: datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "dataset_fingerprint": self.dataset_fp,
            "instance_id": self.instance_id,
            "verdict": self.verdict,
            "note": self.note,
            "reviewer": self.reviewer,
            "created_at": self.created_at.isoformat(),
        }


@dataclass(frozen=True)
class StoreInfo:
    """What ``essence store info`` shows.

    Attributes:
        url: the store's SQLAlchemy URL (password hidden).
        path: the database file (SQLite) or ``None``.
        schema_version: the Alembic revision the store is at.
        profiles, matrices, verdicts, runs: row counts.
        size_bytes: bytes on disk (database, WAL and matrix files) for SQLite; ``None`` otherwise.
        recent_runs: the newest runs, newest first.
        slices: stored slices (z kept for follow-up questions). slice_bytes: bytes they take on disk.
    """

    url: str
    path: str | None
    schema_version: str
    profiles: int
    matrices: int
    verdicts: int
    runs: int
    size_bytes: int | None
    recent_runs: list[Run] = field(default_factory=list)
    slices: int = 0
    slice_bytes: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "path": self.path,
            "schema_version": self.schema_version,
            "profiles": self.profiles,
            "matrices": self.matrices,
            "verdicts": self.verdicts,
            "runs": self.runs,
            "size_bytes": self.size_bytes,
            "slices": self.slices,
            "slice_bytes": self.slice_bytes,
            "recent_runs": [{**asdict(r), "created_at": r.created_at.isoformat()} for r in self.recent_runs],
        }


@dataclass(frozen=True)
class PruneReport:
    """What ``prune`` removed (or would remove, with ``dry_run``). Verdicts are never removed.

    Attributes:
        profiles: profiles removed.
        matrices: per-instance matrices removed with them.
        blobs: matrix blobs (files or rows) no longer referenced by anything, removed.
        bytes_freed: bytes of those blobs.
        dry_run: nothing was removed; the counts say what would be.
        slices: stored slices removed. slice_bytes: bytes they took.
    """

    profiles: int
    matrices: int
    blobs: int
    bytes_freed: int
    dry_run: bool
    slices: int = 0
    slice_bytes: int = 0


UPLOAD_KINDS = ("model", "dataset")


@dataclass(frozen=True)
class Upload:
    """A model or dataset uploaded in the app and registered in the store (offered in every later session).

    Attributes:
        id: the row's id. kind: ``"model"`` or ``"dataset"``. label: what the sidebar shows (unique per kind).
        spec: the model or data spec. details: what the upload gave beside the spec (weights file, class names,
            preprocessing recipe, default slice), as plain JSON values. created_at: when it was registered.
    """

    id: int
    kind: str
    label: str
    spec: str
    details: dict[str, Any]
    created_at: datetime
