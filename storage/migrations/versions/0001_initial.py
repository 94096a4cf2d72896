"""Initial schema: runs, class profiles (as running sums), triage verdicts.

Revision ID: 0001
Revises:
Create Date: 2025-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

VERDICTS = ("label error", "model error", "ambiguous", "fine", "custom")


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("model_fp", sa.String(64), nullable=False),
        sa.Column("dataset_fp", sa.String(64), nullable=False),
        sa.Column("layer", sa.Text(), nullable=False),
        sa.Column("device", sa.String(32), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=True),
        sa.Column("essence_version", sa.String(32), nullable=False),
    )
    op.create_index("ix_runs_created_at", "runs", ["created_at"])
    op.create_table(
        "profiles",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("key_digest", sa.String(64), nullable=False, unique=True),
        sa.Column("model_fp", sa.String(64), nullable=False),
        sa.Column("dataset_fp", sa.String(64), nullable=False),
        sa.Column("preprocessing_fp", sa.String(64), nullable=False),
        sa.Column("layer", sa.Text(), nullable=False),
        sa.Column("granularity", sa.String(16), nullable=False),
        sa.Column("quantity", sa.String(64), nullable=False),
        sa.Column("distribution", sa.String(64), nullable=False),
        sa.Column("engine_version", sa.Integer(), nullable=False),
        sa.Column("class_names", sa.Text(), nullable=False),
        sa.Column("unit_shape", sa.Text(), nullable=False),
        sa.Column("num_groups", sa.Integer(), nullable=False),
        sa.Column("num_units", sa.Integer(), nullable=False),
        sa.Column("dtype", sa.String(16), nullable=False),
        sa.Column("sum", sa.LargeBinary(), nullable=False),
        sa.Column("sumsq", sa.LargeBinary(), nullable=False),
        sa.Column("counts", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.Integer(), sa.ForeignKey("runs.id", ondelete="SET NULL"), nullable=True),
    )
    op.create_index("ix_profiles_model_fp", "profiles", ["model_fp"])
    op.create_index("ix_profiles_dataset_fp", "profiles", ["dataset_fp"])
    op.create_index("ix_profiles_created_at", "profiles", ["created_at"])
    op.create_table(
        "verdicts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("dataset_fp", sa.String(64), nullable=False),
        sa.Column("instance_id", sa.Integer(), nullable=False),
        sa.Column("verdict", sa.String(32), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("reviewer", sa.String(255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint(
            "verdict IN (" + ", ".join(f"'{v}'" for v in VERDICTS) + ")", name="ck_verdicts_verdict"
        ),
    )
    op.create_index("ix_verdicts_instance", "verdicts", ["dataset_fp", "instance_id", "id"])


def downgrade() -> None:
    op.drop_table("verdicts")
    op.drop_table("profiles")
    op.drop_table("runs")
