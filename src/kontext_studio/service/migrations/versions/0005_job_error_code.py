"""A failed job keeps the stable code of its error beside the message.

Clients branch on the code, not the words: the BFL-compatible shim answers ``Request Moderated`` or
``Content Moderated`` for a moderated edit (BFL's own statuses) instead of a generic ``Error``, and the
prediction envelope carries ``error_code``.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("error_code", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("error_code")
