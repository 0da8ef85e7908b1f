"""LoRA training runs and user LoRAs.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23

Self-contained like every revision: plain SQLAlchemy types, no imports from the application.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "training_runs",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("dataset_key", sa.String(length=1024), nullable=False),
        sa.Column("pairs", sa.Integer(), nullable=False),
        sa.Column("data_hash", sa.String(length=64), nullable=True),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("total_steps", sa.Integer(), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("loss", sa.Float(), nullable=True),
        sa.Column("validations", sa.JSON(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        _ts("created_at", nullable=False),
        _ts("started_at"),
        _ts("completed_at"),
        sa.CheckConstraint("status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')",
                           name=op.f("ck_training_runs_status")),
        sa.CheckConstraint("progress >= 0 AND progress <= 1", name=op.f("ck_training_runs_progress_range")),
        sa.CheckConstraint("step >= 0", name=op.f("ck_training_runs_step_not_negative")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_training_runs_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_training_runs")),
    )
    op.create_index("ix_training_runs_status_created_at", "training_runs", ["status", "created_at"])
    op.create_index("ix_training_runs_user_id_created_at", "training_runs", ["user_id", "created_at"])
    op.create_table(
        "user_loras",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("storage_key", sa.String(length=1024), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=True),
        sa.Column("alpha", sa.Float(), nullable=True),
        sa.Column("run_id", sa.String(length=32), nullable=True),
        _ts("created_at", nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_user_loras_user_id_users")),
        sa.ForeignKeyConstraint(["run_id"], ["training_runs.id"], name=op.f("fk_user_loras_run_id_training_runs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_user_loras")),
    )
    op.create_index("ix_user_loras_user_id_created_at", "user_loras", ["user_id", "created_at"])


def downgrade() -> None:
    op.drop_index("ix_user_loras_user_id_created_at", table_name="user_loras")
    op.drop_table("user_loras")
    op.drop_index("ix_training_runs_user_id_created_at", table_name="training_runs")
    op.drop_index("ix_training_runs_status_created_at", table_name="training_runs")
    op.drop_table("training_runs")
