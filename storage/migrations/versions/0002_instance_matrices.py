"""Per-instance matrices (by content hash, bytes in files or the blobs table); runs record command and host.

Revision ID: 0002
Revises: 0001
Create Date: 2025-11-24
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("command", sa.Text(), nullable=False, server_default=""))
        batch.add_column(sa.Column("host", sa.String(255), nullable=False, server_default=""))
    op.create_table(
        "instance_matrices",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "profile_id", sa.Integer(), sa.ForeignKey("profiles.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("dtype", sa.String(16), nullable=False),
        sa.Column("shape", sa.Text(), nullable=False),
        sa.Column("nbytes", sa.BigInteger(), nullable=False),
        sa.Column("location", sa.String(8), nullable=False),
        sa.UniqueConstraint("profile_id", "name", name="uq_instance_matrices_profile_name"),
    )
    op.create_index("ix_instance_matrices_profile_id", "instance_matrices", ["profile_id"])
    op.create_index("ix_instance_matrices_sha256", "instance_matrices", ["sha256"])
    op.create_table(
        "blobs",
        sa.Column("sha256", sa.String(64), primary_key=True),
        sa.Column("data", sa.LargeBinary(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("blobs")
    op.drop_table("instance_matrices")
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("host")
        batch.drop_column("command")
