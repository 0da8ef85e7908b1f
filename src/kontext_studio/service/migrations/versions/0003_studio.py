"""Web studio tables: edit sessions with their turns, and series.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "edit_sessions",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("origin_key", sa.String(length=1024), nullable=False),
        _ts("created_at", nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_edit_sessions_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_edit_sessions")),
    )
    op.create_index(op.f("ix_edit_sessions_user_id_created_at"), "edit_sessions", ["user_id", "created_at"])
    op.create_table(
        "edit_turns",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("session_id", sa.String(length=32), nullable=False),
        sa.Column("parent_job_id", sa.String(length=32), nullable=True),
        sa.Column("turn", sa.Integer(), nullable=False),
        sa.Column("drift", sa.Float(), nullable=True),
        sa.Column("drift_method", sa.String(length=64), nullable=True),
        _ts("created_at", nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_edit_turns_job_id_jobs")),
        sa.ForeignKeyConstraint(["parent_job_id"], ["jobs.id"], name=op.f("fk_edit_turns_parent_job_id_jobs")),
        sa.ForeignKeyConstraint(["session_id"], ["edit_sessions.id"],
                                name=op.f("fk_edit_turns_session_id_edit_sessions")),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_edit_turns")),
    )
    op.create_index(op.f("ix_edit_turns_session_id"), "edit_turns", ["session_id"])
    op.create_table(
        "series",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("job_ids", sa.JSON(), nullable=False),
        _ts("created_at", nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_series_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_series")),
    )
    op.create_index(op.f("ix_series_user_id_created_at"), "series", ["user_id", "created_at"])


def downgrade() -> None:
    for table in ("series", "edit_turns", "edit_sessions"):
        op.drop_table(table)
