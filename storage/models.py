"""The store's tables (SQLAlchemy 2 typed ORM). The schema is owned by the Alembic migrations in
``migrations/versions``; a test checks that these models and the migrated schema agree.
"""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from essence.storage.records import VERDICTS

FP = String(64)  # fingerprints are hex digests (16 chars today; room for a full SHA-256)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite stores naive text; we store UTC there)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class RunRow(Base):
    """One computation: what, when, where, how long, asked by which command."""

    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    kind: Mapped[str] = mapped_column(String(32))
    description: Mapped[str] = mapped_column(Text, default="")
    model_fp: Mapped[str] = mapped_column(FP, default="")
    dataset_fp: Mapped[str] = mapped_column(FP, default="")
    layer: Mapped[str] = mapped_column(Text, default="")
    device: Mapped[str] = mapped_column(String(32), default="")
    seconds: Mapped[float | None] = mapped_column(Float, nullable=True)
    essence_version: Mapped[str] = mapped_column(String(32), default="")
    # Added in schema 0002.
    command: Mapped[str] = mapped_column(Text, default="", server_default="")
    host: Mapped[str] = mapped_column(String(255), default="", server_default="")
    # Added in schema 0003: the preprocessing recipe as applied, as JSON ("" when unknown).
    preprocessing: Mapped[str] = mapped_column(Text, default="", server_default="")


class ProfileRow(Base):
    """A set of class profiles, stored as the mergeable float64 running sums it is finalised from."""

    __tablename__ = "profiles"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key_digest: Mapped[str] = mapped_column(String(64), unique=True)
    model_fp: Mapped[str] = mapped_column(FP, index=True)
    dataset_fp: Mapped[str] = mapped_column(FP, index=True)
    preprocessing_fp: Mapped[str] = mapped_column(FP)
    layer: Mapped[str] = mapped_column(Text)
    granularity: Mapped[str] = mapped_column(String(16))
    quantity: Mapped[str] = mapped_column(String(64))
    distribution: Mapped[str] = mapped_column(String(64))
    engine_version: Mapped[int] = mapped_column(Integer)
    class_names: Mapped[str] = mapped_column(Text)  # JSON list
    unit_shape: Mapped[str] = mapped_column(Text)  # JSON list
    num_groups: Mapped[int] = mapped_column(Integer)
    num_units: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(16))  # of sum/sumsq (little-endian numpy str, "<f8")
    sum: Mapped[bytes] = mapped_column(LargeBinary)  # [G, U]
    sumsq: Mapped[bytes] = mapped_column(LargeBinary)  # [G, U]
    counts: Mapped[bytes] = mapped_column(LargeBinary)  # [G] little-endian int64
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"), nullable=True)


class VerdictRow(Base):
    """A review verdict; rows are only ever added (the latest per instance is the current one)."""

    __tablename__ = "verdicts"
    __table_args__ = (
        CheckConstraint(
            "verdict IN (" + ", ".join(f"'{v}'" for v in VERDICTS) + ")", name="ck_verdicts_verdict"
        ),
        Index("ix_verdicts_instance", "dataset_fp", "instance_id", "id"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    dataset_fp: Mapped[str] = mapped_column(FP)
    instance_id: Mapped[int] = mapped_column(Integer)
    verdict: Mapped[str] = mapped_column(String(32))
    note: Mapped[str] = mapped_column(Text, default="")
    reviewer: Mapped[str] = mapped_column(String(255), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class MatrixRow(Base):
    """A per-instance matrix of a profile (triage vectors, outputs, indices, labels), by content hash.

    The bytes live in a file beside the database (SQLite) or in :class:`BlobRow` (other databases).
    Added in schema 0002.
    """

    __tablename__ = "instance_matrices"
    __table_args__ = (UniqueConstraint("profile_id", "name", name="uq_instance_matrices_profile_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    profile_id: Mapped[int] = mapped_column(ForeignKey("profiles.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(32))
    sha256: Mapped[str] = mapped_column(String(64), index=True)
    dtype: Mapped[str] = mapped_column(String(16))
    shape: Mapped[str] = mapped_column(Text)  # JSON list
    nbytes: Mapped[int] = mapped_column(BigInteger)
    location: Mapped[str] = mapped_column(String(8))  # "file" | "table"


class BlobRow(Base):
    """Matrix bytes for stores without a folder of their own (PostgreSQL and other servers)."""

    __tablename__ = "blobs"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class UploadRow(Base):
    """A model or dataset uploaded in the app, offered again in every later session until removed.

    Added in schema 0004. ``details`` holds what the upload gave beside its spec, as JSON (weights file, class
    names, preprocessing recipe, default slice).
    """

    __tablename__ = "uploads"
    __table_args__ = (UniqueConstraint("kind", "label", name="uq_uploads_kind_label"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # "model" | "dataset"
    label: Mapped[str] = mapped_column(Text)
    spec: Mapped[str] = mapped_column(Text)
    details: Mapped[str] = mapped_column(Text, default="{}", server_default="{}")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
