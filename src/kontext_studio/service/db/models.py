"""The service's tables as typed SQLAlchemy 2 declarative models.

Every table here is created by the numbered Alembic migrations in ``service/migrations``; a test compares
this metadata with the migrated schema on SQLite and PostgreSQL, so a change here needs a migration.

Credits are double-entry (see ``service/accounts``): ``ledger_entries`` is the journal, ``balances`` the
per-user running totals (kept non-negative by CHECK constraints), and ``holds`` / ``settlements`` carry
one row per job each (primary key ``job_id``), which is what makes "at most one hold and at most one
settlement per job" a database guarantee rather than an application convention.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, Boolean, CheckConstraint, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from kontext_studio.service.db.base import Base, UTCDateTime, new_id, utcnow

IDEMPOTENCY_TTL = timedelta(hours=24)


class JobStatus(StrEnum):
    """Prediction statuses, Replicate's plus ``aborted`` (deadline passed before it started; not charged)."""

    STARTING = "starting"
    PROCESSING = "processing"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"
    ABORTED = "aborted"


TERMINAL_JOB_STATUSES: frozenset[str] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED, JobStatus.ABORTED}
)


class LedgerKind(StrEnum):
    """What a pair of ledger entries records."""

    GRANT = "grant"  # grants -> user available
    HOLD = "hold"  # user available -> user held
    CAPTURE = "capture"  # user held -> revenue
    RELEASE = "release"  # user held -> user available


SETTLEMENT_KINDS: tuple[str, ...] = (LedgerKind.CAPTURE, LedgerKind.RELEASE)
WEBHOOK_EVENTS: tuple[str, ...] = ("start", "output", "logs", "completed")


def _one_of(column: str, values: tuple[str, ...] | frozenset[str] | type[StrEnum]) -> str:
    return f"{column} IN ({', '.join(repr(str(v)) for v in values)})"


def new_webhook_id() -> str:
    """A Standard Webhooks message id (``msg_`` + 26 base32 characters), fixed for all retries of a delivery."""
    return "msg_" + new_id()


def _idempotency_expiry() -> datetime:
    return utcnow() + IDEMPOTENCY_TTL


class User(Base):
    """A person or service account that owns API keys, jobs, files and credits."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class ApiKey(Base):
    """An API key: the public ``prefix`` (shown in lists, used for lookup) and the SHA-256 of the token.

    The plaintext token is shown once at creation and never stored.
    """

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)
    hash: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


# The tier of the jobs rows that carry LoRA training runs' credit holds (the ledger keys holds by job): created
# finished, so no worker claims, reaps or requeues them, and kept out of prediction lists and lookups.
TRAINING_TIER = "training"


class Job(Base):
    """One prediction. ``attempt`` is the fencing token: a worker may only complete the attempt it claimed."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(_one_of("status", JobStatus), name="status"),
        CheckConstraint("progress >= 0 AND progress <= 1", name="progress_range"),
        CheckConstraint("cost >= 0", name="cost_not_negative"),
        CheckConstraint("attempt >= 0", name="attempt_not_negative"),
        Index("ix_jobs_status_created_at", "status", "created_at"),
        Index("ix_jobs_user_id_created_at", "user_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    model: Mapped[str] = mapped_column(String(128))
    tier: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.STARTING)
    input: Mapped[dict[str, Any]] = mapped_column(JSON)
    output: Mapped[Any | None] = mapped_column(JSON(none_as_null=True))
    error: Mapped[str | None] = mapped_column(Text)
    error_code: Mapped[str | None] = mapped_column(String(64))  # the error's stable code
    logs: Mapped[str] = mapped_column(Text, default="")
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    cost: Mapped[int] = mapped_column(Integer, default=0)
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    worker_id: Mapped[str | None] = mapped_column(String(128))
    deadline_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    webhook: Mapped[str | None] = mapped_column(String(2048))
    webhook_events_filter: Mapped[list[str] | None] = mapped_column(JSON(none_as_null=True))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_fingerprint: Mapped[str | None] = mapped_column(String(64))
    bfl_task_id: Mapped[str | None] = mapped_column(String(128))
    # Hosted tiers: the upstream task as soon as it is known, so a retried job resumes it (migration 0002).
    bfl_polling_url: Mapped[str | None] = mapped_column(String(2048))
    bfl_tasks: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    completed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)


class LedgerEntry(Base):
    """One leg of a credits movement. Each movement writes two legs whose amounts sum to zero.

    Accounts: ``user:<id>:available``, ``user:<id>:held``, ``revenue`` and ``grants`` (the source of granted
    credits, so it runs negative).
    """

    __tablename__ = "ledger_entries"
    __table_args__ = (CheckConstraint(_one_of("kind", LedgerKind), name="kind"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"), index=True)
    account: Mapped[str] = mapped_column(String(64), index=True)
    amount: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Balance(Base):
    """A user's running totals, updated in the same transaction as the ledger entries.

    The CHECK constraints are the last line of defence against overdraw: an update that would take either
    column below zero fails in the database whatever the application did.
    """

    __tablename__ = "balances"
    __table_args__ = (
        CheckConstraint("available >= 0", name="available_not_negative"),
        CheckConstraint("held >= 0", name="held_not_negative"),
    )

    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), primary_key=True)
    available: Mapped[int] = mapped_column(Integer, default=0)
    held: Mapped[int] = mapped_column(Integer, default=0)


class Hold(Base):
    """The credit hold of a job; the primary key makes a second hold for the same job impossible."""

    __tablename__ = "holds"
    __table_args__ = (CheckConstraint("amount >= 0", name="amount_not_negative"),)

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    amount: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class Settlement(Base):
    """How a job's hold ended (capture or release); the primary key allows exactly one per job."""

    __tablename__ = "settlements"
    __table_args__ = (
        CheckConstraint(_one_of("kind", SETTLEMENT_KINDS), name="kind"),
        CheckConstraint("amount >= 0", name="amount_not_negative"),
    )

    job_id: Mapped[str] = mapped_column(ForeignKey("holds.job_id"), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    amount: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class IdempotencyKey(Base):
    """A client's ``Idempotency-Key``: the request fingerprint it was first used with and the job it made.

    ``job_id`` is empty while the first request is still being created (a concurrent retry gets 409).
    """

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("user_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    key: Mapped[str] = mapped_column(String(255))
    fingerprint: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str | None] = mapped_column(ForeignKey("jobs.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, default=_idempotency_expiry, index=True)


class File(Base):
    """An uploaded or produced file, stored by content hash under ``path``."""

    __tablename__ = "files"
    __table_args__ = (
        CheckConstraint("size >= 0", name="size_not_negative"),
        Index("ix_files_user_id_sha256", "user_id", "sha256"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    sha256: Mapped[str] = mapped_column(String(64))
    path: Mapped[str] = mapped_column(String(1024))
    content_type: Mapped[str] = mapped_column(String(100))
    size: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


class WebhookDelivery(Base):
    """One webhook message and its delivery state; ``webhook_id`` stays the same across retries."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        CheckConstraint(_one_of("event", WEBHOOK_EVENTS), name="event"),
        CheckConstraint("attempts >= 0", name="attempts_not_negative"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id"), index=True)
    event: Mapped[str] = mapped_column(String(16))
    webhook_id: Mapped[str] = mapped_column(String(64), unique=True, default=new_webhook_id)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    delivered_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_status: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)


# Feature tables live in their own modules; importing them here registers them on ``Base.metadata`` so the
# schema test and every session see one complete schema.
from kontext_studio.service.db import (  # noqa: E402, F401
    models_admin,
    models_library,
    models_sessions,
    models_studio,
    models_training,
)
