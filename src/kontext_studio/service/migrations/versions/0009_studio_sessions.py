"""Studio sessions are kept server-side, so signing out or revoking the API key a session was opened with
ends it at once (a signed cookie alone would stay valid until it expires).

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "studio_sessions",
        sa.Column("id", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("api_key_id", sa.Integer(), nullable=True),
        _ts("created_at", nullable=False),
        _ts("expires_at", nullable=False),
        _ts("revoked_at"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_studio_sessions_user_id_users")),
        sa.ForeignKeyConstraint(["api_key_id"], ["api_keys.id"], name=op.f("fk_studio_sessions_api_key_id_api_keys")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_studio_sessions")),
    )
    op.create_index(op.f("ix_studio_sessions_user_id"), "studio_sessions", ["user_id"])
    op.create_index(op.f("ix_studio_sessions_api_key_id"), "studio_sessions", ["api_key_id"])


def downgrade() -> None:
    op.drop_table("studio_sessions")
