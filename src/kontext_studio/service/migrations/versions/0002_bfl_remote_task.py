"""Hosted-tier (BFL API) task tracking on jobs.

A hosted edit is paid for when BFL accepts it, so a job remembers the upstream task as soon as it is known:
``bfl_tasks`` maps each exact request (a hash of what is sent) to its state (``sending`` before the POST,
``sent`` with the task id and polling URL after it), and ``bfl_polling_url`` is the latest task's URL
(``bfl_task_id``, from 0001, its id). A worker that restarts resumes polling instead of sending again.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("bfl_polling_url", sa.String(length=2048), nullable=True))
        batch.add_column(sa.Column("bfl_tasks", sa.JSON(none_as_null=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("bfl_tasks")
        batch.drop_column("bfl_polling_url")
