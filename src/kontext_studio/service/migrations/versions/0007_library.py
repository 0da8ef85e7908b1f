"""Library: favourites and removals per prediction, and revocable share links.

Revision ID: 0007
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _ts(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "library_marks",
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("favourite", sa.Boolean(), nullable=False),
        _ts("removed_at"),
        _ts("updated_at", nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_library_marks_job_id_jobs")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_library_marks_user_id_users")),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_library_marks")),
    )
    op.create_index(op.f("ix_library_marks_user_id"), "library_marks", ["user_id"])
    op.create_table(
        "share_links",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("show_prompt", sa.Boolean(), nullable=False),
        sa.Column("show_model", sa.Boolean(), nullable=False),
        _ts("created_at", nullable=False),
        _ts("revoked_at"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name=op.f("fk_share_links_job_id_jobs")),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_share_links_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_share_links")),
    )
    op.create_index(op.f("ix_share_links_user_id"), "share_links", ["user_id"])
    op.create_index("ix_share_links_job_id", "share_links", ["job_id"])


def downgrade() -> None:
    op.drop_index("ix_share_links_job_id", table_name="share_links")
    op.drop_index(op.f("ix_share_links_user_id"), table_name="share_links")
    op.drop_table("share_links")
    op.drop_index(op.f("ix_library_marks_user_id"), table_name="library_marks")
    op.drop_table("library_marks")
